//! The gate: policy decisions (the essay's example as written, each rule
//! kind, raw Cedar, tenant scoping), budgets under concurrency, every
//! capability allowed and denied, SSRF, secrets, and redaction.

mod common;

use common::{TestServer, call, guest, runtime, tempdir, tool};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use toolhost::audit::AuditLog;
use toolhost::budget::Ledger;
use toolhost::gate::{CallContext, Governed};
use toolhost::policy::Policy;
use toolhost::secrets::{Secret, SecretSource};
use toolhost::storage::prelude::*;
use toolhost::storage::sqlite::SqliteStorage;
use toolhost::{ErrorKind, Host, Outcome};

const SEED: &str = include_str!("../policies/refund-request.yaml");
const SECRET: &str = "sk_live_DO_NOT_LEAK_7f3a9c";

struct Secrets(HashMap<String, String>);

impl SecretSource for Secrets {
    fn get(&self, name: &str) -> Option<Secret> {
        self.0.get(name).map(|v| Secret::new(v.clone()))
    }
}

struct Gated {
    host: Host,
    gate: Arc<Governed>,
    dir: std::path::PathBuf,
}

async fn gated(policy: &str) -> Gated {
    let dir = tempdir("gate");
    let policy = Arc::new(Policy::parse("test.yaml", policy).unwrap_or_else(|e| panic!("{e}")));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let audit = AuditLog::open(storage.clone(), &dir).await.unwrap();
    let secrets = Secrets(HashMap::from([(
        "shop_token".to_string(),
        SECRET.to_string(),
    )]));
    let gate = Arc::new(Governed::new(
        policy,
        Ledger::new(storage),
        audit,
        Arc::new(secrets),
    ));
    Gated {
        host: Host::new(runtime(), gate.clone()),
        gate,
        dir,
    }
}

impl Gated {
    async fn run(&self, tool_name: &str, function: &str, args: Value, ctx: CallContext) -> Outcome {
        let mut c = call(function, args);
        c.context = ctx;
        self.host.invoke(&tool(tool_name), &c).await
    }

    async fn records(&self, chain: &str) -> Vec<Value> {
        self.gate
            .audit()
            .storage()
            .audit_read(chain, 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_str(&e.body).unwrap())
            .collect()
    }
}

fn task(t: &str) -> CallContext {
    CallContext {
        task_id: Some(t.into()),
        principal: Some("test".into()),
        ..Default::default()
    }
}

