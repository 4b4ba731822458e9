//! MCP end to end: rmcp's own client against a spawned `host serve` (`/mcp`,
//! Streamable HTTP, both revisions) and `host mcp` (stdio), and raw HTTP for
//! what a well-behaved client never sends (bad keys, origins, headers,
//! versions).

mod common;

use common::serve::{Client, Server, data_dir_with, key, s};
use rmcp::model::{CallToolRequestParams, CallToolResult, ProtocolVersion, RequestMetaObject};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The tests' policy: text-tools' `slugify` is denied; `issue_refund`
/// always waits for a human; three tool calls per task.
const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 3
policy:
  allow_tools: [text-tools, hostile, lookup_order, create_refund_draft, mcp-fixtures]
  deny_tools: [issue_refund, text-tools/slugify]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
tools:
  hostile:
    limits: {timeout: 1s, fuel: 100000000}
  hello:
    cache: {ttl: 10m}
"#;

type McpClient = RunningService<RoleClient, ()>;

/// rmcp's client over Streamable HTTP with an API key, speaking `version`
/// (2026-07-28: `server/discover`, stateless; earlier: `initialize`).
async fn connect(server: &Server, key: &str, version: ProtocolVersion) -> McpClient {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url))
            .auth_header(key.to_string()),
    );
    let lifecycle = if version.has_initialize() {
        ClientLifecycleMode::Initialize
    } else {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![version.clone()],
        }
    };
    let client = ()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .unwrap_or_else(|e| panic!("connecting ({version}): {e}; log:\n{}", server.log()));
    assert_eq!(
        client
            .peer()
            .peer_info()
            .map(|i| i.protocol_version.clone()),
        Some(version),
        "the negotiated revision"
    );
    client
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    CallToolRequestParams::new(name.to_string()).with_arguments(args)
}

fn with_meta(mut params: CallToolRequestParams, meta: Value) -> CallToolRequestParams {
    let Value::Object(meta) = meta else { panic!() };
    let mut m = RequestMetaObject::new();
    for (k, v) in meta {
        m.0.0.insert(k, v);
    }
    params.meta = Some(m);
    params
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The invocation facts every result carries.
fn facts(r: &CallToolResult) -> Value {
    r.meta
        .as_ref()
        .and_then(|m| m.0.get("io.toolhost/invocation"))
        .cloned()
        .unwrap_or_else(|| panic!("no invocation facts: {r:?}"))
}

fn setup(tag: &str) -> std::path::PathBuf {
    data_dir_with(
        tag,
        POLICY,
        &[
            ("text-tools", "text_tools"),
            ("refund", "refund"),
            ("hostile", "hostile"),
            ("mcp-fixtures", "mcp_fixtures"),
        ],
    )
}

#[tokio::test]
async fn list_and_call_over_both_revisions_through_the_gate() {
    let dir = setup("mcp-basic");
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let api = Client::new(&server, Some(&k));

    for version in [ProtocolVersion::V_2026_07_28, ProtocolVersion::V_2025_11_25] {
        let client = connect(&server, &k, version.clone()).await;
        let tools = client.peer().list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        // One MCP tool per function, named as /v1/tools?format=mcp names
        // them, in a stable (sorted) order.
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{version}");
        for n in [
            "text-tools__hello",
            "text-tools__word-count",
            "refund__issue-refund",
            "hostile__spin",
        ] {
            assert!(names.contains(&n), "{version}: {n} in {names:?}");
        }
        let (_, v1) = api.get("/v1/tools?format=mcp").await;
        let v1_names: Vec<&str> = v1
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(sorted, {
            let mut v = v1_names.clone();
            v.sort();
            v
        });
        let get = |n: &str| tools.iter().find(|t| t.name == n).unwrap();
        // Annotations the policy vouches for.
        let refund = get("refund__issue-refund").annotations.clone().unwrap();
        assert_eq!(refund.read_only_hint, Some(false), "needs approval");
        assert_eq!(refund.destructive_hint, Some(true));
        let hello = get("text-tools__hello");
        let a = hello.annotations.clone().unwrap();
        assert_eq!(a.read_only_hint, Some(true), "no grants: changes nothing");
        assert_eq!(a.open_world_hint, Some(false));
        assert_eq!(a.idempotent_hint, Some(true), "cached by the policy");
        assert_eq!(hello.input_schema["required"], json!(["name"]));
        let wc = get("text-tools__word-count");
        assert_eq!(
            wc.output_schema.as_ref().unwrap()["type"],
            "object",
            "{version}"
        );
        // A string result: an outputSchema on 2026-07-28 only (earlier
        // revisions allow objects only).
        assert_eq!(
            hello.output_schema.is_some(),
            version == ProtocolVersion::V_2026_07_28,
            "{version}"
        );

        let r = client
            .call_tool(call("text-tools__word-count", json!({"text": "a b\nc"})))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(false), "{r:?}");
        assert_eq!(r.structured_content.as_ref().unwrap()["words"], 3);
        assert_eq!(
            serde_json::from_str::<Value>(&text(&r)).unwrap()["lines"],
            2
        );
        // The invocation is a normal record, transport noted.
        let id = facts(&r)["invocation_id"].as_str().unwrap().to_string();
        let (status, record) = api.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["status"], "ok");
        assert_eq!(record["transport"], "mcp");
        assert_eq!(record["tool"], "text-tools");
        assert_eq!(record["result"]["words"], 3);
        assert!(record["principal"].as_str().unwrap().len() > 4);

        // A string result.
        let r = client
            .call_tool(call("text-tools__hello", json!({"name": "mcp"})))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(false), "{r:?}");
        assert!(text(&r).contains("Hello, mcp!"), "{r:?}");
        // The policy caches hello: the same call again is a cache hit.
        let again = client
            .call_tool(call("text-tools__hello", json!({"name": "mcp"})))
            .await
            .unwrap();
        assert_eq!(facts(&again)["cached"], true, "{again:?}");
        assert_eq!(text(&again), text(&r));
        // An idempotency key in _meta: the same request replays its answer
        // (nothing runs again); another request with that key is refused.
        let key = format!("k-{version}");
        let keyed = |text: &str| {
            with_meta(
                call("text-tools__word-count", json!({"text": text})),
                json!({"io.toolhost/idempotency_key": key}),
            )
        };
        let first = client.call_tool(keyed("one two")).await.unwrap();
        let second = client.call_tool(keyed("one two")).await.unwrap();
        assert_eq!(
            facts(&first)["invocation_id"],
            facts(&second)["invocation_id"],
            "replayed"
        );
        assert_eq!(second.structured_content, first.structured_content);
        let other = client.call_tool(keyed("three")).await.unwrap();
        assert_eq!(other.is_error, Some(true), "{other:?}");
        assert!(
            text(&other).starts_with("idempotency_key_reused: "),
            "{}",
            text(&other)
        );
        client.cancel().await.unwrap();
    }
    // The log has an access line per MCP request, and not rmcp's
    // per-request service lifecycle (stateless: it "starts" and "finishes"
    // a service for every call, at info, with the client's whole Debug
    // form).
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("path=/mcp") && l.contains("status=200")),
        "{log}"
    );
    assert!(!log.contains("rmcp::service"), "{log}");
    server.stop();
}

