#!/usr/bin/env bash
# `benches/serve.sh --postgres`: see there. Usage: benches/serve-postgres.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
command -v psql >/dev/null || { echo "psql not found (apt-get install postgresql-client)" >&2; exit 1; }
if [ -z "${TOOLHOST_BENCH_DATABASE_URL:-}" ]; then
  eval "$(scripts/pg-test-server.sh)"
  TOOLHOST_BENCH_DATABASE_URL=$TOOLHOST_TEST_DATABASE_URL
fi
server=$TOOLHOST_BENCH_DATABASE_URL
# The database is on this machine: by default Toolhost reaches it without
# TLS over loopback, as a same-host deployment would over a Unix socket
# (TLS on loopback costs ~25% here: TOOLHOST_BENCH_PG_SSLMODE=require
# measures it).
sslmode=${TOOLHOST_BENCH_PG_SSLMODE:-disable}
db_url() { echo "${server%/*}/$1?sslmode=$sslmode"; }
psql -qAtX "$server" -c "DROP DATABASE IF EXISTS toolhost_bench WITH (FORCE)" -c "CREATE DATABASE toolhost_bench"
pg=$(db_url toolhost_bench)
echo "==> PostgreSQL: $(psql -qAtX "$pg" -c 'SHOW server_version'), sslmode=$sslmode, synchronous_commit=$(psql -qAtX "$pg" -c 'SHOW synchronous_commit'), fsync=$(psql -qAtX "$pg" -c 'SHOW fsync')"

cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
# TOOLHOST_BENCH_PROFILE=debug measures a debug build (indicative only: the
# ratio between stores, not absolute figures).
if [ "${TOOLHOST_BENCH_PROFILE:-release}" = debug ]; then
  cargo build --quiet --bin host
  host=target/debug/host
else
  cargo build --quiet --release --bin host
  host=target/release/host
fi
tools=guest-examples/target/wasm32-wasip2/release
work=target/bench-serve-pg
rm -rf "$work"; mkdir -p "$work"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$work/audit.key"; chmod 600 "$work/audit.key"

cat > "$work/policy.yaml" <<'YAML'
workflow: "*"
budget:
  max_tool_calls: 1000000000
  per_tenant:
    day: {max_tool_calls: 1000000000}
policy:
  allow_tools: [hello]
YAML

# store: "sqlite" or "pg"; the rest: a host command.
h() {
  local store=$1; shift
  if [ "$store" = pg ]; then
    TOOLHOST_DATABASE_URL=$pg TOOLHOST_AUDIT_KEY=$work/audit.key "$host" "$@" --data-dir "$work/pg-admin"
  else
    "$host" "$@" --data-dir "$work/sqlite"
  fi
}
declare -A key
for store in sqlite pg; do
  for t in bench t1 t2 t3; do
    h $store register $tools/text_tools.wasm --name text-tools --tenant $t >/dev/null
    key[$store-$t]=$(h $store keys create --tenant $t --role invoke)
  done
done

lua() { # file, key, task
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '{"args": {"name": "world"}, "task_id": "$3"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
LUA
}
rps() { awk '/Requests\/sec/ {print $2}'; }
load() { # url, concurrency, script
  local threads=$(( $2 < 2 ? 1 : 2 ))
  wrk -t$threads -c$2 -d${secs}s --latency -s "$3" "$1"
}
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done' EXIT
start() { # store, name -> sets URL
  local store=$1 name=$2 dir="$work/node-$2"
  mkdir -p "$dir"
  if [ "$store" = pg ]; then
    TOOLHOST_DATABASE_URL=$pg TOOLHOST_AUDIT_KEY=$work/audit.key \
      "$host" serve --listen 127.0.0.1:0 --data-dir "$dir" --policy "$work/policy.yaml" \
      --max-concurrency 64 2>"$dir/serve.log" >"$dir/url" &
  else
    "$host" serve --listen 127.0.0.1:0 --data-dir "$work/sqlite" --policy "$work/policy.yaml" \
      --max-concurrency 64 2>"$dir/serve.log" >"$dir/url" &
  fi
  pids+=($!)
  for _ in $(seq 1 300); do [ -s "$dir/url" ] && break; sleep 0.1; done
  URL=$(head -1 "$dir/url")
}
stop_all() { for p in "${pids[@]}"; do kill -TERM $p 2>/dev/null || true; wait $p 2>/dev/null || true; done; pids=(); }

declare -A r
for store in sqlite pg; do
  echo "==> one host serve on $store"
  start $store one-$store
  url="$URL/v1/tools/text-tools/hello/invoke"
  lua "$work/$store.lua" "${key[$store-bench]}" bench
  curl -sf -H "Authorization: Bearer ${key[$store-bench]}" -d '{"args": {"name": "warm"}}' "$url" >/dev/null
  for c in 1 16 64; do
    if [ $store = pg ]; then
      wal0=$(psql -qAtX "$pg" -c "SELECT pg_current_wal_lsn()")
      x0=$(psql -qAtX "$pg" -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'toolhost_bench'")
      n0=$(psql -qAtX "$pg" -c "SELECT count(*) FROM invocations")
    fi
    out=$(load "$url" $c "$work/$store.lua")
    echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors|50%|99%" | sed "s/^/  c=$c /"
    r[$store-$c]=$(echo "$out" | rps)
    if [ $store = pg ]; then
      sleep 1
      psql -qAtX "$pg" -c "SELECT '  c=$c per invocation: ' || round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal0') / greatest(count(*) - $n0, 1)) || ' WAL bytes, ' || round(((SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'toolhost_bench') - $x0)::numeric / greatest(count(*) - $n0, 1), 2) || ' transactions (' || count(*) - $n0 || ' invocations)' FROM invocations"
    fi
  done
  stop_all
done
echo "==> summary (requests/s; ratio = PostgreSQL / SQLite; target >= 0.7 at c=16 and c=64)"
for c in 1 16 64; do
  python3 -c "s=${r[sqlite-$c]}; p=${r[pg-$c]}; print(f'  c={$c:<3} sqlite {s:>8.0f}   postgres {p:>8.0f}   ratio {p/s:.2f}')"
done

echo "==> three replicas on one database, c=64 in all (3 x wrk at c=21)"
urls=()
for i in 1 2 3; do start pg rep$i; urls+=("$URL/v1/tools/text-tools/hello/invoke"); done
for mode in one-tenant three-tenants; do
  outs=()
  for i in 0 1 2; do
    t=bench; [ $mode = three-tenants ] && t=t$((i + 1))
    lua "$work/$mode-$i.lua" "${key[pg-$t]}" "task-$i"
    curl -sf -H "Authorization: Bearer ${key[pg-$t]}" -d '{"args": {"name": "warm"}}' "${urls[$i]}" >/dev/null
  done
  for i in 0 1 2; do
    load "${urls[$i]}" 21 "$work/$mode-$i.lua" > "$work/$mode-$i.out" &
    outs+=($!)
  done
  for p in "${outs[@]}"; do wait $p; done
  total=0
  for i in 0 1 2; do total=$(python3 -c "print($total + $(rps < "$work/$mode-$i.out"))"); done
  p99=$(grep -h " 99%" "$work/$mode-"*.out | awk '{print $2}' | tr '\n' ' ')
  echo "  $mode: $total requests/s in all; p99 per replica: $p99"
done
stop_all
TOOLHOST_DATABASE_URL=$pg TOOLHOST_AUDIT_KEY=$work/audit.key "$host" audit verify --data-dir "$work/pg-admin" | tail -3
