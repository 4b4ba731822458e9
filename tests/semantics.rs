//! Orchestrator-grade semantics over real HTTP: idempotency keys, human
//! approvals, result caching — including their races.

mod common;

use common::serve::{Client, Server, data_dir_with, host, key, ok, s};
use common::{TestServer, guest};
use serde_json::{Value, json};
use std::time::Duration;
use toolhost::ids::TenantId;

const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 100
policy:
  allow_tools: [text-tools, hostile, lookup_order, types]
  deny_tools: [issue_refund]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
logging:
  redact_fields: [order_id]
tools:
  hostile:
    limits: {timeout: 1s}
  word_count:
    cache: {ttl: 1h}
  crm/divide:
    cache: {ttl: 1h}
"#;

async fn count(c: &Client, query: &str) -> usize {
    let (status, list) = c.get(&format!("/v1/invocations?{query}")).await;
    assert_eq!(status, 200, "{list}");
    list["invocations"].as_array().unwrap().len()
}

async fn tool_calls(c: &Client, task: &str) -> i64 {
    let (_, u) = c.get(&format!("/v1/tasks/{task}/usage")).await;
    u["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metric"] == "tool_calls")
        .map_or(0, |l| l["used"].as_i64().unwrap())
}

#[tokio::test]
async fn an_idempotency_key_runs_once_and_replays_its_answer() {
    let dir = data_dir_with(
        "sem-idem",
        POLICY,
        &[("text-tools", "text_tools"), ("hostile", "hostile")],
    );
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let body = json!({"args": {"name": "Ada"}, "task_id": "idem"});
    let path = "/v1/tools/text-tools/hello/invoke";

    let (s1, r1, h1) = c
        .post_with(path, body.clone(), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(s1, 200, "{r1}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, r2, h2) = c
        .post_with(path, body.clone(), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!((s2, &r2), (s1, &r1), "the stored answer comes back");
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(count(&c, "task_id=idem").await, 1, "no second execution");
    assert_eq!(tool_calls(&c, "idem").await, 1, "no second charge");

    // The same key with another request: 422.
    let other = json!({"args": {"name": "Bob"}, "task_id": "idem"});
    let (status, p, _) = c
        .post_with(path, other, &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(
        (status, &p["kind"]),
        (422, &json!("idempotency_key_reused")),
        "{p}"
    );
    // Keys are per tenant: another tenant's identical key is its own.
    // (Refusals are answers too: a keyed 422 replays as 422.)
    let bad = json!({"args": {"name": 1}});
    let (s3, r3, _) = c
        .post_with(path, bad.clone(), &[("idempotency-key", "k-2")])
        .await;
    let (s4, r4, h4) = c.post_with(path, bad, &[("idempotency-key", "k-2")]).await;
    assert_eq!((s3, s4), (422, 422));
    assert_eq!(r3, r4);
    assert_eq!(h4["idempotent-replayed"], "true");
    // A malformed key: 400.
    let (status, _, _) = c
        .post_with(path, body.clone(), &[("idempotency-key", "has space")])
        .await;
    assert_eq!(status, 400);

    // While the first request runs, the same key gets 409: of two requests
    // sent together one runs (and times out after 1 s), the other is told
    // it is in progress.
    let slow_path = "/v1/tools/hostile/sleep-forever/invoke";
    let mut racers = Vec::new();
    for delay in [0u64, 200] {
        let (url, k) = (server.url.clone(), k.clone());
        racers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let r = reqwest::Client::new()
                .post(format!("{url}{slow_path}"))
                .bearer_auth(k)
                .header("idempotency-key", "slow")
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for r in racers {
        answers.push(r.await.unwrap());
    }
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[0].1["error"]["kind"], "timeout");
    assert_eq!(answers[1].0, 409, "{answers:?}");
    assert_eq!(answers[1].1["kind"], "idempotency_in_progress");
    let (status, r, _) = c
        .post_with(slow_path, json!({}), &[("idempotency-key", "slow")])
        .await;
    assert_eq!(
        (status, &r),
        (200, &answers[0].1),
        "afterwards, the answer replays"
    );

    // The audit trail notes replays, and verifies.
    server.stop();
    let out = host(&["audit", "export", "--tenant", "acme", "--data-dir", s(&dir)]);
    let export = String::from_utf8(out.stdout).unwrap();
    assert!(export.contains("idempotent_replay"), "{export}");
    let out = host(&["audit", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success());
}

#[tokio::test]
async fn identical_keyed_requests_at_once_execute_once() {
    let dir = data_dir_with("sem-race", POLICY, &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (url, k) = (server.url.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/tools/text-tools/slugify/invoke"))
                .bearer_auth(k)
                .header("idempotency-key", "race")
                .json(&json!({"args": {"text": "Hello World"}, "task_id": "race"}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ids.push(body["invocation_id"].as_str().unwrap().to_string()),
            409 => assert_eq!(body["kind"], "idempotency_in_progress"),
            other => panic!("{other}: {body}"),
        }
    }
    ids.dedup();
    assert!(ids.len() <= 1, "one execution, one answer: {ids:?}");
    let c = Client::new(&server, Some(&k));
    assert_eq!(count(&c, "task_id=race").await, 1);
    assert_eq!(tool_calls(&c, "race").await, 1);
    server.stop();
}

#[tokio::test]
async fn outbound_calls_of_a_keyed_invocation_carry_derived_keys() {
    let upstream = TestServer::start().await;
    let policy = format!(
        "{POLICY}  http-json:\n    http: [{{url: \"http://127.0.0.1:{}\"}}]\n    allow_cidrs: [127.0.0.0/8]\n",
        upstream.port
    )
    .replace("allow_tools: [", "allow_tools: [http-json, ");
    let dir = data_dir_with("sem-outbound", &policy, &[("http-json", "http_json")]);
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let url = format!("http://127.0.0.1:{}/json", upstream.port);
    let (status, r, _) = c
        .post_with(
            "/v1/tools/http-json/get-many/invoke",
            json!({"args": {"urls": [url, url]}}),
            &[("idempotency-key", "order-42")],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = c
        .post(
            "/v1/tools/http-json/get-json/invoke",
            json!({"args": {"url": url}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let heads = upstream.requests.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    let key_of = |head: &str| {
        head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("idempotency-key: ")
                .map(str::to_string)
        })
    };
    let k1 = key_of(&heads[0]).expect("first call keyed");
    let k2 = key_of(&heads[1]).expect("second call keyed");
    assert!(k1.ends_with("-1") && k2.ends_with("-2"), "{k1} {k2}");
    assert_eq!(k1.trim_end_matches("-1"), k2.trim_end_matches("-2"));
    assert!(
        !k1.contains("order-42"),
        "derived, not the caller's key itself"
    );
    assert_eq!(key_of(&heads[2]), None, "an unkeyed invocation sends none");
    server.stop();
}

#[tokio::test]
async fn approvals_park_the_call_and_a_decision_settles_it_once() {
    let dir = data_dir_with("sem-approve", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke", "approve"]);
    let approver = key(&dir, "acme", &["approve"]);
    let invoker_only = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&requester));
    let a = Client::new(&server, Some(&approver));
    let refund = json!({"args": {"order-id": "ord_1001", "amount-usd": 75.0},
                        "task_id": "t-approve"});

    let (status, r) = c
        .post("/v1/tools/refund/issue-refund/invoke", refund.clone())
        .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["status"], "pending_approval");
    let approval_id = r["approval_id"].as_str().unwrap().to_string();
    let invocation_id = r["invocation_id"].as_str().unwrap().to_string();
    assert!(r.get("result").is_none(), "the tool did not run");
    let (_, rec) = c.get(&format!("/v1/invocations/{invocation_id}")).await;
    assert_eq!(rec["status"], "pending_approval");

    // The decision packet, for approvers.
    let (status, list) = a.get("/v1/approvals?status=pending").await;
    assert_eq!(status, 200, "{list}");
    let packet = &list["approvals"][0];
    assert_eq!(packet["id"], approval_id.as_str());
    assert_eq!(packet["tenant"], "acme");
    assert_eq!(packet["task_id"], "t-approve");
    assert_eq!(packet["tool"], "refund");
    assert_eq!(packet["function"], "issue-refund");
    assert_eq!(packet["args"]["order-id"], "[REDACTED]");
    assert_eq!(packet["args"]["amount-usd"], 75.0);
    assert_eq!(packet["args_sha256"].as_str().unwrap().len(), 64);
    assert!(
        packet["rule"].as_str().unwrap().contains("issue_refund"),
        "{packet}"
    );
    assert_eq!(packet["requester"], &requester[4..20]);
    assert!(packet["created_ms"].as_i64().unwrap() > 0);

    // Not the requester (even with the role); not without the role.
    let (status, p) = c
        .post(&format!("/v1/approvals/{approval_id}/approve"), json!({}))
        .await;
    assert_eq!((status, &p["kind"]), (403, &json!("forbidden")), "{p}");
    let (status, _) = Client::new(&server, Some(&invoker_only))
        .post(&format!("/v1/approvals/{approval_id}/approve"), json!({}))
        .await;
    assert_eq!(status, 403);

    // Approve: it runs once; the record now holds the result.
    let (status, d) = a
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            json!({"reason": "customer is right"}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["approval"]["status"], "approved");
    assert_eq!(d["invocation"]["status"], "ok", "{d}");
    assert_eq!(d["invocation"]["invocation_id"], invocation_id.as_str());
    let (_, rec) = c.get(&format!("/v1/invocations/{invocation_id}")).await;
    assert_eq!(rec["status"], "ok", "{rec}");
    assert!(rec["result"].is_object());
    // Replayed: nothing happens.
    for verb in ["approve", "deny"] {
        let (status, p) = a
            .post(&format!("/v1/approvals/{approval_id}/{verb}"), json!({}))
            .await;
        assert_eq!((status, &p["kind"]), (409, &json!("conflict")), "{p}");
    }
    assert_eq!(tool_calls(&c, "t-approve").await, 1, "ran exactly once");

    // Approve and deny at the same moment: one outcome.
    let (_, r) = c
        .post("/v1/tools/refund/issue-refund/invoke", refund.clone())
        .await;
    let id2 = r["approval_id"].as_str().unwrap().to_string();
    let mut racers = Vec::new();
    for verb in ["approve", "deny", "approve", "deny"] {
        let (url, k, id) = (server.url.clone(), approver.clone(), id2.clone());
        racers.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/approvals/{id}/{verb}"))
                .bearer_auth(k)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for r in racers {
        codes.push(r.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [200, 409, 409, 409]);
    // Whichever won, the call ran once if approved and never if denied.
    let (_, decided) = a.get(&format!("/v1/approvals/{id2}")).await;
    let ran = i64::from(decided["status"] == "approved");
    assert!(
        decided["status"] == "approved" || decided["status"] == "denied",
        "{decided}"
    );
    assert_eq!(tool_calls(&c, "t-approve").await, 1 + ran);

    // Denied from the command line: final, and the record says so.
    let (_, r) = c
        .post("/v1/tools/refund/issue-refund/invoke", refund.clone())
        .await;
    let id3 = r["approval_id"].as_str().unwrap().to_string();
    let inv3 = r["invocation_id"].as_str().unwrap().to_string();
    let listed = ok(host(&[
        "approvals",
        "list",
        "--tenant",
        "acme",
        "--status",
        "pending",
        "--data-dir",
        s(&dir),
    ]));
    assert!(listed.contains(&id3), "{listed}");
    ok(host(&[
        "approvals",
        "deny",
        &id3,
        "--tenant",
        "acme",
        "--reason",
        "fraud",
        "--data-dir",
        s(&dir),
    ]));
    let (_, rec) = c.get(&format!("/v1/invocations/{inv3}")).await;
    assert_eq!(
        (&rec["status"], &rec["error"]["kind"]),
        (&json!("refused"), &json!("approval_denied")),
        "{rec}"
    );
    let (status, _) = a
        .post(&format!("/v1/approvals/{id3}/approve"), json!({}))
        .await;
    assert_eq!(status, 409);
    // Another tenant sees none of it.
    let other = key(&dir, "globex", &["approve"]);
    let (status, _) = Client::new(&server, Some(&other))
        .post(&format!("/v1/approvals/{id3}/approve"), json!({}))
        .await;
    assert_eq!(status, 404);
    server.stop();
    let out = host(&["audit", "export", "--tenant", "acme", "--data-dir", s(&dir)]);
    let export = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        export.matches("approval_decision").count(),
        3,
        "every decision is audited"
    );
    let out = host(&["audit", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success());
}

#[tokio::test]
async fn an_undecided_approval_expires() {
    let dir = data_dir_with("sem-expire", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &["--approval-ttl", "1s"]);
    let c = Client::new(&server, Some(&requester));
    let request = async |order: &str| {
        let (status, r) = c
            .post(
                "/v1/tools/refund/issue-refund/invoke",
                json!({"args": {"order-id": order, "amount-usd": 80.0}}),
            )
            .await;
        assert_eq!(status, 202, "{r}");
        let ids = (&r["approval_id"], &r["invocation_id"]);
        (
            ids.0.as_str().unwrap().to_string(),
            ids.1.as_str().unwrap().to_string(),
        )
    };
    let (id, inv) = request("o").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let a = Client::new(&server, Some(&approver));
    let (status, p) = a
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 409, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
    let (_, rec) = c.get(&format!("/v1/invocations/{inv}")).await;
    assert_eq!(rec["error"]["kind"], "approval_expired", "{rec}");
    // A newer request still pending: each status filter finds its own,
    // whatever the page size (the newest row is not the expired one).
    let (fresh, _) = request("o2").await;
    let (_, list) = a.get("/v1/approvals?status=expired&limit=1").await;
    assert_eq!(list["approvals"][0]["id"], id, "{list}");
    assert_eq!(list["approvals"][0]["status"], "expired", "{list}");
    let (_, list) = a.get("/v1/approvals?status=pending&limit=1").await;
    assert_eq!(list["approvals"][0]["id"], fresh, "{list}");
    let (_, list) = a.get("/v1/approvals").await;
    assert_eq!(list["approvals"].as_array().unwrap().len(), 2, "{list}");
    // Pages follow `next_cursor`, newest first, each request once.
    let (_, page) = a.get("/v1/approvals?limit=1").await;
    assert_eq!(page["approvals"][0]["id"], fresh, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = a
        .get(&format!("/v1/approvals?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(page["approvals"][0]["id"], id, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = a
        .get(&format!("/v1/approvals?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(page["approvals"], json!([]), "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let (status, p) = a.get("/v1/approvals?cursor=nonsense").await;
    assert_eq!(status, 400, "{p}");
    server.stop();
}

#[tokio::test]
async fn cacheable_functions_return_stored_results_per_tenant_and_version() {
    let dir = data_dir_with(
        "sem-cache",
        POLICY,
        &[("text-tools", "text_tools"), ("types", "types")],
    );
    // The same tool for another tenant.
    ok(host(&[
        "register",
        s(&guest("text_tools")),
        "--name",
        "text-tools",
        "--tenant",
        "globex",
        "--data-dir",
        s(&dir),
    ]));
    let k = key(&dir, "acme", &["invoke", "admin"]);
    let g = key(&dir, "globex", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let call = json!({"args": {"text": "to be or not"}, "task_id": "cache"});
    let path = "/v1/tools/text-tools/word-count/invoke";

    let (_, first) = c.post(path, call.clone()).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert!(first.get("cached").is_none());
    let (status, hit) = c.post(path, call.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["result"], first["result"]);
    assert_ne!(hit["invocation_id"], first["invocation_id"]);
    assert_eq!(hit["usage"]["fuel"], 0, "nothing ran");
    assert_eq!(
        tool_calls(&c, "cache").await,
        1,
        "a hit charges nothing by default"
    );
    // Other arguments miss.
    let (_, miss) = c.post(path, json!({"args": {"text": "other"}})).await;
    assert!(miss.get("cached").is_none());
    // Never across tenants.
    let (_, theirs) = Client::new(&server, Some(&g))
        .post(path, call.clone())
        .await;
    assert_eq!(theirs["status"], "ok", "{theirs}");
    assert!(theirs.get("cached").is_none(), "{theirs}");
    // Errors are never cached (a WIT result's err included).
    let div = json!({"args": {"a": 1, "b": 0}});
    let (_, e1) = c
        .post("/v1/tools/types/crm/divide/invoke", div.clone())
        .await;
    assert!(e1["result"]["err"].is_string(), "{e1}");
    let (_, e2) = c.post("/v1/tools/types/crm/divide/invoke", div).await;
    assert!(e2.get("cached").is_none(), "{e2}");
    let ok_div = json!({"args": {"a": 6, "b": 3}});
    c.post("/v1/tools/types/crm/divide/invoke", ok_div.clone())
        .await;
    let (_, d2) = c.post("/v1/tools/types/crm/divide/invoke", ok_div).await;
    assert_eq!(d2["cached"], true, "{d2}");
    // A new version makes old entries stale.
    let v2 = dir.join("text-tools-v2.wasm");
    ok(host(&[
        "docs",
        "embed",
        s(&guest("text_tools")),
        "--wit",
        s(&common::repo_root().join("guest-examples/text-tools/wit")),
        "-o",
        s(&v2),
    ]));
    let (status, reg) = c
        .post_raw(
            "/v1/tools?name=text-tools",
            std::fs::read(&v2).unwrap(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    let (_, after) = c.post(path, call.clone()).await;
    assert_eq!(after["version"], "2");
    assert!(after.get("cached").is_none(), "{after}");
    // Hits are audited as hits.
    server.stop();
    let out = host(&["audit", "export", "--tenant", "acme", "--data-dir", s(&dir)]);
    let export = String::from_utf8(out.stdout).unwrap();
    assert!(export.contains(r#"\"cache\":\"hit\""#), "{export}");
}

#[tokio::test]
async fn a_decided_approval_is_posted_to_its_allowed_callback() {
    let hooks = TestServer::start().await;
    let dir = data_dir_with("sem-callback", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let allow = format!("http://127.0.0.1:{}", hooks.port);
    let server = Server::start(&dir, &["--callback-allow", &allow]);
    let c = Client::new(&server, Some(&requester));
    let args = json!({"order-id": "ord_1001", "amount-usd": 60.0});
    // A URL outside the allowlist is refused up front; a malformed one is a
    // bad request.
    let (status, p) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": args, "callback_url": "http://169.254.169.254/latest"}),
        )
        .await;
    assert_eq!((status, &p["kind"]), (403, &json!("forbidden")), "{p}");
    let (status, p) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": args, "callback_url": "ftp://127.0.0.1/x"}),
        )
        .await;
    assert_eq!(
        (status, &p["kind"]),
        (400, &json!("invalid_request")),
        "{p}"
    );
    let (status, r) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": args, "callback_url": format!("{allow}/json")}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let id = r["approval_id"].as_str().unwrap();
    let (status, _) = Client::new(&server, Some(&approver))
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200);
    let mut posted = Vec::new();
    for _ in 0..50 {
        posted = hooks.requests.lock().unwrap().clone();
        if !posted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(posted.len(), 1, "one callback: {posted:?}");
    assert!(posted[0].starts_with("POST /json "), "{}", posted[0]);
    assert!(
        posted[0]
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    server.stop();
}

/// Callbacks claimed together are sent together: a receiver that never
/// answers delays neither another's callback nor the batch past its claim.
#[tokio::test]
async fn a_silent_callback_receiver_does_not_hold_up_the_others() {
    let hooks = TestServer::start().await;
    // A receiver that takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let dir = data_dir_with("sem-callback-silent", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let fast = format!("http://127.0.0.1:{}", hooks.port);
    let slow = format!("http://127.0.0.1:{silent_port}");
    let server = Server::start(
        &dir,
        &["--callback-allow", &fast, "--callback-allow", &slow],
    );
    let c = Client::new(&server, Some(&requester));
    let mut ids = Vec::new();
    for (order, url) in [
        ("ord_1", format!("{slow}/never")),
        ("ord_2", format!("{fast}/json")),
    ] {
        let (status, r) = c
            .post(
                "/v1/tools/refund/issue-refund/invoke",
                json!({"args": {"order-id": order, "amount-usd": 60.0}, "callback_url": url}),
            )
            .await;
        assert_eq!(status, 202, "{r}");
        ids.push(r["approval_id"].as_str().unwrap().to_string());
    }
    // Both decided within one delivery round, the silent one first.
    for id in &ids {
        let (status, _) = Client::new(&server, Some(&approver))
            .post(&format!("/v1/approvals/{id}/deny"), json!({"reason": "no"}))
            .await;
        assert_eq!(status, 200);
    }
    let decided = std::time::Instant::now();
    let mut posted = Vec::new();
    while decided.elapsed() < Duration::from_secs(20) {
        posted = hooks.requests.lock().unwrap().clone();
        if !posted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(posted.len(), 1, "{posted:?}");
    // Well before the silent receiver's 10 s deadline would have let a
    // one-by-one sender go on.
    assert!(
        decided.elapsed() < Duration::from_secs(5),
        "the answering receiver waited {:?}",
        decided.elapsed()
    );
    server.stop();
}

#[tokio::test]
async fn a_decision_erases_the_stored_arguments() {
    let dir = data_dir_with("sem-erase", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&requester));
    let secret_order = "ord_SECRET_4242";
    let (status, r) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": secret_order, "amount-usd": 99.0}}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let id = r["approval_id"].as_str().unwrap();
    let (status, _) = Client::new(&server, Some(&approver))
        .post(&format!("/v1/approvals/{id}/deny"), json!({"reason": "no"}))
        .await;
    assert_eq!(status, 200);
    server.stop();
    // The order id is redacted everywhere else (policy: redact order_id);
    // once decided, the approval no longer keeps it either.
    let storage = toolhost::storage::sqlite::SqliteStorage::open(&dir)
        .await
        .unwrap();
    use toolhost::storage::prelude::*;
    let a = storage
        .approval_get(&"acme".into(), &id.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, toolhost::storage::ApprovalStatus::Denied);
    assert_eq!(a.args, "", "the arguments survived the decision");
    assert!(
        !a.args_redacted.contains(secret_order),
        "{}",
        a.args_redacted
    );
    let rec = storage
        .invocation_get(&TenantId::from("acme"), &a.invocation_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!rec.response.contains(secret_order), "{}", rec.response);
}

#[tokio::test]
async fn an_approved_call_whose_host_died_is_reaped_as_host_lost() {
    let dir = data_dir_with("sem-abandoned", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&requester));
    let (status, r) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "o", "amount-usd": 80.0}}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let id = r["approval_id"].as_str().unwrap().to_string();
    let inv = r["invocation_id"].as_str().unwrap().to_string();
    server.stop();
    // What a host that died mid-run leaves: the approval decided, the
    // invocation's row running under that host, its lease long run out.
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.join("toolhost.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "UPDATE approvals SET status = 'approved', decided_by = 'k', decided_ms = 1, args = '' WHERE id = ?",
        )
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE invocations SET status = 'running', owner = 'hst_dead', lease_until = 1, admitted = 1 WHERE id = ?",
        )
        .bind(&inv)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    // The reaper of the next host to start finishes it (it may have had
    // effects: it is not run again).
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&requester));
    let mut rec = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, r) = c.get(&format!("/v1/invocations/{inv}")).await;
        assert_eq!(status, 200, "{r}");
        rec = r;
        if rec["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec["status"], "error", "{rec}");
    assert_eq!(rec["error"]["kind"], "host_lost", "{rec}");
    assert!(
        rec["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not run again"),
        "{rec}"
    );
    server.stop();
}

/// The CLI (`host run --policy --idempotency-key`) and the API answer the
/// same idempotency scenarios alike: one invocation service behind both.
#[tokio::test]
async fn the_cli_and_the_api_agree_on_idempotency() {
    let dir = data_dir_with("sem-parity", POLICY, &[("text-tools", "text-tools")]);
    let invoker = key(&dir, "acme", &["invoke", "audit"]);
    // The CLI runs the same component file as a tool of tenant `cli-t`.
    let cli = |key: &str, args: &str| {
        let out = host(&[
            "run",
            s(&guest("text-tools")),
            "hello",
            "--args",
            args,
            "--policy",
            s(&dir.join("policy.yaml")),
            "--data-dir",
            s(&dir),
            "--tenant",
            "cli-t",
            "--idempotency-key",
            key,
            "--json",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let kind = v["error"]["kind"].as_str().map(str::to_string).or_else(|| {
            let err = String::from_utf8_lossy(&out.stderr);
            [
                "idempotency_key_reused",
                "idempotency_in_progress",
                "invalid_args",
            ]
            .iter()
            .find(|k| err.contains(*k))
            .map(|k| k.to_string())
        });
        (
            v["invocation_id"].as_str().map(str::to_string),
            kind,
            v["replayed"] == true,
        )
    };
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&invoker));
    let api = |key: &'static str, args: Value| {
        let c = &c;
        async move {
            let (_, body, headers) = c
                .post_with(
                    "/v1/tools/text-tools/hello/invoke",
                    json!({ "args": args }),
                    &[("idempotency-key", key)],
                )
                .await;
            let kind = body["error"]["kind"]
                .as_str()
                .or(body["kind"].as_str())
                .map(str::to_string);
            (
                body["invocation_id"].as_str().map(str::to_string),
                kind,
                headers.get("idempotent-replayed").is_some(),
            )
        }
    };
    // The same scenarios, in both transports.
    let scenarios: [(&str, Value); 5] = [
        ("p-1", json!({"name": "a"})),
        ("p-1", json!({"name": "a"})),
        ("p-1", json!({"name": "a"})),
        ("p-1", json!({"name": "b"})),
        ("p-2", json!({"nme": "a"})),
    ];
    let mut from_api = Vec::new();
    let mut from_cli = Vec::new();
    for (k, args) in &scenarios {
        from_api.push(api(k, args.clone()).await);
        from_cli.push(cli(k, &args.to_string()));
    }
    let shape =
        |answers: &[(Option<String>, Option<String>, bool)]| -> Vec<(bool, Option<String>, bool)> {
            answers
                .iter()
                .map(|(id, kind, replayed)| (id.is_some(), kind.clone(), *replayed))
                .collect()
        };
    assert_eq!(
        shape(&from_api),
        shape(&from_cli),
        "api {from_api:?}\ncli {from_cli:?}"
    );
    assert_eq!(
        shape(&from_api),
        vec![
            (true, None, false),
            (true, None, true),
            (true, None, true),
            (false, Some("idempotency_key_reused".into()), false),
            (true, Some("invalid_args".into()), false),
        ]
    );
    assert_eq!(from_api[0].0, from_api[1].0, "a replay names the first run");
    assert_eq!(from_cli[0].0, from_cli[1].0);
    server.stop();
    // Both audit their replays.
    for chain in ["acme", "cli-t"] {
        let out = host(&["audit", "export", "--tenant", chain, "--data-dir", s(&dir)]);
        let text = String::from_utf8_lossy(&out.stdout);
        let replays = text.matches("idempotent_replay").count();
        assert_eq!(replays, 2, "{chain}: {text}");
    }
}

/// A keyed retry that asks for the outcome at another callback URL is
/// another request (422), not silently the first; the same URL replays.
#[tokio::test]
async fn a_keyed_retry_with_another_callback_is_a_mismatch() {
    let dir = data_dir_with("sem-callback-key", POLICY, &[("refund", "refund")]);
    let requester = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &["--callback-allow", "http://127.0.0.1:9"]);
    let c = Client::new(&server, Some(&requester));
    let request = async |url: &str| {
        c.post_with(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "ord_1", "amount-usd": 60.0}, "callback_url": url}),
            &[("idempotency-key", "refund-ord_1")],
        )
        .await
    };
    let (status, first, _) = request("http://127.0.0.1:9/a").await;
    assert_eq!(status, 202, "{first}");
    let (status, other, _) = request("http://127.0.0.1:9/b").await;
    assert_eq!(status, 422, "{other}");
    let (status, again, _) = request("http://127.0.0.1:9/a").await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["approval_id"], first["approval_id"], "{again}");
    server.stop();
}
