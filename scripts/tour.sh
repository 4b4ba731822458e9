#!/usr/bin/env bash
# Build Toolhost and the example tools, then run the essay's refund workflow
# through `host` on a fresh machine. Needs only rustup and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
echo "==> building the example tools (wasm32-wasip2)" >&2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
echo "==> building host" >&2
cargo build --quiet --release --bin host
host=target/release/host
tools=guest-examples/target/wasm32-wasip2/release

echo "==> embedding WIT docs into the refund tool" >&2
$host docs embed $tools/refund.wasm --wit guest-examples/refund/wit -o target/refund.wasm

echo "==> host inspect target/refund.wasm" >&2
$host inspect target/refund.wasm | grep -v '^        ' || true

echo "==> host run ... lookup-order" >&2
$host run target/refund.wasm lookup-order --args '{"order-id": "ord_1001"}'

echo "==> host run ... create-refund-draft" >&2
$host run target/refund.wasm create-refund-draft \
  --args '{"order-id": "ord_1001", "amount-usd": 42.5, "reason": "damaged"}'

echo "==> a hostile tool, contained: an infinite loop under a 1 s deadline with unlimited fuel" >&2
$host run $tools/hostile.wasm spin --fuel unlimited --timeout 1s --json || true
echo
echo "==> outbound HTTP without a grant is denied (the tool sees an error it can handle)" >&2
$host run $tools/http_json.wasm get-json --args '{"url": "https://api.example.com/orders"}'

echo "==> the essay's example policy: lookup-order runs, issue-refund escalates to a human" >&2
data=target/demo-data
rm -rf "$data"
$host run target/refund.wasm lookup-order --args '{"order-id": "ord_1002"}' \
  --policy policies/refund-request.yaml --task demo --data-dir "$data" --audit
$host run target/refund.wasm issue-refund --args '{"order-id": "ord_1002", "amount-usd": 75}' \
  --policy policies/refund-request.yaml --task demo --data-dir "$data" || true

echo "==> the audit trail verifies" >&2
$host audit verify --data-dir "$data"
