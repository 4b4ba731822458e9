#!/usr/bin/env bash
# Build Toolhost and the example tools, register them, and start `host serve`
# on its embedded default (SQLite in target/quickstart-data), then print an
# API key and a curl that invokes a tool. Needs only rustup and cargo.
#   PORT=8080 (default)   TOOLHOST_DATA_DIR=target/quickstart-data (default)
#
# `scripts/quickstart.sh --postgres` does the same on PostgreSQL: it brings
# one up on this machine (scripts/pg-test-server.sh: as root, installs and
# starts Debian's, database `toolhost_quickstart`) and keeps everything
# there; the data dir then holds only compiled artifacts and the audit key
# (target/quickstart-data/audit.key, which every replica must share).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--postgres" ]; then
  echo "==> PostgreSQL (scripts/pg-test-server.sh)" >&2
  eval "$(scripts/pg-test-server.sh toolhost_quickstart)"
  export TOOLHOST_DATABASE_URL=$TOOLHOST_TEST_DATABASE_URL
  mkdir -p "${TOOLHOST_DATA_DIR:-target/quickstart-data}"
  export TOOLHOST_AUDIT_KEY=${TOOLHOST_AUDIT_KEY:-${TOOLHOST_DATA_DIR:-target/quickstart-data}/audit.key}
  if [ ! -s "$TOOLHOST_AUDIT_KEY" ]; then
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$TOOLHOST_AUDIT_KEY")
  fi
fi

rustup target add wasm32-wasip2 >/dev/null
echo "==> building the example tools (wasm32-wasip2)" >&2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
echo "==> building host" >&2
cargo build --quiet --release --bin host
host=target/release/host
tools=guest-examples/target/wasm32-wasip2/release
data=${TOOLHOST_DATA_DIR:-target/quickstart-data}
port=${PORT:-8080}

echo "==> registering the example tools for tenant 'demo' in $data" >&2
$host docs embed $tools/refund.wasm --wit guest-examples/refund/wit -o target/refund.wasm
$host docs embed $tools/text_tools.wasm --wit guest-examples/text-tools/wit -o target/text-tools.wasm
$host register target/refund.wasm --name refund --tenant demo --data-dir "$data"
$host register target/text-tools.wasm --name text-tools --tenant demo --data-dir "$data"
key=$($host keys create --tenant demo --role invoke --label quickstart --data-dir "$data")

echo "==> starting host serve (Ctrl-C stops it; in-flight calls finish, the audit trail is flushed)" >&2
out=$(mktemp)
$host serve --listen "127.0.0.1:$port" --data-dir "$data" --policy policies/quickstart.yaml >"$out" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid; rm -f "$out"' INT TERM
for _ in $(seq 1 100); do
  [ -s "$out" ] && break
  kill -0 $pid 2>/dev/null || { echo "host serve did not start" >&2; exit 1; }
  sleep 0.1
done
url=$(head -1 "$out")
store=$data
[ -n "${TOOLHOST_DATABASE_URL:-}" ] && store="PostgreSQL, database toolhost_quickstart"
cat <<MSG

Toolhost is serving at $url (tenant 'demo'; store: $store).
API key (shown once): $key

Try:
  curl -s -H "Authorization: Bearer $key" $url/v1/tools/text-tools/hello/invoke -d '{"args": {"name": "world"}}'
  curl -s -H "Authorization: Bearer $key" '$url/v1/tools?format=openai'
  curl -s -H "Authorization: Bearer $key" $url/v1/tools/refund/lookup-order/invoke -d '{"args": {"order-id": "ord_1001"}, "workflow": "refund_request", "task_id": "t1"}'
  curl -s $url/openapi.json

MSG
wait $pid
