#!/usr/bin/env bash
# HTTP load benchmark: `host serve` (full gate: Cedar policy, budget
# reservation and settlement, durable SQLite audit: each answer waits for an
# fsync of the WAL that began after its records were committed)
# invoking text-tools' `hello`, against `wasmtime serve` running an
# equivalent hello `wasi:http` component, with the same load generator (wrk)
# at concurrency 1, 16 and 64. Then: time from process start to the first
# successful invoke with 50 registered tools.
#
# Needs: wrk (apt-get install wrk), wasmtime 48.x on PATH
# (cargo install wasmtime-cli --version 48.0.8 --locked), curl.
# Usage: benches/serve.sh [seconds per run, default 10]
#
# `benches/serve.sh observe [seconds per run, default 10] [rounds, default 5]`
# measures what metrics and tracing cost instead: `host serve` at c=16
# without them, and with `--metrics-listen` (scraped every 5 s) and
# `--otlp-endpoint` (every invocation traced and exported to a local OTLP
# sink), interleaved run by run (the order alternates each round), on the
# same data dir; medians and their ratio. Needs wrk, curl and python3.
#
# `benches/serve.sh --mcp [seconds per run]`: MCP's tools/call of the same
# `hello` over /mcp (2026-07-28, stateless, JSON answers) against POST /v1
# invoke, same server, same generator (wrk, c=16), alternating (the order
# flips each round), `[rounds]` runs each (default 3); medians of
# throughput and of the server's CPU time per request, and their ratios
# (target >= 0.9). Usage: `benches/serve.sh --mcp [seconds] [rounds]`.
# Needs wrk, curl and python3.
#
# `benches/serve.sh --postgres [seconds]` instead compares one `host serve`
# on PostgreSQL with one on SQLite (same machine, same generator, full gate,
# durable commits: PostgreSQL's `synchronous_commit = on`) at c=1/16/64;
# then three replicas on one database, all on one tenant vs one tenant
# each (the cost of the hot rows: a tenant's chain head and day-budget
# line); and the database work per invocation (transactions, WAL bytes).
# Database: $TOOLHOST_BENCH_DATABASE_URL (a server URL; the script makes and
# drops a database `toolhost_bench` on it), else scripts/pg-test-server.sh;
# reached with `sslmode=$TOOLHOST_BENCH_PG_SSLMODE` (default `disable`: the
# database is on this machine; `require` measures TLS).
# Needs wrk and psql.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--postgres" ]; then
  shift
  exec benches/serve-postgres.sh "$@"
fi
if [ "${1:-}" = observe ]; then
  shift
  exec "$(dirname "$0")/serve-observe.sh" "$@"
fi
mode=http
if [ "${1:-}" = "--mcp" ]; then mode=mcp; shift; fi
secs=${1:-10}
rounds=${2:-3}
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
if [ "$mode" = mcp ]; then
  cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
  # BENCH_PROFILE=debug: a quick look with the debug build (not for figures).
  if [ "${BENCH_PROFILE:-release}" = debug ]; then
    cargo build --quiet --bin host; host=target/debug/host
  else
    cargo build --quiet --release --bin host; host=target/release/host
  fi
  work=target/bench-mcp
  rm -rf "$work"; mkdir -p "$work"
  data="$work/data"
  printf 'workflow: "*"\nbudget:\n  max_tool_calls: 1000000000\n  per_tenant:\n    day: {max_tool_calls: 1000000000}\npolicy:\n  allow_tools: [hello]\n' >"$work/policy.yaml"
  $host register guest-examples/target/wasm32-wasip2/release/text_tools.wasm --name text-tools --tenant bench --data-dir "$data" >/dev/null
  key=$($host keys create --tenant bench --role invoke --data-dir "$data")
  cat >"$work/v1.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"args": {"name": "world"}, "task_id": "bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  call='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"text-tools__hello","arguments":{"name":"world"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"1"},"io.modelcontextprotocol/clientCapabilities":{},"io.toolhost/task_id":"bench"}}}'
  cat >"$work/mcp.lua" <<LUA
wrk.method = "POST"
wrk.body = '$call'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "text-tools__hello"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  $host serve --listen 127.0.0.1:0 --data-dir "$data" --policy "$work/policy.yaml" \
    --max-concurrency 64 2>"$work/serve.log" >"$work/serve.url" &
  spid=$!
  trap 'kill $spid 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do [ -s "$work/serve.url" ] && break; sleep 0.1; done
  base=$(head -1 "$work/serve.url")
  v1="$base/v1/tools/text-tools/hello/invoke"
  mcp="$base/mcp"
  curl -sf -H "Authorization: Bearer $key" -d '{"args": {"name": "world"}}' "$v1"; echo
  curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \
    -H 'Mcp-Method: tools/call' -H 'Mcp-Name: text-tools__hello' -d "$call" "$mcp" |
    grep -q '"isError":false' || { echo "the MCP call did not succeed" >&2; exit 1; }
  v1_rps=(); mcp_rps=(); v1_cpu=(); mcp_cpu=()
  hz=$(getconf CLK_TCK)
  for run in $(seq 1 "$rounds"); do
    order="v1 mcp"; [ $((run % 2)) = 0 ] && order="mcp v1"
    for which in $order; do
      url=$v1; [ $which = mcp ] && url=$mcp
      # The server's own CPU time around the run: CPU per request is each
      # path's cost, whatever else (wrk, other tenants of the VM) takes the
      # cores.
      t0=$(awk '{print $14 + $15}' /proc/$spid/stat)
      out=$(wrk -t2 -c16 -d${secs}s --latency -s "$work/$which.lua" "$url")
      t1=$(awk '{print $14 + $15}' /proc/$spid/stat)
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      cpu=$(python3 -c "print(round(($t1 - $t0) / $hz * 1e6 / max($n, 1), 1))")
      echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors|50%|99%" | sed "s/^/  run $run $which /"
      echo "  run $run $which server CPU per request: $cpu µs"
      r=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      if [ $which = v1 ]; then v1_rps+=("$r"); v1_cpu+=("$cpu"); else mcp_rps+=("$r"); mcp_cpu+=("$cpu"); fi
    done
  done
  python3 - "${v1_rps[*]}" "${mcp_rps[*]}" "${v1_cpu[*]}" "${mcp_cpu[*]}" <<'PY'
