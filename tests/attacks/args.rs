//! One canonical argument object: what policy reads is what the guest gets.

use crate::common::serve::{Client, Server, data_dir, key};
use serde_json::json;

/// `{"amount_usd": 1, "amount-usd": 499}`: policy read the 1, the guest the
/// 499, and a refund over the approval threshold ran without approval.
#[tokio::test]
async fn two_spellings_of_one_argument_are_refused_not_split() {
    let dir = data_dir("attack-spellings", &[("refund", "refund")]);
    let server = Server::start(&dir, &[]);
    let invoker = key(&dir, "acme", &["invoke"]);
    let c = Client::new(&server, Some(&invoker));
    let path = "/v1/tools/refund/issue-refund/invoke";

    for args in [
        json!({"order_id": "A-1001", "amount_usd": 1, "amount-usd": 499}),
        json!({"order_id": "A-1001", "amount-usd": 499, "amount_usd": 1}),
        json!({"order-id": "A-1001", "order_id": "B", "amount_usd": 1}),
    ] {
        let (status, body) = c.post(path, json!({"args": args})).await;
        assert_eq!(status, 422, "{args} → {body}");
        assert_eq!(body["error"]["kind"], "invalid_args", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("two spellings"), "{message}");
    }
    // A mixed spelling is no name at all (it used to be accepted and then
    // silently ignored).
    let (status, body) = c
        .post(
            "/v1/tools/refund/create-refund-draft/invoke",
            json!({"args": {"order_id": "A-1001", "amount-usd": 5, "reason": "damaged", "no-te": "x"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // One spelling, either one, is the same call: over the threshold it
    // waits for a human, and the approver sees the canonical arguments.
    let (status, body) = c
        .post(
            path,
            json!({"args": {"order_id": "A-1001", "amount_usd": 499}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending_approval");
    let approver = key(&dir, "acme", &["approve"]);
    let a = Client::new(&server, Some(&approver));
    let id = body["approval_id"].as_str().unwrap();
    let (status, approval) = a.get(&format!("/v1/approvals/{id}")).await;
    assert_eq!(status, 200, "{approval}");
    assert_eq!(approval["args"]["amount-usd"], 499.0, "{approval}");
    assert!(approval["args"].get("amount_usd").is_none(), "{approval}");
    server.stop();
}

/// Nested records: the same rule at any depth.
#[tokio::test(flavor = "multi_thread")]
async fn two_spellings_of_one_record_field_are_invalid_at_any_depth() {
    let everything = json!({
        "b": true, "v-s8": -8, "v-u8": 8, "v-s16": -16, "v-u16": 16, "v-s32": -32, "v-u32": 32,
        "v-s64": -64, "v-u64": 1, "v-f32": 3.25, "v-f64": 6.5,
        "c": "z", "s": "str", "bytes": "aGVsbG8=", "nums": [1, -2, 3],
        "pair": [1, "one"], "shape": "point", "tier": "free",
        "perms": ["write"], "maybe": 4, "maybe-maybe": {"some": null},
        "outcome": {"err": "bad"}, "unit-outcome": {"ok": null},
        "customer": {"name": "Bo", "tier": "enterprise", "tags": [], "nickname": "b"}
    });
    let host = crate::common::host();
    let types = crate::common::tool("types");
    let run = |v: serde_json::Value| {
        let call = crate::common::call("echo-everything", json!({ "v": v }));
        let (host, types) = (&host, &types);
        async move { host.invoke(types, &call).await }
    };
    let out = run(everything.clone()).await;
    assert!(out.ok, "the base case runs: {:?}", out.error);
    // The guest got the canonical object, whichever spelling was sent.
    let mut snake = everything.clone();
    let v = snake["v-s8"].take();
    snake.as_object_mut().unwrap().remove("v-s8");
    snake["v_s8"] = v;
    let out = run(snake.clone()).await;
    assert_eq!(out.result.as_ref().unwrap()["v-s8"], -8, "{:?}", out.result);

    let mut top = everything.clone();
    top["v_s8"] = json!(100);
    let mut deep = everything.clone();
    deep["customer"]["nick_name"] = json!("x");
    deep["customer"]["nickname"] = json!("y");
    let mut deeper = everything;
    deeper["unit_outcome"] = json!({"ok": null});
    for (case, v) in [("top", top), ("deeper", deeper)] {
        let out = run(v).await;
        let e = out.error.unwrap_or_else(|| panic!("{case}: accepted"));
        assert_eq!(e.kind, toolhost::ErrorKind::InvalidArgs, "{case}: {e:?}");
        assert!(e.message.contains("two spellings"), "{case}: {}", e.message);
        assert_eq!(out.usage.fuel, 0, "{case}: nothing ran");
    }
    // `nick_name` is not a spelling of `nickname`: an unknown field.
    let out = run(deep).await;
    assert_eq!(out.error_kind(), Some(toolhost::ErrorKind::InvalidArgs));
}

/// One key twice in one object: serde keeps the last, a proxy in front may
/// keep the first. Refused, so no two readers can disagree.
#[tokio::test]
async fn a_key_repeated_in_the_arguments_is_refused() {
    let dir = data_dir("attack-dupkey", &[("refund", "refund")]);
    let server = Server::start(&dir, &[]);
    let invoker = key(&dir, "acme", &["invoke"]);
    let c = Client::new(&server, Some(&invoker));
    let body = br#"{"args": {"order_id": "A-1", "amount_usd": 1, "amount_usd": 499}}"#.to_vec();
    let (status, p) = c
        .post_raw(
            "/v1/tools/refund/issue-refund/invoke",
            body,
            "application/json",
        )
        .await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["kind"], "invalid_request");
    assert!(
        p["detail"].as_str().unwrap().contains("appears twice"),
        "{p}"
    );
    // Nested too.
    let body =
        br#"{"args": {"c": {"name": "a", "name": "b", "tier": "pro", "tags": []}}}"#.to_vec();
    let (status, _) = c
        .post_raw(
            "/v1/tools/refund/lookup-order/invoke",
            body,
            "application/json",
        )
        .await;
    assert_eq!(status, 400);
    // A second document after the first (or any trailing bytes): a reader
    // that takes the last one would run something else.
    for trailing in [
        &br#"{"args": {"order_id": "A-1"}}{"args": {"order_id": "B-2"}}"#[..],
        &br#"{"args": {"order_id": "A-1"}} garbage"#[..],
        &br#"{"args": {"order_id": "A-1"}}]"#[..],
    ] {
        let (status, p) = c
            .post_raw(
                "/v1/tools/refund/lookup-order/invoke",
                trailing.to_vec(),
                "application/json",
            )
            .await;
        assert_eq!(status, 400, "{p}");
        assert_eq!(p["kind"], "invalid_request", "{p}");
    }
    // Trailing whitespace is still one document.
    let (status, p) = c
        .post_raw(
            "/v1/tools/refund/lookup-order/invoke",
            b"{\"args\": {\"order_id\": \"A-1\"}} \n".to_vec(),
            "application/json",
        )
        .await;
    assert_ne!(status, 400, "{p}");
    server.stop();
}
