#!/usr/bin/env bash
# Runs one libFuzzer target built by scripts/fuzz-build.sh and prints one line of results:
#   scripts/fuzz-run.sh NAME BINARY WORK SEEDS SECONDS [LIBFUZZER_FLAGS...]
# FUZZ_RUNS=N runs N executions instead of SECONDS. The corpus grows in WORK/corpus, crashes go
# to WORK/, the full output to WORK/NAME.log. Exits 1 when the target failed (a crash, or a
# limit such as -rss_limit_mb given in the flags). Used by fuzz-virtio.sh and fuzz-devices.sh.
set -euo pipefail
name="$1" binary="$2" work="$3" seeds="$4" seconds="$5"
shift 5
corpus="$work/corpus"
mkdir -p "$corpus"
log="$work/$name.log"
if [ -n "${FUZZ_RUNS:-}" ]; then
    limit=(-runs="$FUZZ_RUNS"); echo "$name: running $FUZZ_RUNS executions"
else
    limit=(-max_total_time="$seconds"); echo "$name: running for ${seconds}s"
fi
if "$binary" "${limit[@]}" -artifact_prefix="$work/" -timeout=10 -print_final_stats=1 "$@" "$corpus" "$seeds" >"$log" 2>&1; then
    result="no crash"
    status=0
else
    result="FAILED (see $log)"
    status=1
fi
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
echo "$name: $runs executions, $coverage, peak RSS $rss MB, $result"
exit $status
