#!/usr/bin/env bash
# Federated fine-tuning on this machine, loopback only: a Flower SuperLink and three
# SuperNodes (one per site, each with its own partition of the IoT assistant set) on
# 127.0.0.1, without TLS (--insecure), then `flwr run` of this app for 3 rounds. Prints every
# round's held-out loss per site, writes DIR/fleet.json and the global adapter of every round
# (DIR/round-NN/adapter-peft/, adapter.gguf), and fails unless the last global adapter beats
# every site's round-0 held-out loss. Everything it starts is stopped by process id on exit.
#
#   examples/flower/run-local.sh [--out DIR] [--model GGUF] [--aggregation fedavg|svd]
#                                [--rounds N] [--local-steps N]
#
# Needs a Python with edgetune (pip install ./python) and flwr; $PYTHON, else .venv-py/bin/python
# of the checkout, else python3. --model defaults to the seeded `tiny` test model.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=fleet-run
model=""
agg=fedavg
rounds=3
steps=8
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --aggregation) agg=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --local-steps) steps=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "run-local.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$root/.venv-py/bin/python" ]; then py=$root/.venv-py/bin/python; else py=python3; fi
fi
py=$(command -v "$py")
bin=$(dirname "$py")
for tool in flwr flower-superlink flower-supernode; do
    [ -x "$bin/$tool" ] || { echo "run-local.sh: $bin/$tool not found (pip install flwr)" >&2; exit 1; }
done
# The SuperNodes start `flwr-clientapp` (and the SuperLink `flwr-serverapp`) from PATH.
export PATH="$bin:$PATH"

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/flwr-home" "$out/work" "$out"/round-* "$out/fleet.json"
mkdir -p "$out/logs"
# The Flower CLI's and the daemons' state stays in the run directory, not in ~/.flwr.
export FLWR_HOME="$out/flwr-home"

pids=()
# The process ids below `$1` (the daemons start flower-superexec and the apps' processes).
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
cleanup() {
    local pid all=() i
    for pid in "${pids[@]}"; do
        all+=("$pid" $(descendants "$pid"))
    done
    for pid in "${all[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    # The grandchildren are not ours to wait for: give them 10 s, then SIGKILL.
    for i in $(seq 100); do
        alive=0
        for pid in "${all[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    for pid in "${all[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_start=$(date +%s)
if [ -z "$model" ]; then
    model=$out/tiny.gguf
    "$py" -c "import edgetune, sys; edgetune.testmodel(sys.argv[1], 'tiny', 'q4_0', 0)" "$model"
fi
model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
sites=(kx40 m7 h9)
"$py" "$here/prepare_data.py" --out "$out/data" --sites "$(IFS=,; echo "${sites[*]}")"

# Four free loopback ports: the SuperLink's, and each SuperNode's runtime API.
read -r link p1 p2 p3 < <("$py" - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
)
node_ports=("$p1" "$p2" "$p3")

mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fleet"

[superlink.fleet]
address = "127.0.0.1:$link"
insecure = true
TOML

"$bin/flower-superlink" --insecure --host 127.0.0.1 --port "$link" \
    --disable-runtime-dependency-installation >"$out/logs/superlink.log" 2>&1 &
pids+=($!)
"$py" - "$link" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(600):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("run-local.sh: the SuperLink did not open its port in 60 s")
PY

for i in "${!sites[@]}"; do
    s=${sites[$i]}
    "$bin/flower-supernode" --insecure --superlink "127.0.0.1:$link" \
        --host 127.0.0.1 --port "${node_ports[$i]}" \
        --node-config "site=\"$s\" data-dir=\"$out/data/$s\" work-dir=\"$out/work/$s\"" \
        >"$out/logs/supernode-$s.log" 2>&1 &
    pids+=($!)
done

timeout 900 "$bin/flwr" run "$here" fleet --stream --run-config \
    "model=\"$model\" out-dir=\"$out\" aggregation=\"$agg\" num-server-rounds=$rounds local-steps=$steps min-nodes=${#sites[@]}" \
    >"$out/logs/flwr-run.log" 2>&1 || {
    echo "run-local.sh: flwr run failed; the end of its log ($out/logs/flwr-run.log):" >&2
    tail -40 "$out/logs/flwr-run.log" >&2
    exit 1
}
grep '\[edgetune-fleet\]' "$out/logs/flwr-run.log" || true

"$py" - "$out/fleet.json" "$rounds" "$(( $(date +%s) - t_start ))" <<'PY'
import json, sys
path, rounds, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
doc = json.load(open(path))
rs = doc["rounds"]
sites = sorted(rs[0]["heldout_loss"])
print(f"held-out loss per site ({doc['aggregation']}; {path}; {secs} s in all):")
print("round  " + "  ".join(f"{s:>8}" for s in sites))
for r in rs:
    print(f"{r['round']:>5}  " + "  ".join(f"{r['heldout_loss'][s]:8.4f}" for s in sites))
if len(rs) != rounds + 1:
    sys.exit(f"run-local.sh: {len(rs)} rounds in fleet.json, expected {rounds + 1}")
first, last = rs[0]["heldout_loss"], rs[-1]["heldout_loss"]
worse = [s for s in sites if not last[s] < first[s]]
if worse:
    sys.exit(f"run-local.sh: the global adapter does not beat round 0 at {worse}")
print(f"ok: the round-{rs[-1]['round']} global adapter beats every site's round-0 held-out loss")
PY
