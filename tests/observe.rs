//! Metrics and traces of a spawned `host serve`: `GET /metrics` on its own
//! listener after real invocations (series, labels, values, the label
//! bound), and spans exported over OTLP/HTTP to an in-test receiver that
//! decodes them with `opentelemetry-proto` (names, parents, the caller's
//! trace continued from `traceparent`, and the tool's outbound request
//! carrying the same trace).

mod common;

use common::TestServer;
use common::serve::{Client, Server, data_dir_with, key};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 1000
policy:
  allow_tools: [text-tools, hostile, http-json, lookup_order, create_refund_draft]
  deny_tools: [issue_refund]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
tools:
  hostile:
    limits: {timeout: 1s, fuel: 100000000}
"#;

/// The policy, with http-json granted `http://127.0.0.1:{port}`.
fn policy(port: u16) -> String {
    format!(
        "{POLICY}  http-json:\n    http: [{{url: \"http://127.0.0.1:{port}\"}}]\n    allow_cidrs: [127.0.0.0/8]\n"
    )
}

/// The metrics URL the server logged.
fn metrics_url(server: &Server) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if let Some(i) = log.find("metrics_url=") {
            let rest = &log[i + "metrics_url=".len()..];
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < until, "no metrics URL logged: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn scrape(url: &str) -> String {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_what_happened_by_tenant_tool_and_outcome_within_the_label_bound() {
    let upstream = TestServer::start().await;
    let dir = data_dir_with(
        "obs-metrics",
        &policy(upstream.port),
        &[
            ("text-tools", "text_tools"),
            ("hostile", "hostile"),
            ("http-json", "http_json"),
            ("refund", "refund"),
        ],
    );
    let agent = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    let server = Server::start(
        &dir,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-max-names",
            "4",
            "--max-concurrency",
            "1",
            "--max-queue",
            "0",
        ],
    );
    let url = metrics_url(&server);
    let c = Client::new(&server, Some(&agent));
    for name in ["a", "b"] {
        let (status, r) = c
            .post(
                "/v1/tools/text-tools/hello/invoke",
                json!({"args": {"name": name}, "task_id": "t1", "workflow": "support"}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let (status, r) = c
        .post(
            "/v1/tools/text-tools/hello/invoke",
            json!({"args": {"name": 5}}),
        )
        .await;
    assert_eq!((status, &r["error"]["kind"]), (422, &json!("invalid_args")));
    let (status, r) = c.post("/v1/tools/hostile/spin/invoke", json!({})).await;
    assert_eq!(
        (status, &r["error"]["kind"]),
        (200, &json!("fuel_exhausted"))
    );
    // Outbound: one granted destination, one not.
    let granted = format!("http://127.0.0.1:{}/json", upstream.port);
    let (status, r) = c
        .post(
            "/v1/tools/http-json/get-many/invoke",
            json!({"args": {"urls": [granted, "http://denied.example/x"]}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    // Parked for approval; tokens reported.
    let (status, r) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "o1", "amount-usd": 120.0}, "task_id": "t1"}),
        )
        .await;
    assert_eq!(
        (status, &r["status"]),
        (202, &json!("pending_approval")),
        "{r}"
    );
    let approval = r["approval_id"].as_str().unwrap().to_string();
    let (status, r) = c
        .post(
            "/v1/tasks/t1/usage",
            json!({"input_tokens": 700, "output_tokens": 30, "workflow": "support"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    // A fifth tool/function pair of the tenant: past the bound of 4.
    let (status, r) = c
        .post(
            "/v1/tools/text-tools/slugify/invoke",
            json!({"args": {"text": "Hello World"}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");

    let text = scrape(&url).await;
    let inv = |tool: &str, function: &str, outcome: &str, kind: &str| {
        format!(
            r#"toolhost_invocations_total{{tenant="acme",tool="{tool}",function="{function}",outcome="{outcome}",kind="{kind}"}}"#
        )
    };
    assert_eq!(value(&text, &inv("text-tools", "hello", "ok", "none")), 2.0);
    assert_eq!(
        value(
            &text,
            &inv("text-tools", "hello", "refused", "invalid_args")
        ),
        1.0
    );
    assert_eq!(
        value(&text, &inv("hostile", "spin", "error", "fuel_exhausted")),
        1.0
    );
    assert_eq!(
        value(&text, &inv("http-json", "get-many", "ok", "none")),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &inv(
                "refund",
                "issue-refund",
                "pending_approval",
                "approval_required"
            )
        ),
        1.0
    );
    // The fifth pair is folded into `other`, and counted as such.
    assert_eq!(value(&text, &inv("other", "other", "ok", "none")), 1.0);
    assert!(!text.contains(r#"function="slugify""#), "{text}");
    assert_eq!(
        value(
            &text,
            r#"toolhost_metric_labels_overflow_total{label="tool"}"#
        ),
        1.0
    );
    // Latency histograms: end to end for every answer, in-sandbox for runs.
    let labels = r#"{tenant="acme",tool="text-tools",function="hello"}"#;
    assert_eq!(
        value(
            &text,
            &format!("toolhost_invocation_duration_seconds_count{labels}")
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            &format!("toolhost_sandbox_duration_seconds_count{labels}")
        ),
        2.0
    );
    assert!(
        text.contains(
            r#"toolhost_invocation_duration_seconds_bucket{tenant="acme",tool="text-tools",function="hello",le="+Inf"} 3"#
        ),
        "{text}"
    );
    assert!(value(&text, &format!("toolhost_invocation_fuel_sum{labels}")) > 0.0);
    assert!(
        value(
            &text,
            &format!("toolhost_invocation_memory_peak_bytes_sum{labels}")
        ) > 0.0
    );
    // Outbound calls by destination and decision.
    assert_eq!(
        value(
            &text,
            r#"toolhost_outbound_calls_total{tenant="acme",host="127.0.0.1",decision="allow"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"toolhost_outbound_calls_total{tenant="acme",host="denied.example",decision="deny"}"#
        ),
        1.0
    );
    // Budget spend by workflow, tokens.
    assert_eq!(
        value(
            &text,
            r#"toolhost_budget_tool_calls_total{tenant="acme",workflow="support"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            r#"toolhost_budget_tokens_total{tenant="acme",workflow="support",direction="input"}"#
        ),
        700.0
    );
    // Approvals waiting (from the store), audit commits, tool loads.
    assert_eq!(
        value(&text, r#"toolhost_approvals_pending{tenant="acme"}"#),
        1.0
    );
    assert!(
        value(
            &text,
            r#"toolhost_audit_commit_duration_seconds_count{outcome="ok"}"#
        ) >= 6.0
    );
    // Four tools loaded (from this node's artifacts, or compiled first).
    let loads: f64 = text
        .lines()
        .filter(|l| l.starts_with("toolhost_tool_load_duration_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(loads, 4.0, "{text}");
    assert_eq!(value(&text, "toolhost_requests_running"), 0.0);
    assert_eq!(value(&text, "toolhost_requests_queued"), 0.0);

    // A decision: time to decide.
    let approver = Client::new(&server, Some(&approver));
    let (status, r) = approver
        .post(&format!("/v1/approvals/{approval}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{r}");
    // Overload: one slot, no queue; a second request while the first
    // sleeps is 503.
    let slow = {
        let c = Client::new(&server, Some(&agent));
        tokio::spawn(async move {
            c.post("/v1/tools/hostile/sleep-forever/invoke", json!({}))
                .await
        })
    };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if value(&scrape(&url).await, "toolhost_requests_running") == 1.0 {
            break;
        }
        assert!(Instant::now() < until, "the slow call never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, r) = c.hello("x").await;
    assert_eq!((status, &r["kind"]), (503, &json!("overloaded")), "{r}");
    let (status, _) = slow.await.unwrap();
    assert_eq!(status, 200);
    let text = scrape(&url).await;
    assert_eq!(
        value(
            &text,
            r#"toolhost_approval_decision_seconds_count{tenant="acme",decision="approved"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"toolhost_requests_rejected_total{status="503",reason="overloaded"}"#
        ),
        1.0
    );
    // The API's own listener has no /metrics; the metrics listener nothing else.
    let (status, _) = c.get("/metrics").await;
    assert_eq!(status, 404);
    let other = url.replace("/metrics", "/v1/tools");
    assert_eq!(reqwest::get(&other).await.unwrap().status(), 404);
    server.stop();
}

/// An OTLP/HTTP receiver: every span of every export request it gets.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        use axum::body::Bytes;
        use axum::routing::post;
        let spans: Arc<Mutex<Vec<Span>>> = Default::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let kept = kept.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| string(a.value.as_ref()?));
                        assert_eq!(service.as_deref(), Some("toolhost"));
                        for scope in resource.scope_spans {
                            kept.lock().unwrap().extend(scope.spans);
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, spans }
    }

    /// The spans of trace `trace_id` (hex), once `want` of them arrived.
    async fn trace(&self, trace_id: &str, want: usize) -> Vec<Span> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex::encode(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if spans.len() >= want {
                return spans;
            }
            assert!(
                Instant::now() < until,
                "{} of {want} spans of {trace_id}: {:#?}",
                spans.len(),
                names(&spans)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn string(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| string(a.value.as_ref()?))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "{name} in {:?}", names(spans));
    found[0]
}

#[tokio::test]
async fn traces_continue_the_callers_trace_through_the_tool_to_the_api_it_calls() {
    let upstream = TestServer::start().await;
    let receiver = Receiver::start().await;
    let dir = data_dir_with(
        "obs-traces",
        &policy(upstream.port),
        &[("http-json", "http_json"), ("text-tools", "text_tools")],
    );
    let agent = key(&dir, "acme", &["invoke"]);
    let server = Server::start_env(
        &dir,
        &["--otlp-endpoint", &receiver.url],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let c = Client::new(&server, Some(&agent));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let forged = "00-11111111111111111111111111111111-2222222222222222-01";
    let url = format!("http://127.0.0.1:{}/json", upstream.port);
    // The guest tries to set its own traceparent on the request it makes.
    let (status, r, _) = c
        .post_with(
            "/v1/tools/http-json/get-with-header/invoke",
            json!({"args": {"url": url, "name": "traceparent", "value": forged}}),
            &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["result"]["ok"]["status"] == 200, "{r}");
    let id = r["invocation_id"].as_str().unwrap();
    // The record names the trace.
    let (_, record) = c.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record["trace_id"], trace_id, "{record}");

    let spans = receiver.trace(trace_id, 5).await;
    let root = one(&spans, "invoke http-json/get-with-header");
    assert_eq!(hex::encode(&root.parent_span_id), caller_span);
    assert_eq!(root.kind, 2, "server span");
    assert_eq!(attr(root, "toolhost.invocation_id").as_deref(), Some(id));
    assert_eq!(attr(root, "toolhost.tenant").as_deref(), Some("acme"));
    assert_eq!(attr(root, "toolhost.outcome").as_deref(), Some("ok"));
    let child_of = |name: &str, parent: &Span| {
        let s = one(&spans, name);
        assert_eq!(
            s.parent_span_id, parent.span_id,
            "{name} is a child of {}",
            parent.name
        );
        s.clone()
    };
    let admit = child_of("admit", root);
    assert_eq!(
        attr(&admit, "toolhost.policy.effect").as_deref(),
        Some("allow")
    );
    assert!(attr(&admit, "toolhost.policy.rule").is_some());
    // The budget reservation is part of admit (its attributes).
    assert_eq!(
        attr(&admit, "toolhost.budget.tool_calls").as_deref(),
        Some("1")
    );
    assert!(!spans.iter().any(|s| s.name == "reserve"));
    let sandbox = child_of("sandbox", root);
    assert!(
        attr(&sandbox, "toolhost.fuel")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    child_of("complete", root);
    let outbound = child_of("GET 127.0.0.1", &sandbox);
    assert_eq!(outbound.kind, 3, "client span");
    assert_eq!(
        attr(&outbound, "toolhost.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(
        attr(&outbound, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(
        attr(&outbound, "http.response.body.size")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(
        attr(&outbound, "server.port"),
        Some(upstream.port.to_string())
    );
    // The API the tool called got the host's traceparent: same trace, the
    // outbound span as parent; the guest's forged value is gone.
    let heads = upstream.requests.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let sent: Vec<String> = heads[0]
        .lines()
        .filter_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("traceparent: ")
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        sent,
        vec![format!(
            "00-{trace_id}-{}-01",
            hex::encode(&outbound.span_id)
        )],
        "{heads:?}"
    );

    // Without a traceparent (or with an invalid one): a new trace, a root
    // span without a parent; a denied outbound call has its span too.
    let (status, r, _) = c
        .post_with(
            "/v1/tools/http-json/get-many/invoke",
            json!({"args": {"urls": ["http://denied.example/x"]}}),
            &[("traceparent", "00-not-a-trace-01")],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let id = r["invocation_id"].as_str().unwrap();
    let (_, record) = c.get(&format!("/v1/invocations/{id}")).await;
    let new_trace = record["trace_id"].as_str().unwrap().to_string();
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace, trace_id);
    let spans = receiver.trace(&new_trace, 5).await;
    let root = one(&spans, "invoke http-json/get-many");
    assert!(root.parent_span_id.is_empty(), "a root span");
    let denied = one(&spans, "GET denied.example");
    assert_eq!(attr(denied, "toolhost.decision").as_deref(), Some("deny"));
    assert!(attr(denied, "toolhost.rule").unwrap().contains("deny"));
    assert_eq!(
        denied.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    server.stop();
}