#[tokio::test]
async fn refusals_failures_and_approvals_are_error_results_naming_the_kind() {
    let dir = setup("mcp-refusals");
    let k = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &[]);
    let api = Client::new(&server, Some(&k));
    let client = connect(&server, &k, ProtocolVersion::V_2026_07_28).await;

    let expect = |r: &CallToolResult, kind: &str| {
        assert_eq!(r.is_error, Some(true), "{kind}: {r:?}");
        let t = text(r);
        assert!(t.starts_with(&format!("{kind}: ")), "{kind}: {t}");
        assert!(t.contains("What to do: "), "{t}");
        assert_eq!(facts(r)["kind"], kind, "{r:?}");
    };
    // Invalid arguments name the field.
    let r = client
        .call_tool(call("text-tools__hello", json!({"name": 5})))
        .await
        .unwrap();
    expect(&r, "invalid_args");
    assert!(text(&r).contains("args.name"), "{}", text(&r));
    // The policy.
    let r = client
        .call_tool(call("text-tools__slugify", json!({"text": "A B"})))
        .await
        .unwrap();
    expect(&r, "policy_denied");
    // A sandbox failure.
    let r = client
        .call_tool(call("hostile__spin", json!({})))
        .await
        .unwrap();
    expect(&r, "fuel_exhausted");
    assert_eq!(facts(&r)["status"], "error");
    // The tool's own WIT `err`: an error result with the value.
    let r = client
        .call_tool(call("refund__lookup-order", json!({"order-id": "nope"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).starts_with("tool_error: "), "{}", text(&r));
    assert!(r.structured_content.as_ref().unwrap()["err"].is_string());
    // The budget: three calls per task (the task from `_meta`), then
    // budget_exceeded naming the limit.
    for i in 0..3 {
        let r = client
            .call_tool(with_meta(
                call("text-tools__word-count", json!({"text": "x"})),
                json!({"io.toolhost/task_id": "t1"}),
            ))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(false), "call {i}: {r:?}");
    }
    let r = client
        .call_tool(with_meta(
            call("text-tools__word-count", json!({"text": "x"})),
            json!({"io.toolhost/task_id": "t1"}),
        ))
        .await
        .unwrap();
    expect(&r, "budget_exceeded");
    assert!(text(&r).contains("max_tool_calls"), "{}", text(&r));
    let (_, usage) = api.get("/v1/tasks/t1/usage").await;
    assert!(usage.to_string().contains("tool_calls"), "{usage}");
    // A tool that does not exist (or another tenant's): a protocol error.
    let e = client
        .call_tool(call("nope__hello", json!({})))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("-32602") || e.to_string().contains("Unknown tool"),
        "{e}"
    );
    let e = client
        .call_tool(call("no-separator", json!({})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Unknown tool"), "{e}");

    // A call that needs a human: it does not run; the result names the
    // approval and where the outcome will be.
    let r = client
        .call_tool(call(
            "refund__issue-refund",
            json!({"order-id": "ord_1001", "amount-usd": 10.0}),
        ))
        .await
        .unwrap();
    expect(&r, "approval_required");
    let f = facts(&r);
    assert_eq!(f["status"], "pending_approval");
    let approval = f["approval_id"].as_str().unwrap().to_string();
    let id = f["invocation_id"].as_str().unwrap().to_string();
    let t = text(&r);
    assert!(t.contains(&approval), "{t}");
    assert!(t.contains(&format!("GET /v1/invocations/{id}")), "{t}");
    assert!(t.contains("has NOT run"), "{t}");
    let (_, record) = api.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record["status"], "pending_approval");
    // A human approves; the call runs once; the record has the outcome.
    let decider = Client::new(&server, Some(&approver));
    let (status, d) = decider
        .post(
            &format!("/v1/approvals/{approval}/approve"),
            json!({"reason": "ok"}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let (_, record) = api.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record["status"], "ok", "{record}");
    client.cancel().await.unwrap();
    server.stop();
}

/// Raw JSON-RPC over HTTP, for what rmcp's client never sends.
struct Raw {
    http: reqwest::Client,
    url: String,
}

impl Raw {
    async fn post(
        &self,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut r = self
            .http
            .post(format!("{}/mcp", self.url))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        (status, h, resp.text().await.unwrap())
    }
}

fn discover_meta(version: &str) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

#[tokio::test]
async fn http_guards_keys_origins_headers_and_versions() {
    let dir = setup("mcp-http");
    common::serve::register(&dir, "globex", "text-tools", "text_tools");
    let k = key(&dir, "acme", &["invoke"]);
    let auditor = key(&dir, "acme", &["audit"]);
    let other = key(&dir, "globex", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let bearer = format!("Bearer {k}");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": discover_meta("2026-07-28")}});
    let v = ("mcp-protocol-version", "2026-07-28");
    let m = ("mcp-method", "tools/list");

    // A well-formed stateless request works.
    let (status, _, body) = raw
        .post(&[("authorization", &bearer), v, m], list.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"]["resultType"], "complete", "{answer}");
    assert_eq!(answer["result"]["ttlMs"], 0);
    assert_eq!(answer["result"]["cacheScope"], "private");

    // No key, a bad key, a key in the query string: 401 with the
    // protected-resource metadata's address.
    for (headers, url_suffix) in [
        (vec![], ""),
        (vec![("authorization", "Bearer thk_nope_nope")], ""),
        (vec![], "?api_key=KEY"),
    ] {
        let mut h = headers.clone();
        h.extend([v, m]);
        let r = raw
            .http
            .post(format!(
                "{}/mcp{}",
                server.url,
                url_suffix.replace("KEY", &k)
            ))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        let r = h.iter().fold(r, |r, (a, b)| r.header(*a, *b));
        let resp = r.body(list.to_string()).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer resource_metadata=\""),
            "{challenge}"
        );
        assert!(
            challenge.contains("/.well-known/oauth-protected-resource/mcp"),
            "{challenge}"
        );
    }
    let (status, meta) = Client::new(&server, None)
        .get("/.well-known/oauth-protected-resource/mcp")
        .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["resource"], format!("{}/mcp", server.url));
    assert_eq!(meta["bearer_methods_supported"], json!(["header"]));
    // A key without the invoke role: 403.
    let (status, _, body) = raw
        .post(
            &[("authorization", &format!("Bearer {auditor}")), v, m],
            list.clone(),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Another tenant sees only its own tools and cannot call acme's.
    let (status, _, body) = raw
        .post(
            &[("authorization", &format!("Bearer {other}")), v, m],
            list.clone(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("refund__"), "{body}");
    assert!(body.contains("text-tools__hello"), "{body}");
    let call_refund = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "refund__lookup-order", "arguments": {"order-id": "ord_1001"},
                   "_meta": discover_meta("2026-07-28")}});
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &format!("Bearer {other}")),
                v,
                ("mcp-method", "tools/call"),
                ("mcp-name", "refund__lookup-order"),
            ],
            call_refund.clone(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["error"]["code"], -32602, "{answer}");

    // Origin: another site's is refused (even with a key); the server's own is not.
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &bearer),
                ("origin", "https://evil.example"),
                v,
                m,
            ],
            list.clone(),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let own = server.url.clone();
    let (status, _, body) = raw
        .post(
            &[("authorization", &bearer), ("origin", &own), v, m],
            list.clone(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A Host this server does not answer to (DNS rebinding): 403.
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &bearer),
                ("host", "evil.example.com"),
                v,
                m,
            ],
            list.clone(),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Headers that disagree with the body: 400, -32020.
    for headers in [
        vec![("mcp-protocol-version", "2025-11-25"), m],
        vec![v, ("mcp-method", "tools/call")],
    ] {
        let mut h = vec![("authorization", bearer.as_str())];
        h.extend(headers.iter().copied());
        let (status, _, body) = raw.post(&h, list.clone()).await;
        assert_eq!(status, 400, "{headers:?}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["error"]["code"], -32020, "{headers:?}: {answer}");
    }
    // A tools/call whose Mcp-Name is not the tool called.
    let call_hello = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "text-tools__hello", "arguments": {"name": "x"},
                   "_meta": discover_meta("2026-07-28")}});
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &bearer),
                v,
                ("mcp-method", "tools/call"),
                ("mcp-name", "other"),
            ],
            call_hello.clone(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        -32020
    );
    // An unsupported revision: 400, -32022, naming the supported ones.
    let old = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list",
        "params": {"_meta": discover_meta("2099-01-01")}});
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &bearer),
                ("mcp-protocol-version", "2099-01-01"),
                m,
            ],
            old,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["error"]["code"], -32022, "{answer}");
    assert!(answer.to_string().contains("2026-07-28"), "{answer}");
    // Notifications: 202. GET and DELETE: 405.
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &bearer),
                v,
                ("mcp-method", "notifications/cancelled"),
            ],
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 9, "reason": "x"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let resp = raw
            .http
            .request(method.clone(), format!("{}/mcp", server.url))
            .header("authorization", &bearer)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method}");
        assert_eq!(resp.headers()["allow"], "POST");
    }
    server.stop();
}

