#!/usr/bin/env bash
# The cost of metrics and tracing on the hot path (`benches/serve.sh observe`):
# `host serve` invoking text-tools' `hello` at c=16 (full gate, durable
# SQLite audit), without observability and with `--metrics-listen` (scraped
# every 5 s) plus `--otlp-endpoint` (every invocation traced and exported to
# a local OTLP/HTTP sink), interleaved: each round runs both, the order
# alternating; medians of requests/s and their ratio, and of the server's
# own CPU time per request (robust to what else takes the cores).
# Usage: benches/serve-observe.sh [seconds per run, default 10] [rounds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-5}
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }

cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
cargo build --quiet --release --bin host
host=target/release/host
tools=guest-examples/target/wasm32-wasip2/release
work=target/bench-observe
rm -rf "$work"; mkdir -p "$work"
data="$work/data"
cat > "$work/policy.yaml" <<'YAML'
workflow: "*"
budget:
  max_tool_calls: 1000000000
  per_tenant:
    day: {max_tool_calls: 1000000000}
policy:
  allow_tools: [hello]
YAML
$host register $tools/text_tools.wasm --name text-tools --tenant bench --data-dir "$data" >/dev/null
key=$($host keys create --tenant bench --role invoke --data-dir "$data")
$host policy set "$work/policy.yaml" --data-dir "$data" 2>/dev/null
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"args": {"name": "world"}, "task_id": "bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA

# The OTLP/HTTP sink: answers every export 200, counts requests and bytes.
# It stands in for a collector on another machine, so it runs at the lowest
# CPU priority (SINK_NICE, default 19): on a 2-core VM it would otherwise
# take its CPU from the server being measured. (Spans it cannot take in
# time are dropped by the exporter, never waited for: compare the bytes it
# received between runs.)
sinkport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nice -n "${SINK_NICE:-19}" python3 - "$sinkport" "$work/sink.count" <<'PY' &
import http.server, sys, threading
port, out = int(sys.argv[1]), sys.argv[2]
n = {"requests": 0, "bytes": 0}
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            n["requests"] += 1; n["bytes"] += len(body)
            open(out, "w").write(f'{n["requests"]} {n["bytes"]}\n')
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
sink=$!
spid=""
trap 'kill $sink 2>/dev/null || true; [ -n "$spid" ] && kill $spid 2>/dev/null || true' EXIT

run() { # mode: plain | observed
  local extra=() scraper=""
  if [ "$1" = observed ]; then
    extra=(--metrics-listen 127.0.0.1:0 --otlp-endpoint "http://127.0.0.1:$sinkport")
  fi
  $host serve --listen 127.0.0.1:0 --data-dir "$data" --max-concurrency 64 "${extra[@]}" \
    2>"$work/serve-$1.log" >"$work/serve.url" &
  spid=$!
  for _ in $(seq 1 100); do [ -s "$work/serve.url" ] && break; sleep 0.1; done
  local url; url="$(head -1 "$work/serve.url")/v1/tools/text-tools/hello/invoke"
  curl -sf -H "Authorization: Bearer $key" -d '{"args": {"name": "w"}}' "$url" >/dev/null
  if [ "$1" = observed ]; then
    local murl=""
    for _ in $(seq 1 50); do
      murl=$(grep -o 'metrics_url=[^ ]*' "$work/serve-$1.log" | head -1 | cut -d= -f2) && [ -n "$murl" ] && break
      sleep 0.1
    done
    ( while true; do curl -sf "$murl" >/dev/null || true; sleep 5; done ) &
    scraper=$!
  fi
  # The server's own CPU time (user + system, clock ticks) around the load:
  # CPU per request is the hot path's cost, whatever else takes the cores.
  local t0; t0=$(awk '{print $14 + $15}' /proc/$spid/stat)
  local out; out=$(wrk -t2 -c16 -d${secs}s --latency -s "$work/post.lua" "$url")
  local t1; t1=$(awk '{print $14 + $15}' /proc/$spid/stat)
  [ -n "$scraper" ] && kill $scraper 2>/dev/null
  kill -TERM $spid; wait $spid || true; spid=""
  : > "$work/serve.url"
  echo "$out" | grep -E "Non-2xx|Socket errors" | sed "s/^/    $1 /" >&2 || true
  local n; n=$(echo "$out" | awk '/requests in/ {print $1}')
  local hz; hz=$(getconf CLK_TCK)
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(python3 -c "print(round(($t1 - $t0) / $hz * 1e6 / max($n, 1), 1))")"
}

declare -a plain observed plain_cpu observed_cpu
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then order=(plain observed); else order=(observed plain); fi
  for m in "${order[@]}"; do
    read -r v cpu < <(run "$m")
    echo "  round $r $m: $v req/s, $cpu µs of server CPU per request"
    if [ "$m" = plain ]; then plain+=("$v"); plain_cpu+=("$cpu"); else observed+=("$v"); observed_cpu+=("$cpu"); fi
  done
done
echo "  OTLP sink received (requests bytes): $(cat "$work/sink.count" 2>/dev/null || echo '0 0'); OTEL_TRACES_SAMPLER=${OTEL_TRACES_SAMPLER:-default} ${OTEL_TRACES_SAMPLER_ARG:-}"
python3 - "${plain[*]}" "${observed[*]}" "${plain_cpu[*]}" "${observed_cpu[*]}" <<'PY'
import statistics, sys
p, o, pc, oc = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mp, mo = statistics.median(p), statistics.median(o)
cp, co = statistics.median(pc), statistics.median(oc)
print(f"==> c=16 median req/s: without {mp:.0f}, with metrics + OTLP {mo:.0f}; ratio {mo/mp:.3f} (cost {100*(1-mo/mp):.1f}%, target <= 5%)")
print(f"==> server CPU per request (median): without {cp:.0f} µs, with {co:.0f} µs; +{100*(co/cp-1):.1f}%")
PY