import statistics, sys
v1, mcp, v1c, mcpc = ([float(x) for x in a.split()] for a in sys.argv[1:5])
a, b = statistics.median(v1), statistics.median(mcp)
pairs = " / ".join(f"{m/v:.2f}" for v, m in zip(v1, mcp))
print(f"==> c=16, median of {len(v1)}: POST /v1 invoke {a:.0f} req/s, /mcp tools/call {b:.0f} req/s, ratio {b/a:.2f} (target >= 0.9); run by run {pairs}")
ca, cb = statistics.median(v1c), statistics.median(mcpc)
print(f"==> server CPU per request (median): /v1 {ca:.0f} µs, /mcp {cb:.0f} µs; /v1 over /mcp {ca/cb:.2f}")
PY
  exit 0
fi
command -v wasmtime >/dev/null || { echo "wasmtime not found (cargo install wasmtime-cli --version 48.0.8 --locked)" >&2; exit 1; }
wasmtime --version

cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
cargo build --quiet --release --bin host
host=target/release/host
tools=guest-examples/target/wasm32-wasip2/release
work=target/bench-serve
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

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"args": {"name": "world"}, "task_id": "bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA

rps() { awk '/Requests\/sec/ {print $2}'; }
load() { # url, concurrency, [script]
  local threads=$(( $2 < 2 ? 1 : 2 ))
  if [ -n "${3:-}" ]; then
    wrk -t$threads -c$2 -d${secs}s --latency -s "$3" "$1"
  else
    wrk -t$threads -c$2 -d${secs}s --latency "$1"
  fi
}

echo "==> host serve (governed, durable audit)"
$host serve --listen 127.0.0.1:0 --data-dir "$data" --policy "$work/policy.yaml" \
  --max-concurrency 64 2>"$work/serve.log" >"$work/serve.url" &
spid=$!
trap 'kill $spid 2>/dev/null || true; kill ${wpid:-} 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$work/serve.url" ] && break; sleep 0.1; done
url="$(head -1 "$work/serve.url")/v1/tools/text-tools/hello/invoke"
curl -sf -H "Authorization: Bearer $key" -d '{"args": {"name": "world"}}' "$url"; echo
declare -A ours peer
for c in 1 16 64; do
  out=$(load "$url" $c "$work/post.lua")
  echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors|50%|99%" | sed "s/^/  c=$c /"
  ours[$c]=$(echo "$out" | rps)
done
kill -TERM $spid; wait $spid || true

echo "==> wasmtime serve (hello wasi:http component)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
wasmtime serve -S cli --addr "127.0.0.1:$port" $tools/hello_http.wasm 2>"$work/wasmtime.log" &
wpid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/"; echo
for c in 1 16 64; do
  out=$(load "http://127.0.0.1:$port/" $c)
  echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors|50%|99%" | sed "s/^/  c=$c /"
  peer[$c]=$(echo "$out" | rps)
done
kill $wpid; wait $wpid 2>/dev/null || true

echo "==> summary (requests/s; ratio = host serve / wasmtime serve; target >= 0.8)"
for c in 1 16 64; do
  python3 -c "o=${ours[$c]}; p=${peer[$c]}; print(f'  c={$c:<3} host serve {o:>9.0f}   wasmtime serve {p:>9.0f}   ratio {o/p:.2f}')"
done

echo "==> start-up: process start to the first successful invoke, 50 registered tools"
sdata="$work/startup"
for i in $(seq 1 50); do
  $host register $tools/text_tools.wasm --name "tool-$i" --tenant bench --data-dir "$sdata" >/dev/null
done
printf 'workflow: "*"\npolicy:\n  allow_tools: [hello]\n' > "$work/open.yaml"
$host policy set "$work/open.yaml" --data-dir "$sdata" 2>/dev/null
skey=$($host keys create --tenant bench --role invoke --data-dir "$sdata")
python3 - "$host" "$sdata" "$skey" <<'PY'
import subprocess, sys, time, urllib.request, statistics
host, data, key = sys.argv[1:4]
times = []
for _ in range(7):
    t0 = time.perf_counter()
    p = subprocess.Popen([host, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = p.stdout.readline().strip()
    req = urllib.request.Request(url + "/v1/tools/tool-50/hello/invoke",
                                 data=b'{"args": {"name": "x"}}',
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status
    times.append((time.perf_counter() - t0) * 1000)
    p.terminate(); p.wait()
print("  runs (ms): " + ", ".join(f"{t:.0f}" for t in times))
print(f"  median {statistics.median(times):.0f} ms (target <= 200 ms)")
PY