/// A client that reports `notifications/tools/list_changed`.
#[derive(Clone)]
struct ListChanged(tokio::sync::mpsc::UnboundedSender<()>);

impl rmcp::ClientHandler for ListChanged {
    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn stdio_serves_one_tenant_through_the_same_gate() {
    use rmcp::ServiceExt;
    use rmcp::transport::TokioChildProcess;
    let dir = setup("mcp-stdio");
    let policy = dir.join("policy.yaml");
    let mut cmd = tokio::process::Command::new(common::serve::BIN);
    cmd.args([
        "mcp",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
        "--policy",
        s(&policy),
    ]);
    let (changed, mut told) = tokio::sync::mpsc::unbounded_channel();
    let client = ListChanged(changed)
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "text-tools__hello"));
    // An initialize-based client has a session on stdio: it is told when
    // the tenant's tool list changes (here by the CLI on the data dir).
    common::serve::ok(common::serve::host(&[
        "tools",
        "disable",
        "hostile",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
    ]));
    tokio::time::timeout(std::time::Duration::from_secs(10), told.recv())
        .await
        .expect("notifications/tools/list_changed over stdio")
        .unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(!tools.iter().any(|t| t.name == "hostile__spin"));
    let r = client
        .call_tool(call("text-tools__hello", json!({"name": "stdio"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert!(text(&r).contains("Hello, stdio!"));
    let r = client
        .call_tool(call("text-tools__slugify", json!({"text": "A"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).starts_with("policy_denied: "), "{}", text(&r));
    let id = facts(&r)["invocation_id"].as_str().unwrap().to_string();
    client.cancel().await.unwrap();
    // Recorded like any invocation: visible to the API afterwards.
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let (status, record) = Client::new(&server, Some(&k))
        .get(&format!("/v1/invocations/{id}"))
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["transport"], "mcp");
    assert_eq!(record["principal"], "stdio");
    assert_eq!(record["error"]["kind"], "policy_denied");
    server.stop();
}

/// `host mcp` without `--policy` serves the data dir's stored policy and
/// follows it: a `host policy set` while a (2026-07-28) client is connected
/// takes effect on its next calls, as on `host serve`. The same client's
/// `subscriptions/listen` hears of tool-list changes over stdio.
#[tokio::test]
async fn stdio_follows_the_stored_policy() {
    use rmcp::transport::TokioChildProcess;
    let dir = setup("mcp-stdio-policy");
    let policy = dir.join("policy.yaml");
    common::serve::ok(common::serve::host(&[
        "policy",
        "set",
        s(&policy),
        "--data-dir",
        s(&dir),
    ]));
    let mut cmd = tokio::process::Command::new(common::serve::BIN);
    cmd.args(["mcp", "--tenant", "acme", "--data-dir", s(&dir)]);
    let client = ()
        .serve_with_lifecycle(
            TokioChildProcess::new(cmd).unwrap(),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    let slugify = || call("text-tools__slugify", json!({"text": "A B"}));
    let r = client.call_tool(slugify()).await.unwrap();
    assert!(text(&r).starts_with("policy_denied: "), "{}", text(&r));
    // A 2026-07-28 client over stdio subscribes (`subscriptions/listen`)
    // and is told when the tool list changes (a tool disabled by the CLI).
    let mut subscription = client
        .peer()
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .tools_list_changed()
                .build(),
        )
        .await
        .unwrap();
    common::serve::ok(common::serve::host(&[
        "tools",
        "disable",
        "hostile",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
    ]));
    let told = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
        .await
        .expect("notifications/tools/list_changed on the stdio subscription")
        .unwrap();
    assert!(
        matches!(
            told,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{told:?}"
    );
    // A new version that no longer denies it.
    let relaxed = dir.join("relaxed.yaml");
    std::fs::write(
        &relaxed,
        POLICY.replace(
            "deny_tools: [issue_refund, text-tools/slugify]",
            "deny_tools: [issue_refund]",
        ),
    )
    .unwrap();
    common::serve::ok(common::serve::host(&[
        "policy",
        "set",
        s(&relaxed),
        "--data-dir",
        s(&dir),
    ]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = client.call_tool(slugify()).await.unwrap();
        if r.is_error == Some(false) {
            assert_eq!(r.structured_content, Some(json!("a-b")), "{r:?}");
            break;
        }
        assert!(text(&r).starts_with("policy_denied: "), "{}", text(&r));
        assert!(
            std::time::Instant::now() < deadline,
            "the stored policy set while connected was not followed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    client.cancel().await.unwrap();
}

/// The `data:` lines of an SSE body, as JSON.
fn sse_messages(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

#[tokio::test]
async fn rich_content_and_log_lines_reach_mcp_clients() {
    use base64::Engine;
    let dir = setup("mcp-content");
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let client = connect(&server, &k, ProtocolVersion::V_2026_07_28).await;
    let tools = client.peer().list_all_tools().await.unwrap();
    let simple = tools
        .iter()
        .find(|t| t.name == "mcp-fixtures__test-simple-text")
        .unwrap();
    assert!(simple.output_schema.is_none(), "content, not structured");

    // An image: a content block with the bytes in base64 and the MIME type.
    let r = client
        .call_tool(call("mcp-fixtures__test-image-content", json!({})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let wire = serde_json::to_value(&r).unwrap();
    assert_eq!(wire["content"][0]["type"], "image", "{wire}");
    assert_eq!(wire["content"][0]["mimeType"], "image/png");
    let png = base64::engine::general_purpose::STANDARD
        .decode(wire["content"][0]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert!(wire.get("structuredContent").is_none(), "{wire}");
    // Several kinds in order, an embedded resource, a resource link, audio.
    let r = client
        .call_tool(call("mcp-fixtures__test_multiple_content_types", json!({})))
        .await
        .unwrap();
    let wire = serde_json::to_value(&r).unwrap();
    let kinds: Vec<&str> = wire["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["text", "image", "resource"], "{wire}");
    assert_eq!(
        wire["content"][2]["resource"]["uri"],
        "test://mixed-content-resource"
    );
    assert_eq!(
        wire["content"][2]["resource"]["mimeType"],
        "application/json"
    );
    let r = client
        .call_tool(call("mcp-fixtures__test-resource-link", json!({})))
        .await
        .unwrap();
    let wire = serde_json::to_value(&r).unwrap();
    assert_eq!(wire["content"][0]["type"], "resource_link", "{wire}");
    assert_eq!(wire["content"][0]["uri"], "test://linked-resource");
    assert_eq!(wire["content"][0]["name"], "linked-resource");
    let r = client
        .call_tool(call("mcp-fixtures__test-audio-content", json!({})))
        .await
        .unwrap();
    let wire = serde_json::to_value(&r).unwrap();
    assert_eq!(wire["content"][0]["mimeType"], "audio/wav", "{wire}");
    // The same function over /v1: the value as JSON (bytes in base64).
    let (status, v1) = Client::new(&server, Some(&k))
        .post(
            "/v1/tools/mcp-fixtures/test-image-content/invoke",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v1}");
    assert_eq!(v1["result"][0]["image"]["mime-type"], "image/png", "{v1}");
    client.cancel().await.unwrap();

    // Log lines become notifications/message before the result (SSE):
    // for 2025-11-25 clients at info and above; for 2026-07-28 when the
    // request's _meta asks for a level.
    let http = reqwest::Client::new();
    let post = |headers: Vec<(&'static str, String)>, body: Value| {
        let mut r = http
            .post(format!("{}/mcp", server.url))
            .header("authorization", format!("Bearer {k}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (h, v) in headers {
            r = r.header(h, v);
        }
        r.body(body.to_string()).send()
    };
    let legacy = post(
        vec![("mcp-protocol-version", "2025-11-25".into())],
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "mcp-fixtures__test-tool-with-logging", "arguments": {}}}),
    )
    .await
    .unwrap();
    assert_eq!(legacy.status().as_u16(), 200);
    let messages = sse_messages(&legacy.text().await.unwrap());
    let logs: Vec<&Value> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/message")
        .collect();
    assert_eq!(logs.len(), 3, "{messages:?}");
    assert_eq!(logs[0]["params"]["data"], "Tool execution started");
    assert_eq!(logs[0]["params"]["level"], "info");
    assert_eq!(logs[0]["params"]["logger"], "mcp-fixtures");
    let last = messages.last().unwrap();
    assert_eq!(last["id"], 7, "the result comes last: {messages:?}");
    assert!(
        last["result"]
            .to_string()
            .contains("Logging test completed")
    );
    for (meta_level, expected) in [(None, 0), (Some("info"), 3), (Some("error"), 0)] {
        let mut meta = discover_meta("2026-07-28");
        if let Some(l) = meta_level {
            meta["io.modelcontextprotocol/logLevel"] = json!(l);
        }
        let r = post(
            vec![
                ("mcp-protocol-version", "2026-07-28".into()),
                ("mcp-method", "tools/call".into()),
                ("mcp-name", "mcp-fixtures__test-tool-with-logging".into()),
            ],
            json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                   "params": {"name": "mcp-fixtures__test-tool-with-logging", "arguments": {}, "_meta": meta}}),
        )
        .await
        .unwrap();
        let body = r.text().await.unwrap();
        let messages = if body.trim_start().starts_with('{') {
            vec![serde_json::from_str::<Value>(&body).unwrap()]
        } else {
            sse_messages(&body)
        };
        let n = messages
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .count();
        assert_eq!(n, expected, "{meta_level:?}: {body}");
    }

    // Progress reports become notifications/progress for the request's
    // progressToken, in order, before the result; none without a token.
    for token in [Some(json!("p-1")), None] {
        let mut meta = discover_meta("2026-07-28");
        if let Some(t) = &token {
            meta["progressToken"] = t.clone();
        }
        let r = post(
            vec![
                ("mcp-protocol-version", "2026-07-28".into()),
                ("mcp-method", "tools/call".into()),
                ("mcp-name", "mcp-fixtures__test-tool-with-progress".into()),
            ],
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                   "params": {"name": "mcp-fixtures__test-tool-with-progress", "arguments": {}, "_meta": meta}}),
        )
        .await
        .unwrap();
        let body = r.text().await.unwrap();
        let messages = if body.trim_start().starts_with('{') {
            vec![serde_json::from_str::<Value>(&body).unwrap()]
        } else {
            sse_messages(&body)
        };
        let progress: Vec<&Value> = messages
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        match &token {
            Some(t) => {
                let done: Vec<f64> = progress
                    .iter()
                    .map(|p| p["params"]["progress"].as_f64().unwrap())
                    .collect();
                assert_eq!(done, [0.0, 50.0, 100.0], "{body}");
                assert!(progress.iter().all(|p| &p["params"]["progressToken"] == t));
                assert_eq!(progress[0]["params"]["total"], 100.0);
                assert_eq!(messages.last().unwrap()["id"], 9, "{body}");
            }
            None => assert!(progress.is_empty(), "{body}"),
        }
    }
    server.stop();
}

/// Reads an SSE answer as it arrives: its JSON messages one by one.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// The next message, or None when the stream ended or `wait` passed.
    async fn next(&mut self, wait: std::time::Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if let Some(m) = sse_messages(&event).into_iter().next() {
                    return Some(m);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// The next message that is not `notifications/tools/list_changed`
    /// (there should be none), or None.
    async fn next_list_changed(&mut self, wait: std::time::Duration) -> Option<Value> {
        self.next(wait)
            .await
            .filter(|m| m["method"] == "notifications/tools/list_changed")
    }
}

/// `subscriptions/listen` on `/mcp` (2026-07-28) for `notifications`.
async fn listen(server: &Server, key: &str, id: u64, notifications: Value) -> SseStream {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
        "params": {"notifications": notifications, "_meta": discover_meta("2026-07-28")}});
    let response = reqwest::Client::new()
        .post(format!("{}/mcp", server.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    SseStream {
        response,
        buffer: String::new(),
    }
}

#[tokio::test]
async fn listen_streams_hear_of_tool_list_changes_from_anywhere() {
    use std::time::Duration;
    let dir = setup("mcp-listen");
    let k = key(&dir, "acme", &["invoke"]);
    let admin = key(&dir, "acme", &["admin"]);
    // One request slot: a stream that kept its slot would starve every call.
    let server = Server::start(&dir, &["--max-concurrency", "1", "--max-queue", "4"]);
    let discovered = {
        let client = connect(&server, &k, ProtocolVersion::V_2026_07_28).await;
        let caps = client.peer().peer_info().unwrap().capabilities.clone();
        client.cancel().await.unwrap();
        caps
    };
    assert_eq!(
        discovered.tools.and_then(|t| t.list_changed),
        Some(true),
        "tools.listChanged is declared"
    );

    let mut stream = listen(&server, &k, 7, json!({"toolsListChanged": true})).await;
    let ack = stream.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"]["toolsListChanged"], true,
        "{ack}"
    );
    // A stream that asked for prompts only hears nothing of tools.
    let mut quiet = listen(&server, &k, 8, json!({"promptsListChanged": true})).await;
    let ack = quiet.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");

    // The streams hold no request slot: calls still run.
    let client = connect(&server, &k, ProtocolVersion::V_2026_07_28).await;
    let r = client
        .call_tool(call("text-tools__word-count", json!({"text": "a b"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");

    // Nothing changed: nothing is said.
    assert!(stream.next(Duration::from_millis(1500)).await.is_none());

    // A change through the API is told, tagged with the listen's id.
    let api = Client::new(&server, Some(&admin));
    let (status, body) = api.post("/v1/tools/hostile/disable", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let told = stream
        .next_list_changed(Duration::from_secs(10))
        .await
        .expect("notifications/tools/list_changed after a disable");
    assert_eq!(
        told["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7,
        "{told}"
    );
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(!tools.iter().any(|t| t.name == "hostile__spin"));

    // A change made outside this server (the CLI on the same data dir, as
    // another replica would) is told too: the registry is the truth.
    common::serve::ok(common::serve::host(&[
        "tools",
        "enable",
        "hostile",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
    ]));
    stream
        .next_list_changed(Duration::from_secs(10))
        .await
        .expect("notifications/tools/list_changed after the CLI's enable");
    // A new policy changes the tools' annotations: told too.
    std::fs::write(
        dir.join("policy2.yaml"),
        POLICY.replace("max_tool_calls: 3", "max_tool_calls: 4"),
    )
    .unwrap();
    common::serve::ok(common::serve::host(&[
        "policy",
        "set",
        s(&dir.join("policy2.yaml")),
        "--data-dir",
        s(&dir),
    ]));
    stream
        .next_list_changed(Duration::from_secs(10))
        .await
        .expect("notifications/tools/list_changed after a new policy");
    assert!(quiet.next(Duration::from_millis(300)).await.is_none());
    client.cancel().await.unwrap();

    // Streams are bounded per tenant, whatever they asked for (quiet ones
    // included): the 33rd is refused, saying why.
    let mut more = Vec::new();
    for id in 0..30 {
        more.push(listen(&server, &k, 100 + id, json!({})).await);
    }
    let mut refused = listen(&server, &k, 200, json!({"toolsListChanged": true})).await;
    let mut last = None;
    while let Some(m) = refused.next(Duration::from_secs(10)).await {
        last = Some(m);
    }
    let last = last.unwrap();
    assert_eq!(last["id"], 200, "{last}");
    assert_eq!(last["error"]["data"]["kind"], "tenant_overloaded", "{last}");
    drop(more);

    // A stream whose key is revoked ends with an error: it hears nothing
    // more once requests with that key are refused.
    let doomed_key = key(&dir, "acme", &["invoke"]);
    let mut doomed = listen(&server, &doomed_key, 9, json!({"toolsListChanged": true})).await;
    assert_eq!(
        doomed.next(Duration::from_secs(10)).await.unwrap()["method"],
        "notifications/subscriptions/acknowledged"
    );
    let id = doomed_key.split('_').nth(1).unwrap();
    common::serve::ok(common::serve::host(&[
        "keys",
        "revoke",
        id,
        "--data-dir",
        s(&dir),
    ]));
    let end = doomed.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(end["id"], 9, "{end}");
    assert_eq!(end["error"]["data"]["kind"], "unauthenticated", "{end}");

    // Shutdown ends open streams with the listen's final result and the
    // server exits cleanly (stop() asserts it).
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    let last = stream.next(Duration::from_secs(20)).await.unwrap();
    assert_eq!(last["id"], 7, "{last}");
    assert!(last.get("result").is_some(), "{last}");
    assert!(stream.next(Duration::from_secs(5)).await.is_none(), "ended");
    stopping.await.unwrap();
}

/// An answer without what differs call to call (the invocation id, the
/// wall-clock time).
fn without_ids(mut answer: Value) -> Value {
    if let Some(facts) = answer
        .pointer_mut("/result/_meta/io.toolhost~1invocation")
        .and_then(Value::as_object_mut)
    {
        facts.remove("invocation_id");
        if let Some(usage) = facts.get_mut("usage").and_then(Value::as_object_mut) {
            usage.remove("wall_ms");
        }
    }
    if let Some(Value::String(t)) = answer.pointer_mut("/result/content/0/text")
        && let Some(at) = t.find("(invocation inv_")
    {
        t.truncate(at);
    }
    answer
}

#[tokio::test]
async fn plain_calls_are_answered_exactly_as_rmcp_answers_them() {
    let dir = setup("mcp-plain");
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let bearer = format!("Bearer {k}");
    let call = |name: &str, args: Value, meta: Value| {
        let mut m = discover_meta("2026-07-28");
        m.as_object_mut()
            .unwrap()
            .extend(meta.as_object().unwrap().clone());
        json!({"jsonrpc": "2.0", "id": "c-1", "method": "tools/call",
            "params": {"name": name, "arguments": args, "_meta": m}})
    };
    let headers = |name: &'static str| {
        vec![
            ("authorization", bearer.clone()),
            ("mcp-protocol-version", "2026-07-28".to_string()),
            ("mcp-method", "tools/call".to_string()),
            ("mcp-name", name.to_string()),
        ]
    };
    async fn post(raw: &Raw, headers: &[(&str, String)], body: Value) -> (u16, String) {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = raw.post(&h, body).await;
        (status, body)
    }
    // Each case twice: plain, and with something that sends it through
    // rmcp's service (a progress token: the tool reports no progress, so
    // the answer is still one JSON result). Same status, same answer.
    for (name, args) in [
        ("text-tools__word-count", json!({"text": "a b\nc"})),
        // The tool's WIT err, a policy refusal, bad arguments, an unknown
        // function of a known tool, a tool that traps.
        ("text-tools__slugify", json!({"text": "A"})),
        ("text-tools__word-count", json!({"txt": 1})),
        ("text-tools__no-such-function", json!({})),
        ("hostile__spin", json!({})),
        // Unknown tool: rmcp answers both (a JSON-RPC error).
        ("nope__nothing", json!({})),
    ] {
        let plain = post(&raw, &headers(name), call(name, args.clone(), json!({}))).await;
        let via_rmcp = post(
            &raw,
            &headers(name),
            call(name, args.clone(), json!({"progressToken": "p"})),
        )
        .await;
        assert_eq!(plain.0, via_rmcp.0, "{name}: {plain:?} / {via_rmcp:?}");
        let (a, b): (Value, Value) = (
            serde_json::from_str(&plain.1).unwrap_or_else(|_| panic!("{name}: {}", plain.1)),
            serde_json::from_str(&via_rmcp.1).unwrap_or_else(|_| panic!("{name}: {}", via_rmcp.1)),
        );
        assert_eq!(a["id"], "c-1", "{a}");
        assert_eq!(without_ids(a), without_ids(b), "{name}");
    }
    // An Accept that does not take SSE is rmcp's to refuse: 406, and the
    // tool does not run. Refused with q=0, or hidden in a quoted parameter
    // (a naive split on commas would read it as accepted).
    for accept in [
        "application/json, text/event-stream;q=0",
        "application/json, text/plain;x=\",text/event-stream,\"",
    ] {
        let r = raw
            .http
            .post(format!("{}/mcp", server.url))
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .header("accept", accept)
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "text-tools__word-count")
            .body(call("text-tools__word-count", json!({"text": "q"}), json!({})).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 406, "{accept}");
    }
    // A header that does not agree with the body is rmcp's to refuse, as
    // ever: 400, -32020.
    let (status, body) = post(
        &raw,
        &headers("text-tools__hello"),
        call("text-tools__word-count", json!({"text": "x"}), json!({})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("-32020"), "{body}");
    // One key twice, plain or through rmcp (a progress token), at the top
    // of the arguments or nested: refused as on `/v1` (this server would
    // read the last value, a proxy in front may read the first).
    let meta = discover_meta("2026-07-28").to_string();
    let progress = {
        let mut m = discover_meta("2026-07-28");
        m["progressToken"] = json!("p");
        m.to_string()
    };
    // The last case sends Content-Type twice: that does not skip the check
    // (rmcp reads the first).
    for (meta, arguments, content_types) in [
        (&meta, r#"{"text": "a", "text": "a b c"}"#, 1),
        (&progress, r#"{"text": "a", "text": "a b c"}"#, 1),
        (&meta, r#"{"text": "a"}, "arguments": {"text": "a b c"}"#, 1),
        (&progress, r#"{"text": "a", "text": "a b c"}"#, 2),
    ] {
        let body = format!(
            r#"{{"jsonrpc": "2.0", "id": "d-1", "method": "tools/call", "params": {{"name": "text-tools__word-count", "arguments": {arguments}, "_meta": {meta}}}}}"#
        );
        let mut request = raw
            .http
            .post(format!("{}/mcp", server.url))
            .header("authorization", &bearer);
        for _ in 0..content_types {
            request = request.header("content-type", "application/json");
        }
        let r = request
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "text-tools__word-count")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{arguments} ({content_types}): {text}");
        assert!(
            text.contains("-32600") && text.contains("appears twice"),
            "{text}"
        );
    }
    server.stop();
}

/// A call that waits for a human is a task (SEP-2663) for a request that
/// declares the tasks extension: `tasks/get` follows it through approval,
/// denial and the run; `tasks/cancel` withdraws the request; only the key
/// that made the call sees the task. Without the extension nothing changes.
/// The `_meta` of a 2026-07-28 request that declares the tasks extension,
/// with `extra` fields.
fn tasks_meta(extra: Value) -> Value {
    let mut m = discover_meta("2026-07-28");
    m["io.modelcontextprotocol/clientCapabilities"] =
        json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    m.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    m
}

/// One JSON-RPC request as a 2026-07-28 client sends it; the answer's
/// `result` or `error`.
async fn rpc(raw: &Raw, key: &str, method: &str, name: &str, params: Value) -> Value {
    let bearer = format!("Bearer {key}");
    let (status, _, body) = raw
        .post(
            &[
                ("authorization", &bearer),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", method),
                ("mcp-name", name),
            ],
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
        )
        .await;
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method}: {status} {body}"));
    v.get("result")
        .or_else(|| v.get("error"))
        .cloned()
        .unwrap_or_else(|| panic!("{method}: {v}"))
}

/// A task is final only as stored: a request past its expiry may still be
/// approved by a decision that read the clock before the expiry and
/// commits after it, so `tasks/get` answers `working` until the reaper
/// closes the request, and then `completed` with `approval_expired`.
#[tokio::test]
async fn an_expired_task_completes_only_once_the_store_closes_it() {
    let dir = setup("mcp-task-expiry");
    let k = key(&dir, "acme", &["invoke"]);
    // The reaper runs every third of the lease: 10 s here, so the request
    // stays stored pending for seconds after it expired.
    let server = Server::start(&dir, &["--approval-ttl", "2s", "--lease", "30s"]);
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let params = json!({"name": "refund__issue-refund",
        "arguments": {"order-id": "ord_1001", "amount-usd": 10.0},
        "_meta": tasks_meta(json!({}))});
    let created = rpc(&raw, &k, "tools/call", "refund__issue-refund", params).await;
    assert_eq!(created["resultType"], "task", "{created}");
    let id = created["taskId"].as_str().unwrap().to_string();
    let get = || {
        let params = json!({"taskId": id, "_meta": tasks_meta(json!({}))});
        let (raw, k, id) = (&raw, k.clone(), id.clone());
        async move { rpc(raw, &k, "tasks/get", &id, params).await }
    };
    // Whether the reaper's expiry is in the audit trail yet.
    let closed = || {
        let out =
            common::serve::host(&["audit", "export", "--tenant", "acme", "--data-dir", s(&dir)]);
        let trail = String::from_utf8_lossy(&out.stdout).to_string();
        // Entry bodies are exported as JSON strings (escaped quotes).
        async move { trail.contains(r#"\"decision\":\"expired\""#) }
    };
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let mut saw_expired_working = false;
    let until = Instant::now() + Duration::from_secs(30);
    let done = loop {
        // Read the store's state first: a `completed` read after it is
        // only allowed if the close was already there.
        let was_closed = closed().await;
        let got = get().await;
        match got["status"].as_str() {
            Some("working") => {
                let message = got["statusMessage"].as_str().unwrap();
                assert!(message.contains("expired at"), "{got}");
                saw_expired_working = true;
            }
            Some("completed") => {
                assert!(
                    was_closed || closed().await,
                    "completed before the store closed the request: {got}"
                );
                break got;
            }
            _ => panic!("{got}"),
        }
        assert!(Instant::now() < until, "never closed: {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(saw_expired_working, "the request was reaped at once");
    assert_eq!(done["result"]["isError"], true, "{done}");
    assert!(done.to_string().contains("approval_expired"), "{done}");
    server.stop();
}

#[tokio::test]
async fn approval_waits_are_tasks_for_clients_that_declare_the_extension() {
    let dir = setup("mcp-tasks");
    let k = key(&dir, "acme", &["invoke"]);
    let colleague = key(&dir, "acme", &["invoke"]);
    let stranger = key(&dir, "globex", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(&dir, &[]);
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let refund = json!({"order-id": "ord_1001", "amount-usd": 10.0});
    let call = |meta: Value| json!({"name": "refund__issue-refund", "arguments": refund.clone(), "_meta": meta});
    let task_call = |k: &str, progress: bool| {
        let meta = if progress {
            tasks_meta(json!({"progressToken": "p"}))
        } else {
            tasks_meta(json!({}))
        };
        let params = call(meta);
        let raw = &raw;
        let k = k.to_string();
        async move { rpc(raw, &k, "tools/call", "refund__issue-refund", params).await }
    };
    let task = |method: &'static str, k: &str, id: &str, with_ext: bool| {
        let meta = if with_ext {
            tasks_meta(json!({}))
        } else {
            discover_meta("2026-07-28")
        };
        let mut params = json!({"taskId": id, "_meta": meta});
        if method == "tasks/update" {
            params["inputResponses"] = json!({});
        }
        let (raw, k, id) = (&raw, k.to_string(), id.to_string());
        async move { rpc(raw, &k, method, &id, params).await }
    };

    // The server declares the extension.
    let client = connect(&server, &k, ProtocolVersion::V_2026_07_28).await;
    let caps = client.peer().peer_info().unwrap().capabilities.clone();
    client.cancel().await.unwrap();
    assert!(caps.supports_tasks(), "{caps:?}");

    // Declared: a task, durable, on the fast path and through rmcp alike.
    let mut ids = Vec::new();
    for progress in [false, true, false] {
        let created = task_call(&k, progress).await;
        assert_eq!(created["resultType"], "task", "{created}");
        assert_eq!(created["status"], "working", "{created}");
        for absent in ["content", "result", "error", "task", "ttl", "pollInterval"] {
            assert!(created.get(absent).is_none(), "{absent}: {created}");
        }
        assert!(created["ttlMs"].is_null(), "{created}");
        assert_eq!(created["pollIntervalMs"], 5000, "{created}");
        assert!(created["createdAt"].as_str().unwrap().starts_with("20"));
        let id = created["taskId"].as_str().unwrap().to_string();
        assert!(id.starts_with("inv_"), "{created}");
        let approval = id.replacen("inv_", "apr_", 1);
        assert!(
            created["statusMessage"]
                .as_str()
                .unwrap()
                .contains(&approval),
            "{created}"
        );
        ids.push(id);
    }
    // A keyed call replayed: to the key that made it, the same task; to a
    // colleague's key in the tenant (idempotency keys are per tenant), the
    // plain answer, since only the caller's key can see its task.
    let keyed = || {
        call(tasks_meta(
            json!({"io.toolhost/idempotency_key": "refund-ord-1001"}),
        ))
    };
    let first = rpc(&raw, &k, "tools/call", "refund__issue-refund", keyed()).await;
    assert_eq!(first["resultType"], "task", "{first}");
    let again = rpc(&raw, &k, "tools/call", "refund__issue-refund", keyed()).await;
    assert_eq!(again["resultType"], "task", "{again}");
    assert_eq!(again["taskId"], first["taskId"], "{again}");
    // Created when the approval was requested, whenever it is answered
    // and whoever reads it with tasks/get.
    assert_eq!(again["createdAt"], first["createdAt"], "{again}");
    let got = task("tasks/get", &k, first["taskId"].as_str().unwrap(), true).await;
    assert_eq!(got["createdAt"], first["createdAt"], "{got}");
    assert!(
        first["statusMessage"]
            .as_str()
            .unwrap()
            .contains("expires at"),
        "{first}"
    );
    let theirs = rpc(
        &raw,
        &colleague,
        "tools/call",
        "refund__issue-refund",
        keyed(),
    )
    .await;
    assert_eq!(theirs["resultType"], "complete", "{theirs}");
    assert_eq!(theirs["isError"], true, "{theirs}");
    assert!(theirs.get("taskId").is_none(), "{theirs}");
    // Not declared: the isError answer naming the approval, as before.
    let plain = rpc(
        &raw,
        &k,
        "tools/call",
        "refund__issue-refund",
        call(discover_meta("2026-07-28")),
    )
    .await;
    assert_eq!(plain["resultType"], "complete", "{plain}");
    assert_eq!(plain["isError"], true, "{plain}");
    assert!(plain.get("taskId").is_none(), "{plain}");
    // A call that can run now is never a task.
    let now = rpc(
        &raw,
        &k,
        "tools/call",
        "text-tools__word-count",
        json!({"name": "text-tools__word-count", "arguments": {"text": "a b"},
            "_meta": tasks_meta(json!({}))}),
    )
    .await;
    assert_eq!(now["resultType"], "complete", "{now}");
    assert_eq!(now["structuredContent"]["words"], 2, "{now}");

    let (approved, denied, withdrawn) = (&ids[0], &ids[1], &ids[2]);
    // tasks/* need the extension declared: -32021.
    let e = task("tasks/get", &k, approved, false).await;
    assert_eq!(e["code"], -32021, "{e}");
    // Malformed params of a tasks/* method: invalid params (-32602) once
    // the extension is declared (-32021 before), never "method not found".
    for method in ["tasks/get", "tasks/cancel", "tasks/update"] {
        for params in [
            json!({"taskId": 5}),
            json!({"taskId": null}),
            json!({}),
            json!({"taskId": approved, "inputResponses": "x"}),
        ] {
            if method != "tasks/update" && params.get("inputResponses").is_some() {
                continue;
            }
            for (declared, code) in [(true, -32602), (false, -32021)] {
                let mut p = params.clone();
                p["_meta"] = if declared {
                    tasks_meta(json!({}))
                } else {
                    discover_meta("2026-07-28")
                };
                let name = p["taskId"].as_str().unwrap_or("x").to_string();
                let e = rpc(&raw, &k, method, &name, p).await;
                assert_eq!(
                    e["code"], code,
                    "{method} {params} declared {declared}: {e}"
                );
            }
        }
    }
    // Waiting: working, naming the approval and its expiry.
    let got = task("tasks/get", &k, approved, true).await;
    assert_eq!(got["resultType"], "complete", "{got}");
    assert_eq!(got["taskId"], approved.as_str(), "{got}");
    assert_eq!(got["status"], "working", "{got}");
    assert!(got["statusMessage"].as_str().unwrap().contains("expires"));
    assert!(got.get("result").is_none(), "{got}");
    // Only the key that made the call sees the task: to a colleague's
    // key, another tenant's, or for an id that never was, it is unknown.
    for (who, id) in [
        (&colleague, approved.as_str()),
        (&stranger, approved.as_str()),
        (&k, "inv_doesnotexist"),
        (&k, "apr_x' OR 1=1"),
    ] {
        for method in ["tasks/get", "tasks/cancel", "tasks/update"] {
            let e = task(method, who, id, true).await;
            assert_eq!(e["code"], -32602, "{method} {id}: {e}");
        }
    }
    // The colleague's cancel did nothing: still waiting.
    assert_eq!(
        task("tasks/get", &k, approved, true).await["status"],
        "working"
    );

    // Approved: the call runs once; the task completes with its result.
    let api = Client::new(&server, Some(&approver));
    let apr = |id: &str| id.replacen("inv_", "apr_", 1);
    let (status, d) = api
        .post(
            &format!("/v1/approvals/{}/approve", apr(approved)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let got = task("tasks/get", &k, approved, true).await;
    assert_eq!(got["status"], "completed", "{got}");
    assert_eq!(got["result"]["isError"], false, "{got}");
    assert!(!got["result"]["content"].as_array().unwrap().is_empty());
    assert_eq!(
        got["result"]["_meta"]["io.toolhost/invocation"]["status"], "ok",
        "{got}"
    );
    // Denied: completed with the refusal as an isError result (SEP-2663
    // keeps `failed` for JSON-RPC errors).
    let (status, d) = api
        .post(
            &format!("/v1/approvals/{}/deny", apr(denied)),
            json!({"reason": "no"}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let got = task("tasks/get", &k, denied, true).await;
    assert_eq!(got["status"], "completed", "{got}");
    assert_eq!(got["result"]["isError"], true, "{got}");
    let text = got["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("approval_denied: "), "{text}");

    // Cancelled: the request is withdrawn, final, recorded.
    let ack = task("tasks/cancel", &k, withdrawn, true).await;
    assert_eq!(ack, json!({"resultType": "complete"}));
    let got = task("tasks/get", &k, withdrawn, true).await;
    assert_eq!(got["status"], "cancelled", "{got}");
    let (_, a) = api.get(&format!("/v1/approvals/{}", apr(withdrawn))).await;
    assert_eq!(a["status"], "withdrawn", "{a}");
    let (status, e) = api
        .post(
            &format!("/v1/approvals/{}/approve", apr(withdrawn)),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "a withdrawn request cannot be approved: {e}");
    let (_, record) = Client::new(&server, Some(&k))
        .get(&format!("/v1/invocations/{withdrawn}"))
        .await;
    assert_eq!(record["status"], "refused", "{record}");
    assert_eq!(record["error"]["kind"], "approval_withdrawn", "{record}");
    let (status, page) = api.get("/v1/approvals?status=withdrawn").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.to_string().contains(&apr(withdrawn)), "{page}");
    // Cancelling a task that ended (any way) is the same acknowledgement
    // and changes nothing; an update is acknowledged and ignored.
    for id in [withdrawn, approved, denied] {
        assert_eq!(
            task("tasks/cancel", &k, id, true).await,
            json!({"resultType": "complete"})
        );
        assert_eq!(
            task("tasks/update", &k, id, true).await,
            json!({"resultType": "complete"})
        );
    }
    assert_eq!(
        task("tasks/get", &k, approved, true).await["status"],
        "completed"
    );
    assert_eq!(
        task("tasks/get", &k, withdrawn, true).await["status"],
        "cancelled"
    );

    // A withdrawal and an approval at the same moment: exactly one wins,
    // and the task, the request and the record all say which.
    for round in 0..4 {
        let created = task_call(&k, false).await;
        let id = created["taskId"].as_str().unwrap().to_string();
        let path = format!("/v1/approvals/{}/approve", apr(&id));
        let approve = api.post(&path, json!({}));
        let cancel = task("tasks/cancel", &k, &id, true);
        let ((status, _), ack) = tokio::join!(approve, cancel);
        assert_eq!(ack, json!({"resultType": "complete"}), "round {round}");
        let got = task("tasks/get", &k, &id, true).await;
        let (_, a) = api.get(&format!("/v1/approvals/{}", apr(&id))).await;
        let (_, record) = Client::new(&server, Some(&k))
            .get(&format!("/v1/invocations/{id}"))
            .await;
        if status == 200 {
            assert_eq!(a["status"], "approved", "round {round}: {a}");
            assert_eq!(got["status"], "completed", "round {round}: {got}");
            assert_eq!(record["status"], "ok", "round {round}: {record}");
        } else {
            assert_eq!(status, 409, "round {round}");
            assert_eq!(a["status"], "withdrawn", "round {round}: {a}");
            assert_eq!(got["status"], "cancelled", "round {round}: {got}");
            assert_eq!(record["error"]["kind"], "approval_withdrawn", "{record}");
        }
    }
    server.stop();
    // Every decision, the withdrawal included, is in a chain that verifies.
    let out = common::serve::host(&["audit", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success(), "{out:?}");
}
