"""Renders chat templates the way Hugging Face transformers' apply_chat_template does, as the
reference for tests/tokenizer/chat_template_jinja2.rs.

transformers compiles a chat template in an ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks and the loopcontrols extension, adds the globals raise_exception and strftime_now,
replaces the tojson filter with json.dumps (ensure_ascii=False, no HTML escaping), and renders
with messages, tools=None, documents=None, add_generation_prompt and the special tokens.

Usage: render_template.py JOBS.json OUT.json
JOBS.json is a list of {"template", "bos_token", "eos_token", "messages", "add_generation_prompt"};
OUT.json gets one entry per job: {"text": rendered} or {"error": message}.
"""

import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def strftime_now(format):
    return datetime.now().strftime(format)


def compile_template(source):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def main():
    jobs_path, out_path = sys.argv[1], sys.argv[2]
    with open(jobs_path, encoding="utf-8") as f:
        jobs = json.load(f)
    compiled = {}
    results = []
    for job in jobs:
        source = job["template"]
        try:
            if source not in compiled:
                compiled[source] = compile_template(source)
            text = compiled[source].render(
                messages=job["messages"],
                tools=None,
                documents=None,
                add_generation_prompt=job["add_generation_prompt"],
                bos_token=job["bos_token"],
                eos_token=job["eos_token"],
            )
            results.append({"text": text})
        except Exception as e:  # the comparison wants every failure as data
            results.append({"error": f"{type(e).__name__}: {e}"})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
