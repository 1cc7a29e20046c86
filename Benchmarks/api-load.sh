#!/usr/bin/env bash
# hv serve under load (Documentation/Management.md, "Load"): a fixed rate of API requests for a
# fixed time against a daemon on loopback running two guests, with `hey` (Debian) as the client.
# The measured route, GET /v1/vms with a token (authentication, the supervisor actor, JSON for two
# VMs), is reported next to the baseline measured in the same run: GET /v1/health, the same
# server, listener and client with nothing behind it. Zero errors are required.
#
#   Benchmarks/api-load.sh [RATE] [SECONDS]      (default 1000 requests/s for 30 s; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-1000}
seconds=${2:-30}
workers=20
command -v hey >/dev/null || { echo "api-load: needs hey (apt-get install hey)" >&2; exit 1; }
swift build -c release --product hv > /dev/null 2>&1 || swift build -c release --product hv
hv=$(swift build -c release --show-bin-path 2> /dev/null)/hv
work=$(mktemp -d /tmp/hv-load.XXXXXX)
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$work"' EXIT
printf '\xe6\x80\xeb\xfc' > "$work/loop.bin"
token=load-token-0123456789abcdef
printf 'viewer load %s\n' "$token" > "$work/tokens"
chmod 600 "$work/tokens"
for name in web1 web2; do printf 'name: %s\nimage: loop.bin\nplatform: none\n' "$name" > "$work/$name.yaml"; done
"$hv" serve --state "$work/state" --tokens "$work/tokens" --listen 127.0.0.1:0 --vm "$work/web1.yaml" --vm "$work/web2.yaml" 2> "$work/serve.log" &
daemon=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/serve.log" | head -1)
[ -n "$base" ] || { echo "api-load: hv serve did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
sleep 2  # both guests running and polled once

# hey: -q is each worker's rate, so workers x q = the total.
run() {  # NAME PATH
    hey -z "${seconds}s" -c "$workers" -q $((rate / workers)) -H "Authorization: Bearer $token" "$base$2" > "$work/$1.txt"
    local total ok p50 p99 achieved
    total=$(awk '/responses/ && /\[/ {sum += $2} END {print sum + 0}' "$work/$1.txt")
    ok=$(awk '/\[200\]/ {print $2}' "$work/$1.txt")
    achieved=$(awk '/Requests\/sec:/ {print $2}' "$work/$1.txt")
    p50=$(awk '/ 50% in / {print $3 * 1000}' "$work/$1.txt")
    p99=$(awk '/ 99% in / {print $3 * 1000}' "$work/$1.txt")
    errors=$(awk '/Error distribution:/ {found = 1; next} found && NF {count++} END {print count + 0}' "$work/$1.txt")
    printf '%-14s %8s %10s %10s %9s %9s %7s\n' "$2" "$total" "${ok:-0}" "$achieved" "$p50" "$p99" "$errors"
    eval "${1}_p99=$p99 ${1}_ok=${ok:-0} ${1}_total=$total ${1}_errors=$errors"
}
echo "api-load: $rate requests/s for $seconds s per route, $workers connections, on $base ($(nproc) cores)"
printf '%-14s %8s %10s %10s %9s %9s %7s\n' route requests "200 OK" "req/s" "p50 ms" "p99 ms" errors
run baseline /v1/health
run measured /v1/vms
ratio=$(awk -v a="$measured_p99" -v b="$baseline_p99" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
echo "p99 ratio /v1/vms : /v1/health = $ratio"
status=0
for name in baseline measured; do
    eval "total=\$${name}_total ok=\$${name}_ok errors=\$${name}_errors"
    if [ "$total" != "$ok" ] || [ "$errors" != 0 ]; then echo "api-load: $name: $ok of $total answered 200, $errors error kinds" >&2; status=1; fi
done
exit $status
