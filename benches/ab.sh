#!/usr/bin/env bash
# A/B load comparison of two `host` binaries on this machine, in one run:
# the same governed invoke as benches/serve.sh (Cedar policy, budget
# reservation and settlement, durable SQLite audit), each binary on its own
# data dir, runs interleaved (A, B, A, B, ...) so drift and noise hit both.
# Prints each run's requests/s and, per concurrency, the medians and B/A.
#
# Needs: wrk, curl, python3; the guests built (benches/serve.sh builds them).
# Extra `host serve` flags per side: SERVE_ARGS_A, SERVE_ARGS_B.
# DB_A, DB_B: run that side on PostgreSQL (a database URL; each side needs
# a database of its own, emptied first: `scripts/pg-test-server.sh NAME`
# makes one), with a shared audit key file in the work dir.
# AB_PAIRED=1: load both sides at the same time (c/2 connections each)
# instead of one after the other: runs taken seconds apart on a VM differ
# by more than most changes do (benches/RESULTS.md, issue 14 round 3).
# Usage: benches/ab.sh HOST_A HOST_B [seconds per run=5] [rounds=5] [concurrencies="1 16 64"]
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 secs=${3:-5} rounds=${4:-5} concs=${5:-"1 16 64"}
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
tools=guest-examples/target/wasm32-wasip2/release
[ -f $tools/text_tools.wasm ] ||
  cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
work=target/bench-ab
rm -rf "$work"; mkdir -p "$work"
cat > "$work/policy.yaml" <<'YAML'
workflow: "*"
budget:
  max_tool_calls: 1000000000
  per_tenant:
    day: {max_tool_calls: 1000000000}
policy:
  allow_tools: [hello]
YAML

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start() { # name binary extra-args database-url
  local name=$1 host=$2 extra=$3 db=${4:-} data="$work/$1"
  if [ -n "$db" ]; then
    psql -qAtX "$db" -c "DROP SCHEMA public CASCADE" -c "CREATE SCHEMA public" >/dev/null
    [ -f "$work/audit.key" ] || { od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$work/audit.key"; chmod 600 "$work/audit.key"; }
    export TOOLHOST_DATABASE_URL=$db TOOLHOST_AUDIT_KEY=$work/audit.key
  else
    unset TOOLHOST_DATABASE_URL TOOLHOST_AUDIT_KEY
  fi
  $host register $tools/text_tools.wasm --name text-tools --tenant bench --data-dir "$data" >/dev/null
  local key; key=$($host keys create --tenant bench --role invoke --data-dir "$data")
  cat > "$work/$name.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"args": {"name": "world"}, "task_id": "bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  $host serve --listen 127.0.0.1:0 --data-dir "$data" --policy "$work/policy.yaml" \
    --max-concurrency 64 $extra 2>"$work/$name.log" >"$work/$name.url" &
  pids+=($!)
  for _ in $(seq 1 200); do [ -s "$work/$name.url" ] && break; sleep 0.1; done
  local url; url="$(head -1 "$work/$name.url")/v1/tools/text-tools/hello/invoke"
  curl -sf -H "Authorization: Bearer $key" -d '{"args": {"name": "world"}}' "$url" >/dev/null
  echo "$url" > "$work/$name.target"
}
start a "$a" "${SERVE_ARGS_A:-}" "${DB_A:-}"
start b "$b" "${SERVE_ARGS_B:-}" "${DB_B:-}"
unset TOOLHOST_DATABASE_URL TOOLHOST_AUDIT_KEY
: > "$work/results"
for c in $concs; do
  threads=$(( c < 2 ? 1 : 2 ))
  for r in $(seq 1 "$rounds"); do
    if [ "${AB_PAIRED:-0}" = 1 ]; then
      # Both sides at the same time, c/2 connections each: whatever the VM
      # does during the run (steal, neighbours) it does to both.
      half=$(( c < 2 ? 1 : c / 2 ))
      wrk -t1 -c$half -d${secs}s -s "$work/a.lua" "$(cat "$work/a.target")" > "$work/wa.txt" & wa=$!
      wrk -t1 -c$half -d${secs}s -s "$work/b.lua" "$(cat "$work/b.target")" > "$work/wb.txt" & wb=$!
      wait $wa $wb
      for side in a b; do
        echo "c=$c round=$r $side $(awk '/Requests\/sec/ {print $2}' "$work/w$side.txt")" | tee -a "$work/results"
      done
      continue
    fi
    for side in a b; do
      rps=$(wrk -t$threads -c$c -d${secs}s -s "$work/$side.lua" "$(cat "$work/$side.target")" |
        awk '/Requests\/sec/ {print $2}')
      echo "c=$c round=$r $side $rps" | tee -a "$work/results"
    done
  done
done
python3 - "$work/results" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, _, side, rps = line.split()
    runs[(c, side)].append(float(rps))
print("concurrency  A median   B median   B/A   (requests/s)")
for c in sorted({c for c, _ in runs}, key=lambda c: int(c[2:])):
    a, b = statistics.median(runs[(c, "a")]), statistics.median(runs[(c, "b")])
    print(f"{c:<12} {a:>9.0f}  {b:>9.0f}  {b/a:5.2f}")
PY
