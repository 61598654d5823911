#!/usr/bin/env bash
# `make demo`: run the daemon on the bundled recording with a subscriber writing a WAV file.
#
# The listener starts first (the daemon waits up to output.wait_for_subscriber_s for it), then the
# daemon; both must exit 0. If either fails, or the whole run exceeds DEMO_TIMEOUT seconds, the other
# is stopped and the script exits non-zero (124 for the timeout).
#
# Environment (the Makefile passes these): VENV, DEMO_CONFIG, DEMO_OUT, ENDPOINT, DEMO_TIMEOUT.
# ENDPOINT other than the default is passed to the daemon as --set output.endpoints=[ENDPOINT].
set -euo pipefail

venv=${VENV:-.venv}
config=${DEMO_CONFIG:-config/demo.yaml}
out=${DEMO_OUT:-demo-out.wav}
default_endpoint=tcp://127.0.0.1:7700
endpoint=${ENDPOINT:-$default_endpoint}
timeout_s=${DEMO_TIMEOUT:-120}
voxd=$venv/bin/voxd

run_args=(run --config "$config")
[[ $endpoint == "$default_endpoint" ]] || run_args+=(--set "output.endpoints=[\"$endpoint\"]")

pids=()
stop() {  # stop the children still running (our own, by pid)
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.5
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -f "$out"
echo "demo: $voxd listen $endpoint --out $out" >&2
"$voxd" listen "$endpoint" --out "$out" &
listener=$!
echo "demo: $voxd ${run_args[*]}" >&2
"$voxd" "${run_args[@]}" &
daemon=$!
sleep "$timeout_s" &
watchdog=$!
pids=("$listener" "$daemon" "$watchdog")

name() { case $1 in "$listener") echo listener ;; "$daemon") echo daemon ;; *) echo watchdog ;; esac; }

# Wait until both daemon and listener have exited 0; fail on the first failure or on the watchdog.
remaining=2
while ((remaining > 0)); do
    status=0
    wait -n -p finished "${pids[@]}" || status=$?
    if [[ $finished == "$watchdog" ]]; then
        echo "demo: FAILED: still running after ${timeout_s}s (DEMO_TIMEOUT)" >&2
        exit 124
    fi
    if ((status != 0)); then
        echo "demo: FAILED: the $(name "$finished") exited with status $status" >&2
        exit "$status"
    fi
    remaining=$((remaining - 1))
    left=()
    for pid in "${pids[@]}"; do [[ $pid == "$finished" ]] || left+=("$pid"); done
    pids=("${left[@]}")
done

"$venv/bin/python" - "$out" <<'EOF'
import sys

import soundfile as sf

info = sf.info(sys.argv[1])
print(f"demo: wrote {sys.argv[1]}: {info.channels} ch, {info.samplerate} Hz, {info.duration:.2f} s, {info.subtype}")
EOF