fn kind(o: &Outcome) -> Option<ErrorKind> {
    o.error_kind()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_essays_example_policy_behaves_as_written() {
    let g = gated(SEED).await;
    let lookup = g
        .run(
            "refund",
            "lookup-order",
            json!({"order-id": "ord_1001"}),
            task("t1"),
        )
        .await;
    assert!(lookup.ok, "{:?}", lookup.error);
    let draft = g
        .run(
            "refund",
            "create_refund_draft",
            json!({"order_id": "ord_1001", "amount_usd": 20.0, "reason": "damaged"}),
            task("t1"),
        )
        .await;
    assert!(draft.ok, "{:?}", draft.error);
    // issue_refund escalates to a human, over the threshold and under it.
    for amount in [75.0, 10.0] {
        let out = g
            .run(
                "refund",
                "issue-refund",
                json!({"order-id": "ord_1001", "amount-usd": amount}),
                task("t1"),
            )
            .await;
        assert_eq!(
            kind(&out),
            Some(ErrorKind::ApprovalRequired),
            "{amount}: {:?}",
            out.error
        );
        let msg = out.error.unwrap().message;
        assert!(msg.contains("deny_tools[0]"), "{msg}");
        assert_eq!(out.usage.fuel, 0, "the tool did not run");
    }
    // A tool the policy does not name is denied by default.
    let other = g
        .run("text-tools", "hello", json!({"name": "x"}), task("t1"))
        .await;
    assert_eq!(kind(&other), Some(ErrorKind::PolicyDenied));
    assert!(other.error.unwrap().message.contains("default deny"));
    // Every decision is recorded with its rule.
    let records = g.records("_").await;
    assert_eq!(records.len(), 5);
    assert_eq!(
        records[0]["decision"]["rule"],
        "test.yaml: policy.allow_tools[0] (lookup_order)"
    );
    assert_eq!(records[2]["decision"]["effect"], "approval_required");
    assert_eq!(records[4]["decision"]["effect"], "policy_denied");
    // Redaction: the essay's fields are gone from the stored result, at depth.
    let stored = &records[0]["result"]["ok"];
    assert_eq!(stored["email"], "[REDACTED]");
    assert_eq!(stored["address"], "[REDACTED]");
    assert_eq!(stored["card-last4"], "[REDACTED]");
    assert_eq!(stored["id"], "ord_1001");
    assert_eq!(records[0]["result_sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_thresholds_apply_to_allowed_tools() {
    let g = gated(
        r#"
workflow: refunds
policy:
  allow_tools: [lookup_order, issue_refund]
approval:
  required_for:
    - tool: issue-refund
      threshold_usd: 50
"#,
    )
    .await;
    let small = g
        .run(
            "refund",
            "issue-refund",
            json!({"order-id": "ord_1001", "amount-usd": 10}),
            task("a"),
        )
        .await;
    assert!(small.ok, "{:?}", small.error);
    let big = g
        .run(
            "refund",
            "issue-refund",
            json!({"order-id": "ord_1004", "amount-usd": 50.01}),
            task("a"),
        )
        .await;
    assert_eq!(kind(&big), Some(ErrorKind::ApprovalRequired));
    assert!(
        big.error
            .unwrap()
            .message
            .contains("approval.required_for[0]")
    );
    let exactly = g
        .run(
            "refund",
            "issue-refund",
            json!({"order-id": "ord_1004", "amount-usd": 50}),
            task("a"),
        )
        .await;
    assert!(exactly.ok, "the threshold itself needs no approval");
}

#[tokio::test(flavor = "multi_thread")]
async fn amount_field_finds_nested_amounts_and_missing_amounts_escalate() {
    let g = gated(
        r#"
workflow: w
policy:
  allow_tools: [echo-customer, describe]
approval:
  required_for:
    - tool: describe
      threshold_usd: 5
      amount_field: /limit
    - tool: echo-customer
      threshold_usd: 1
      amount_field: c.nickname
"#,
    )
    .await;
    let c = json!({"name": "A", "tier": "pro", "tags": []});
    let ok = g
        .run(
            "types",
            "describe",
            json!({"c": c, "limit": 3, "verbose": false}),
            task("x"),
        )
        .await;
    assert!(ok.ok, "{:?}", ok.error);
    let over = g
        .run(
            "types",
            "describe",
            json!({"c": c, "limit": 6, "verbose": false}),
            task("x"),
        )
        .await;
    assert_eq!(kind(&over), Some(ErrorKind::ApprovalRequired));
    // No amount where the rule looks: a human decides.
    let missing = g
        .run("types", "echo-customer", json!({"c": c}), task("x"))
        .await;
    assert_eq!(kind(&missing), Some(ErrorKind::ApprovalRequired));
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_tools_without_approval_is_a_hard_deny() {
    let g = gated(
        "workflow: w\npolicy:\n  allow_tools: [lookup_order]\n  deny_tools: [lookup_order]\n",
    )
    .await;
    let out = g
        .run(
            "refund",
            "lookup-order",
            json!({"order-id": "ord_1001"}),
            task("x"),
        )
        .await;
    assert_eq!(kind(&out), Some(ErrorKind::PolicyDenied));
    assert!(
        out.error
            .unwrap()
            .message
            .contains("policy.deny_tools[0] (lookup_order)")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_add_raw_cedar_on_principal_tool_and_arguments() {
    let g = gated(
        r#"
workflow: w
policy:
  allow_tools: [create_refund_draft, lookup_order]
cedar: |
  @id("big-drafts")
  forbid (principal, action == Action::"invoke", resource)
  when { context.function == "create_refund_draft" && context.args.amount_usd.greaterThan(decimal("50.0")) };
  @id("acme-no-lookups")
  forbid (principal in Tenant::"acme", action, resource == Function::"refund/lookup_order");
"#,
    )
    .await;
    let draft = |amount: f64| json!({"order-id": "ord_1004", "amount-usd": amount, "reason": {"other": "x"}});
    let small = g
        .run("refund", "create-refund-draft", draft(40.5), task("x"))
        .await;
    assert!(small.ok, "{:?}", small.error);
    let big = g
        .run("refund", "create-refund-draft", draft(60.25), task("x"))
        .await;
    assert_eq!(kind(&big), Some(ErrorKind::PolicyDenied));
    assert!(
        big.error
            .unwrap()
            .message
            .contains("cedar policy `big-drafts`")
    );
    let lookup = async |tenant: Option<&str>| {
        let context = CallContext {
            tenant: toolhost::ids::TenantId::or_default(tenant),
            ..task("y")
        };
        g.run(
            "refund",
            "lookup-order",
            json!({"order-id": "ord_1001"}),
            context,
        )
        .await
    };
    let acme = lookup(Some("acme")).await;
    assert_eq!(kind(&acme), Some(ErrorKind::PolicyDenied));
    assert!(acme.error.unwrap().message.contains("acme-no-lookups"));
    assert!(lookup(None).await.ok);
    // Decisions for one caller and function in two tenants stay apart
    // (the policy keeps the entities of recent calls).
    let again = lookup(Some("acme")).await;
    assert_eq!(kind(&again), Some(ErrorKind::PolicyDenied));
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_and_workflows_get_their_own_documents() {
    let g = gated(
        r#"
workflow: support
policy:
  allow_tools: [lookup_order]
---
workflow: support
tenant: acme
policy:
  allow_tools: [lookup_order, create_refund_draft]
---
workflow: "*"
policy:
  allow_tools: [hello]
"#,
    )
    .await;
    let ctx = |tenant: Option<&str>, wf: Option<&str>| CallContext {
        tenant: toolhost::ids::TenantId::or_default(tenant),
        workflow: wf.map(Into::into),
        ..task("t")
    };
    let draft = json!({"order-id": "ord_1001", "amount-usd": 1.0, "reason": "damaged"});
    let acme = g
        .run(
            "refund",
            "create-refund-draft",
            draft.clone(),
            ctx(Some("acme"), Some("support")),
        )
        .await;
    assert!(acme.ok, "{:?}", acme.error);
    let globex = g
        .run(
            "refund",
            "create-refund-draft",
            draft,
            ctx(Some("globex"), Some("support")),
        )
        .await;
    assert_eq!(kind(&globex), Some(ErrorKind::PolicyDenied));
    let hello = g
        .run(
            "text-tools",
            "hello",
            json!({"name": "a"}),
            ctx(None, Some("anything")),
        )
        .await;
    assert!(hello.ok, "the `*` document governs other workflows");
    let lookup = g
        .run(
            "refund",
            "lookup-order",
            json!({"order-id": "ord_1001"}),
            ctx(None, Some("other")),
        )
        .await;
    assert_eq!(kind(&lookup), Some(ErrorKind::PolicyDenied));
    // Audit chains are per tenant.
    assert_eq!(g.records("acme").await.len(), 1);
    assert_eq!(g.records("globex").await.len(), 1);
}

#[test]
fn invalid_policies_name_file_line_and_field() {
    let cases = [
        (
            "workflow: w\nbudget:\n  max_tool_calls: four\n",
            "test.yaml:3:",
            "budget.max_tool_calls",
        ),
        (
            "workflow: w\npolicy:\n  alow_tools: [x]\n",
            "test.yaml:3:",
            "unknown field `alow_tools`",
        ),
        (
            "workflow: w\ntools:\n  t:\n    http:\n      - url: api.example.com\n",
            "test.yaml:5:",
            "tools.t.http[0].url",
        ),
        (
            "workflow: w\napproval:\n  required_for:\n    - tool: x\n      threshold_usd: -5\n",
            "test.yaml:",
            "approval.required_for[0].threshold_usd: -5 is not a non-negative amount",
        ),
        ("budget: {}\n", "test.yaml", "missing field `workflow`"),
        (
            "workflow: w\ncedar: |\n  permit(principal, action, resource) when { nonsense };\n",
            "test.yaml:",
            "cedar",
        ),
        (
            "workflow: w\n---\nworkflow: w\n",
            "test.yaml",
            "two documents govern workflow `w`",
        ),
        ("workflow: [\n", "test.yaml:", ""),
    ];
    for (text, at, what) in cases {
        let err = match Policy::parse("test.yaml", text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        };
        assert_eq!(err.kind, ErrorKind::InvalidPolicy);
        assert!(err.message.starts_with(at), "{text:?}: {}", err.message);
        assert!(err.message.contains(what), "{text:?}: {}", err.message);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_max_tool_calls_run_under_concurrency() {
    let g = Arc::new(gated(SEED).await);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            g.run(
                "refund",
                "lookup-order",
                json!({"order-id": "ord_1001"}),
                task("race"),
            )
            .await
        }));
    }
    let mut ran = 0;
    for t in tasks {
        let out = t.await.unwrap();
        if out.ok {
            ran += 1;
        } else {
            assert_eq!(
                kind(&out),
                Some(ErrorKind::BudgetExceeded),
                "{:?}",
                out.error
            );
            let msg = out.error.unwrap().message;
            assert!(msg.contains("max_tool_calls is 4"), "{msg}");
            assert!(msg.contains("remaining 0"), "{msg}");
        }
    }
    assert_eq!(ran, 4);
    let usage = g.gate.ledger().usage(&"task:_/race".into()).await.unwrap();
    let calls = usage
        .iter()
        .find(|u| u.metric == toolhost::budget::Metric::ToolCalls)
        .unwrap();
    assert_eq!(
        (calls.used, calls.reserved),
        (4, 0),
        "settled, nothing left reserved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cost_and_token_budgets_are_enforced() {
    let g = gated(
        r#"
workflow: w
budget:
  max_cost_usd: 0.025
  max_input_tokens: 100
policy:
  allow_tools: [hello]
tools:
  hello:
    price: {per_call_usd: 0.01}
"#,
    )
    .await;
    let run = || g.run("text-tools", "hello", json!({"name": "a"}), task("c"));
    assert!(run().await.ok);
    assert!(run().await.ok);
    let third = run().await;
    assert_eq!(kind(&third), Some(ErrorKind::BudgetExceeded));
    assert!(third.error.unwrap().message.contains("max_cost_usd"));

    let ctx = task("tok");
    assert!(
        g.run("text-tools", "hello", json!({"name": "a"}), ctx.clone())
            .await
            .ok
    );
    let over = g.gate.report_tokens(&ctx, 150, 10).await.unwrap();
    assert_eq!(over.len(), 1);
    assert!(over[0].message.contains("max_input_tokens"));
    let after = g
        .run("text-tools", "hello", json!({"name": "a"}), ctx)
        .await;
    assert_eq!(kind(&after), Some(ErrorKind::BudgetExceeded));
    assert!(
        after
            .error
            .unwrap()
            .message
            .contains("max_input_tokens is 100; used 150")
    );
}

fn http_policy(port: u16, extra: &str) -> String {
    format!(
        r#"
workflow: w
logging:
  redact_fields: [token]
policy:
  allow_tools: [get-json, get-many, post-json, get-with-header]
tools:
  http-json:
    allow_cidrs: [127.0.0.0/8]
    limits: {{max_outbound_calls: 2}}
    http:
      - url: http://localhost:{port}
        methods: [GET]
        headers: {{Authorization: "Bearer {{{{secret:shop_token}}}}"}}
        max_response_bytes: 1MiB
        timeout: 500ms
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_granted_mediated_and_audited() {
    let server = TestServer::start().await;
    let g = gated(&http_policy(server.port, "")).await;
    let url = format!("http://localhost:{}/json?token=abc", server.port);
    let out = g
        .run("http-json", "get-json", json!({"url": url}), task("h"))
        .await;
    assert!(out.ok, "{out:?}");
    let resp = &out.result.as_ref().unwrap()["ok"];
    assert_eq!(resp["status"], 200);
    assert_eq!(resp["body"], r#"{"orders": 3}"#);
    // The secret went on the wire at the host boundary...
    let seen = server.requests.lock().unwrap().clone();
    assert!(
        seen[0].contains(&format!("authorization: Bearer {SECRET}")),
        "{}",
        seen[0]
    );
    // ...and appears nowhere the guest or the operator's records can see.
    assert!(!serde_json::to_string(&out).unwrap().contains(SECRET));
    let records = g.records("_").await;
    let outbound = records.iter().find(|r| r["type"] == "outbound").unwrap();
    assert_eq!(outbound["method"], "GET");
    assert_eq!(outbound["scheme"], "http");
    assert_eq!(outbound["host"], "localhost");
    assert_eq!(outbound["port"], server.port);
    assert_eq!(outbound["path"], "/json", "no query string");
    assert_eq!(outbound["status"], 200);
    assert_eq!(outbound["response_bytes"], 13);
    assert_eq!(outbound["allowed"], true);
    assert!(outbound["latency_ms"].is_u64());
    assert!(outbound["rule"].as_str().unwrap().starts_with("http[0]"));
    assert_no_secret_in(&g.dir);
}

fn assert_no_secret_in(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret leaked into {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_denials() {
    let server = TestServer::start().await;
    let g = gated(&http_policy(server.port, "")).await;
    let get = |url: String| g.run("http-json", "get-json", json!({"url": url}), task("d"));
    // Not on the allowlist: another port, another host, another scheme.
    for url in [
        format!("http://localhost:{}/json", server.port + 1),
        format!("http://127.0.0.2:{}/json", server.port),
        format!("https://localhost:{}/json", server.port),
    ] {
        let out = get(url.clone()).await;
        let err = out.result.unwrap()["err"].as_str().unwrap().to_string();
        assert!(err.contains("HttpRequestDenied"), "{url}: {err}");
        assert!(!out.outbound[0].allowed);
        assert!(out.outbound[0].rule.starts_with("default deny"));
    }
    // A method outside the grant.
    let post = g
        .run(
            "http-json",
            "post-json",
            json!({"url": format!("http://localhost:{}/json", server.port), "body": "{}"}),
            task("d"),
        )
        .await;
    assert!(
        post.result.unwrap()["err"]
            .as_str()
            .unwrap()
            .contains("HttpRequestDenied")
    );
    assert!(
        server.requests.lock().unwrap().is_empty(),
        "nothing reached the server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_name_resolving_to_loopback_is_refused_without_a_cidr_grant() {
    let server = TestServer::start().await;
    let policy = http_policy(server.port, "").replace("    allow_cidrs: [127.0.0.0/8]\n", "");
    let g = gated(&policy).await;
    let out = g
        .run(
            "http-json",
            "get-json",
            json!({"url": format!("http://localhost:{}/json", server.port)}),
            task("s"),
        )
        .await;
    let err = out.result.unwrap()["err"].as_str().unwrap().to_string();
    assert!(err.contains("DestinationIpProhibited"), "{err}");
    let event = &out.outbound[0];
    assert!(!event.allowed);
    assert!(event.rule.contains("loopback"), "{}", event.rule);
    assert!(server.requests.lock().unwrap().is_empty());
    // The cloud metadata address, as an IPv4-mapped IPv6 literal.
    let policy = "workflow: w\npolicy:\n  allow_tools: [get-json]\ntools:\n  get-json:\n    http:\n      - url: \"http://*:80\"\n";
    let g = gated(policy).await;
    let out = g
        .run(
            "http-json",
            "get-json",
            json!({"url": "http://[::ffff:169.254.169.254]/latest/meta-data"}),
            task("m"),
        )
        .await;
    assert!(
        out.result.unwrap()["err"]
            .as_str()
            .unwrap()
            .contains("DestinationIpProhibited")
    );
    assert!(
        out.outbound[0].rule.contains("cloud metadata"),
        "{}",
        out.outbound[0].rule
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn response_size_slowness_and_call_count_are_capped() {
    let server = TestServer::start().await;
    let g = gated(&http_policy(server.port, "")).await;
    let base = format!("http://localhost:{}", server.port);
    let big = g
        .run(
            "http-json",
            "get-json",
            json!({"url": format!("{base}/big")}),
            task("c"),
        )
        .await;
    let err = big.result.unwrap()["err"].as_str().unwrap().to_string();
    assert!(
        err.contains("HttpResponseBodySize") || err.contains("1048576"),
        "{err}"
    );
    assert!(
        big.outbound[0]
            .result
            .error
            .as_deref()
            .unwrap()
            .contains("cap")
    );

    let started = std::time::Instant::now();
    let slow = g
        .run(
            "http-json",
            "get-json",
            json!({"url": format!("{base}/slow")}),
            task("c"),
        )
        .await;
    assert!(slow.result.unwrap().get("err").is_some());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the 500ms grant timeout applies"
    );

    let many = g
        .run(
            "http-json",
            "get-many",
            json!({"urls": [format!("{base}/json"), format!("{base}/json"), format!("{base}/json")]}),
            task("c"),
        )
        .await;
    let results = many.result.unwrap();
    assert_eq!(results[0], json!({"ok": 200}));
    assert_eq!(results[1], json!({"ok": 200}));
    assert!(
        results[2]["err"]
            .as_str()
            .unwrap()
            .contains("HttpRequestDenied")
    );
    assert!(many.outbound[2].rule.contains("at most 2 outbound calls"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_files_and_env_are_granted_only_as_written() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = tempdir("files");
    std::fs::write(data.join("report.txt"), "quarterly numbers").unwrap();
    let rw = tempdir("rw");
    let policy = format!(
        r#"
workflow: w
policy:
  allow_tools: [tcp-connect, read-file, write-file, read-env]
tools:
  hostile:
    sockets: ["127.0.0.1:{port}"]
    files:
      - {{host: "{}", guest: /data}}
      - {{host: "{}", guest: /out, mode: rw}}
    env:
      REGION: eu-west-1
      API_KEY: "{{{{secret:shop_token}}}}"
"#,
        data.display(),
        rw.display()
    );
    let g = gated(&policy).await;
    let run = |f: &'static str, args: Value| g.run("hostile", f, args, task("g"));
    let ok = run("tcp-connect", json!({"addr": format!("127.0.0.1:{port}")})).await;
    assert!(ok.result.as_ref().unwrap().get("ok").is_some(), "{ok:?}");
    let denied = run(
        "tcp-connect",
        json!({"addr": format!("127.0.0.1:{}", port + 1)}),
    )
    .await;
    assert!(denied.result.unwrap().get("err").is_some());
    assert!(
        denied
            .outbound
            .iter()
            .any(|e| !e.allowed && e.rule.starts_with("default deny"))
    );

    let read = run("read-file", json!({"path": "/data/report.txt"})).await;
    assert_eq!(read.result, Some(json!({"ok": "quarterly numbers"})));
    let outside = run("read-file", json!({"path": "/etc/hostname"})).await;
    assert!(outside.result.unwrap().get("err").is_some());
    let ro = run(
        "write-file",
        json!({"path": "/data/new.txt", "contents": "x"}),
    )
    .await;
    assert!(
        ro.result.unwrap().get("err").is_some(),
        "read-only stays read-only"
    );
    assert!(!data.join("new.txt").exists());
    let w = run(
        "write-file",
        json!({"path": "/out/new.txt", "contents": "written"}),
    )
    .await;
    assert_eq!(w.result, Some(json!({"ok": null})));
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).unwrap(),
        "written"
    );

    let env = run("read-env", json!({})).await.result.unwrap();
    let mut env: Vec<(String, String)> = serde_json::from_value(env).unwrap();
    env.sort();
    // The env secret went to the guest (the operator granted it): the guest
    // returned exactly its value, which the host scrubbed from the answer
    // (a plain value is left alone) and from everything it stored.
    assert_eq!(
        env,
        vec![
            ("API_KEY".into(), "[SECRET]".into()),
            ("REGION".into(), "eu-west-1".into())
        ]
    );
    assert_no_secret_in(&g.dir);
    let records = g.records("_").await;
    let env_record = records
        .iter()
        .find(|r| r["function"] == "read-env")
        .unwrap();
    assert!(env_record["result"].to_string().contains("[SECRET]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redaction_applies_at_any_depth_in_args_and_results() {
    let g = gated("workflow: w\nlogging:\n  redact_fields: [name, tags]\npolicy:\n  allow_tools: [echo-customer]\n").await;
    let c = json!({"name": "Ada Lovelace", "tier": "pro", "tags": ["vip"], "nickname": "ada"});
    let out = g
        .run("types", "echo-customer", json!({"c": c}), task("r"))
        .await;
    assert!(out.ok);
    let records = g.records("_").await;
    let r = &records[0];
    assert_eq!(r["args"]["c"]["name"], "[REDACTED]");
    assert_eq!(r["args"]["c"]["tags"], "[REDACTED]");
    assert_eq!(r["args"]["c"]["nickname"], "ada");
    assert_eq!(r["result"]["name"], "[REDACTED]");
    // The hash is of the real arguments, so the record still proves what ran.
    assert_eq!(
        r["args_sha256"],
        toolhost::audit::canonical::fingerprint(&json!({"c": c}))
    );
    let stored = std::fs::read(g.dir.join("toolhost.db")).unwrap();
    let wal = std::fs::read(g.dir.join("toolhost.db-wal")).unwrap_or_default();
    for bytes in [stored, wal] {
        assert!(!bytes.windows(12).any(|w| w == b"Ada Lovelace"));
    }
}

#[test]
fn the_policy_file_in_the_repo_is_the_essays_example() {
    let ours = std::fs::read_to_string(
        guest("refund")
            .parent()
            .unwrap()
            .join("../../../../policies/refund-request.yaml"),
    )
    .unwrap_or_else(|_| SEED.to_string());
    for line in [
        "workflow: \"refund_request\"",
        "max_tool_calls: 4",
        "- \"issue_refund\" # requires approval",
        "threshold_usd: 50",
        "retain_days: 90",
        "redact_fields: [\"email\", \"address\", \"card_last4\"]",
    ] {
        assert!(ours.contains(line), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_that_never_run_are_audited_too() {
    let g = gated(SEED).await;
    let bad = g
        .run("refund", "lookup-order", json!({"order-id": 7}), task("x"))
        .await;
    assert_eq!(kind(&bad), Some(ErrorKind::InvalidArgs));
    let missing = g
        .run("refund", "no-such-function", json!({}), task("x"))
        .await;
    assert_eq!(kind(&missing), Some(ErrorKind::UnknownFunction));
    let records = g.records("_").await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["decision"]["effect"], "invalid_args");
    assert_eq!(records[0]["invocation_id"], json!(bad.invocation_id));
    assert_eq!(records[1]["function"], "no-such-function");
    assert_eq!(records[1]["decision"]["effect"], "unknown_function");
    // They cost nothing.
    assert!(
        g.gate
            .ledger()
            .usage(&"task:_/x".into())
            .await
            .unwrap()
            .iter()
            .all(|u| u.used == 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_names_a_secret_and_the_host_fills_it_in() {
    let server = TestServer::start().await;
    let url = format!("http://localhost:{}/json", server.port);
    let granted = http_policy(server.port, "        secrets: [shop_token]");
    let g = gated(&granted).await;
    let args = json!({"url": url, "name": "x-api-key", "value": "key {{secret:shop_token}}"});
    let out = g
        .run("http-json", "get-with-header", args.clone(), task("s"))
        .await;
    assert_eq!(out.result.as_ref().unwrap()["ok"]["status"], 200, "{out:?}");
    let seen = server.requests.lock().unwrap().clone();
    assert!(
        seen[0].contains(&format!("x-api-key: key {SECRET}")),
        "{}",
        seen[0]
    );
    assert!(!serde_json::to_string(&out).unwrap().contains(SECRET));
    assert_no_secret_in(&g.dir);

    // Without the grant's `secrets`, naming one denies the request.
    let g = gated(&http_policy(server.port, "")).await;
    let out = g.run("http-json", "get-with-header", args, task("s")).await;
    assert!(
        out.result.unwrap()["err"]
            .as_str()
            .unwrap()
            .contains("HttpRequestDenied")
    );
    assert!(!out.outbound[0].allowed);
    assert!(
        out.outbound[0].rule.contains("shop_token"),
        "{}",
        out.outbound[0].rule
    );
    assert_eq!(
        server.requests.lock().unwrap().len(),
        1,
        "the second request never left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_policy_runs_text_tools_anywhere_and_refunds_as_the_essay_says() {
    let text =
        std::fs::read_to_string(common::repo_root().join("policies/quickstart.yaml")).unwrap();
    let g = gated(&text).await;
    // No workflow: the catch-all document, where the text tools run.
    let out = g
        .run("text-tools", "hello", json!({"name": "a"}), task("q"))
        .await;
    assert!(out.ok, "{:?}", out.error);
    // The refund workflow is the essay's.
    let refund = CallContext {
        workflow: Some("refund_request".into()),
        ..task("q")
    };
    let out = g
        .run(
            "refund",
            "lookup-order",
            json!({"order-id": "ord_1001"}),
            refund.clone(),
        )
        .await;
    assert!(out.ok, "{:?}", out.error);
    let out = g
        .run(
            "refund",
            "issue-refund",
            json!({"order-id": "ord_1001", "amount-usd": 75.0}),
            refund.clone(),
        )
        .await;
    assert_eq!(out.error_kind(), Some(ErrorKind::ApprovalRequired));
    // A tool that is not registered (as with `host run`) cannot be run by an
    // approver later: refused, not parked.
    assert_eq!(out.status, toolhost::invoke::Status::Refused);
    assert!(out.approval_id.is_none());
    let out = g
        .run("text-tools", "hello", json!({"name": "a"}), refund)
        .await;
    assert_eq!(out.error_kind(), Some(ErrorKind::PolicyDenied));
}
