#!/usr/bin/env bash
# The Python package and the Flower app: makes the venv .venv-py (gitignored) with maturin,
# pytest, numpy and flwr, builds and installs the package from python/ (`pip install ./python`:
# maturin, release, abi3), runs its pytest suite (python/tests/), then the Flower run on
# loopback (examples/flower/run-local.sh: a SuperLink and three SuperNodes on 127.0.0.1,
# 3 rounds on the tiny test model), which fails unless the global adapter beats every site's
# round-0 held-out loss.
#
#   scripts/test-python.sh [--no-flower] [--out DIR]   (DIR: the Flower run's, default
#                                                        target/fleet-run)
#
# Offline after the first run, as long as pip's cache holds the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
flower=1
out=$root/target/fleet-run
while [ $# -gt 0 ]; do
  case "$1" in
    --no-flower) flower=0; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "test-python.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
t0=$(date +%s)
venv=$root/.venv-py
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py=$venv/bin/python
"$py" -m pip install -q --disable-pip-version-check "maturin>=1.7,<2" "pytest>=7" "numpy>=1.24" "flwr>=1.42,<2"
# PyO3 builds against this interpreter; the wheel is abi3 (any CPython >= 3.10).
export PYO3_PYTHON=$py
# The build backend runs the venv's maturin (no build isolation: offline once installed).
export PATH="$venv/bin:$PATH"
"$py" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./python
echo "test-python.sh: built and installed the package in $(( $(date +%s) - t0 )) s"
# From outside the source tree, so that the installed package is what is imported.
(cd "$root/python/tests" && "$py" -m pytest -q -p no:cacheprovider .)
echo "test-python.sh: pytest done at $(( $(date +%s) - t0 )) s"
if [ "$flower" = 1 ]; then
  PYTHON=$py examples/flower/run-local.sh --out "$out"
fi
echo "test-python.sh: all done in $(( $(date +%s) - t0 )) s"
