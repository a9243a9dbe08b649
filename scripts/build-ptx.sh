#!/usr/bin/env bash
# Compiles kernels/*.cu to PTX with NVRTC 12.2.140 (PyPI wheels, no GPU and no CUDA install
# needed: docs/ARCHITECTURE.md#ptx-without-a-gpu) and validates every PTX file with ptxas for its
# target.
#
#   scripts/build-ptx.sh           # (re)write kernels/ptx/<op>.sm87.ptx and <op>.sm72.ptx
#   scripts/build-ptx.sh --check   # CI: regenerate into a temp dir; fail if the checked-in PTX
#                                  # differs or ptxas rejects it
#
# Every kernel file is built for compute_87 (Orin; also JIT-compiles on sm_90) and compute_72
# (Xavier); in matmul.cu the bf16 tensor-core kernels exist only in the sm87 PTX (#if
# __CUDA_ARCH__ >= 800). Prints registers, stack and spills per kernel (ptxas -v).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

venv=.venv-cuda
version=12.2.140
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
NV=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')/nvidia
if [ ! -f "$NV/cuda_nvrtc/lib/libnvrtc.so.12" ] || [ ! -x "$NV/cuda_nvcc/bin/ptxas" ] \
  || [ ! -d "$NV/cuda_runtime/include" ]; then
  echo "installing NVRTC/ptxas $version from PyPI into $venv"
  "$venv/bin/pip" install -q --no-deps "nvidia-cuda-nvrtc-cu12==$version" \
    "nvidia-cuda-nvcc-cu12==$version" "nvidia-cuda-runtime-cu12==$version"
fi
nvrtc_lib=$NV/cuda_nvrtc/lib/libnvrtc.so.12
ptxas=$NV/cuda_nvcc/bin/ptxas
ptxas_version=$("$ptxas" --version)
if [[ "$ptxas_version" != *"V$version"* ]]; then
  echo "error: $ptxas is not version $version" >&2
  exit 1
fi

if [ "$check" = 1 ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
else
  out=kernels/ptx
  mkdir -p "$out"
fi

status=0
printf '%-28s %-5s %5s %7s %7s %7s\n' kernel arch regs stack spill_st spill_ld
for src in kernels/*.cu; do
  op=$(basename "$src" .cu)
  for sm in 87 72; do
    ptx="$out/$op.sm$sm.ptx"
    "$venv/bin/python" scripts/nvrtc_compile.py "$nvrtc_lib" "$src" "compute_$sm" "$ptx" \
      -I kernels -I "$NV/cuda_runtime/include"
    if ! info=$("$ptxas" "-arch=sm_$sm" -v "$ptx" -o /dev/null 2>&1); then
      echo "$info" >&2
      echo "error: ptxas -arch=sm_$sm rejected $ptx" >&2
      status=1
      continue
    fi
    # ptxas -v: "Compiling entry function 'et_x' for 'sm_87'", then "N bytes stack frame, N
    # bytes spill stores, N bytes spill loads" and "Used N registers, ...".
    echo "$info" | awk -v sm="sm_$sm" '
      /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); name = substr($0, RSTART + 1, RLENGTH - 2) }
      /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
      /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
        printf "%-28s %-5s %5s %7s %7s %7s\n", name, sm, regs, stack, st, ld }'
    if [ "$check" = 1 ]; then
      if ! cmp -s "$ptx" "kernels/ptx/$op.sm$sm.ptx"; then
        echo "error: kernels/ptx/$op.sm$sm.ptx is stale or missing (run scripts/build-ptx.sh)" >&2
        status=1
      fi
    fi
  done
done
if [ "$check" = 1 ]; then
  for f in kernels/ptx/*.ptx; do
    [ -e "$f" ] || continue
    if [ ! -e "$out/$(basename "$f")" ]; then
      echo "error: $f has no source in kernels/ (delete it)" >&2
      status=1
    fi
  done
fi
if [ "$status" = 0 ]; then
  if [ "$check" = 1 ]; then echo "PTX is current and ptxas accepts it"; else echo "wrote $out"; fi
fi
exit "$status"
