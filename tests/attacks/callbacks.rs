//! Approval callbacks take a tool's precautions: the name is resolved by the
//! host and internal addresses are refused after resolution (DNS cannot
//! point a callback inside), delivery is recorded and retried.

use crate::common::TestServer;
use crate::common::serve::{Client, Server, data_dir_with, key};
use serde_json::{Value, json};
use std::time::Duration;

const POLICY: &str = r#"
workflow: "*"
policy:
  allow_tools: [lookup_order]
  deny_tools: [issue_refund]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
"#;

/// Park a refund with `callback`, approve it, and wait until its callback
/// is no longer pending (or was attempted at least `attempts` times).
async fn decided_callback(allow: &str, callback: &str, attempts: i64) -> Value {
    let dir = data_dir_with("attack-callback", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &["--callback-allow", allow]);
    let c = Client::new(&server, Some(&requester));
    let (status, r) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "o", "amount-usd": 60.0}, "callback_url": callback}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let id = r["approval_id"].as_str().unwrap();
    let inv = r["invocation_id"].as_str().unwrap();
    let (status, _) = Client::new(&server, Some(&approver))
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200);
    let mut rec = Value::Null;
    for _ in 0..100 {
        let (_, r) = c.get(&format!("/v1/invocations/{inv}")).await;
        rec = r;
        let cb = &rec["callbacks"][0];
        if cb["state"] != "pending" || cb["attempts"].as_i64().unwrap_or(0) >= attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();
    rec
}

#[tokio::test]
async fn a_callback_name_that_resolves_inside_is_refused_after_resolution() {
    let hooks = TestServer::start().await;
    // The operator allowed a *name*; it resolves to loopback. Before, the
    // callback client resolved it without the address check and posted.
    let allow = format!("http://localhost:{}", hooks.port);
    let rec = decided_callback(&allow, &format!("{allow}/json"), 1).await;
    let cb = &rec["callbacks"][0];
    assert_eq!(cb["state"], "failed", "{rec}");
    assert!(
        cb["last_error"].as_str().unwrap().contains("refused"),
        "{rec}"
    );
    assert!(
        hooks.requests.lock().unwrap().is_empty(),
        "nothing was sent"
    );
}

#[tokio::test]
async fn a_failed_callback_is_recorded_and_retried() {
    let hooks = TestServer::start().await;
    // An address the operator names literally is allowed; the receiver
    // answers 404: the attempt is recorded and retried later.
    let allow = format!("http://127.0.0.1:{}", hooks.port);
    let rec = decided_callback(&allow, &format!("{allow}/missing"), 2).await;
    let cb = &rec["callbacks"][0];
    assert!(cb["attempts"].as_i64().unwrap() >= 2, "{rec}");
    assert!(cb["last_error"].as_str().unwrap().contains("404"), "{rec}");
    assert!(hooks.requests.lock().unwrap().len() >= 2);
}
