//! The essay's reports end to end: `GET /v1/stats` and `host stats` over a
//! spawned server's records (and after it stopped: they come from the
//! store), the records' own fields (arguments, decision, charge), and the
//! listing's time and kind filters.

mod common;

use common::serve::{Client, Server, data_dir_with, host, key, ok, s};
use serde_json::{Value, json};

const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 20
  max_input_tokens: 100000
policy:
  allow_tools: [text-tools, hostile]
  deny_tools: [issue_refund]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
logging:
  redact_fields: [secret]
tools:
  hostile:
    limits: {timeout: 1s, fuel: 100000000}
  text-tools:
    price: {per_call_usd: 0.25}
"#;

fn function<'a>(report: &'a Value, tool: &str, function: &str) -> &'a Value {
    report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["tool"] == tool && f["function"] == function)
        .unwrap_or_else(|| panic!("no {tool}/{function} in {report}"))
}

#[tokio::test]
async fn reports_count_fail_time_and_cost_from_the_records() {
    let dir = data_dir_with(
        "stats",
        POLICY,
        &[
            ("text-tools", "text_tools"),
            ("hostile", "hostile"),
            ("refund", "refund"),
        ],
    );
    let agent = key(&dir, "acme", &["invoke"]);
    let auditor = key(&dir, "acme", &["audit"]);
    let admin = key(&dir, "acme", &["admin"]);
    let stranger = key(&dir, "globex", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&agent));
    let started = toolhost::clock::now_ms();

    // Four hellos in task t1 (0.25 USD each), one fuel failure and one
    // unknown-function refusal in t2, one call parked for approval.
    for _ in 0..4 {
        let (status, r) = c
            .post(
                "/v1/tools/text-tools/hello/invoke",
                json!({"args": {"name": "x"}, "task_id": "t1"}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let (_, r) = c
        .post("/v1/tools/hostile/spin/invoke", json!({"task_id": "t2"}))
        .await;
    assert_eq!(r["error"]["kind"], "fuel_exhausted");
    let (status, _) = c
        .post(
            "/v1/tools/text-tools/nope/invoke",
            json!({"args": {}, "task_id": "t2"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, parked) = c
        .post(
            "/v1/tools/refund/issue-refund/invoke",
            json!({"args": {"order-id": "ord_1002", "amount-usd": 120.0}, "task_id": "t3"}),
        )
        .await;
    assert_eq!(status, 202, "{parked}");
    let (status, _) = c
        .post(
            "/v1/tasks/t1/usage",
            json!({"input_tokens": 1200, "output_tokens": 300}),
        )
        .await;
    assert_eq!(status, 200);
    // Another tenant's calls are not in acme's report.
    let (status, _) = Client::new(&server, Some(&stranger)).get("/v1/stats").await;
    assert_eq!(status, 200);

    let (status, report) = Client::new(&server, Some(&auditor))
        .get("/v1/stats?since=1h")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["tenant"], "acme");
    assert_eq!(report["sample_size"], 7, "{report}");
    assert_eq!(report["truncated"], false);
    let since = report["range"]["since_ms"].as_i64().unwrap();
    let until = report["range"]["until_ms"].as_i64().unwrap();
    assert!(since <= started && until >= started, "{report}");
    assert!(report["range"]["since"].as_str().unwrap().ends_with('Z'));
    let totals = &report["totals"];
    assert_eq!(
        (
            &totals["ok"],
            &totals["error"],
            &totals["refused"],
            &totals["unfinished"]
        ),
        (&json!(4), &json!(1), &json!(1), &json!(1)),
        "{totals}"
    );
    // 2 failures of 6 finished calls.
    let rate = totals["failure_rate"].as_f64().unwrap();
    assert!((rate - 2.0 / 6.0).abs() < 1e-9, "{totals}");
    let hello = function(&report, "text-tools", "hello");
    assert_eq!(hello["count"], 4);
    assert_eq!(hello["failure_rate"], 0.0);
    assert_eq!(hello["latency_ms"]["samples"], 4);
    for p in ["p50", "p95", "p99"] {
        assert!(hello["latency_ms"][p].is_i64(), "{hello}");
    }
    assert_eq!(hello["cost_micro_usd"], 1_000_000, "4 calls at 0.25 USD");
    let spin = function(&report, "hostile", "spin");
    assert_eq!(spin["failure_rate"], 1.0);
    assert_eq!(spin["failures"][0]["kind"], "fuel_exhausted");
    let nope = function(&report, "text-tools", "nope");
    assert_eq!(nope["failures"][0]["kind"], "unknown_function", "{nope}");
    assert_eq!(nope["latency_ms"]["samples"], 0, "refusals did not run");
    // Per task: calls, cost, and the tokens from its ledger.
    let tasks = report["tasks"].as_array().unwrap();
    let t1 = tasks.iter().find(|t| t["task_id"] == "t1").unwrap();
    assert_eq!((&t1["invocations"], &t1["calls"]), (&json!(4), &json!(4)));
    assert_eq!(t1["cost_usd"], 1.0);
    assert_eq!(t1["ledger"]["input_tokens"], 1200, "{t1}");
    assert_eq!(t1["ledger"]["output_tokens"], 300, "{t1}");
    let t2 = tasks.iter().find(|t| t["task_id"] == "t2").unwrap();
    assert_eq!((&t2["calls"], &t2["failures"]), (&json!(1), &json!(2)));
    assert_eq!(report["task_count"], 3);
    let buckets = report["series"]["buckets"].as_array().unwrap();
    let counted: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 7);

    // Filters.
    let (_, only) = c.get("/v1/stats?tool=hostile&since=1h").await;
    assert_eq!(only["sample_size"], 1, "{only}");
    assert_eq!(only["filter"]["tool"], "hostile");
    let (_, none) = c.get("/v1/stats?since=1h&until=30m").await;
    assert_eq!(none["sample_size"], 0, "{none}");
    // Bad ranges are 400 problems naming the parameter.
    for q in [
        "since=yesterday",
        "since=1h&until=2h",
        "since=0&until=99999999999999",
    ] {
        let (status, p) = c.get(&format!("/v1/stats?{q}")).await;
        assert_eq!(status, 400, "{q}: {p}");
    }
    let (status, _) = c.get("/v1/stats?tenant=globex").await;
    assert_eq!(status, 400, "no tenant parameter: the key's tenant");
    // Admins read them too; no key, no report.
    let (status, _) = Client::new(&server, Some(&admin)).get("/v1/stats").await;
    assert_eq!(status, 200);
    let (status, _) = Client::new(&server, None).get("/v1/stats").await;
    assert_eq!(status, 401);

    // The record carries its redacted arguments, the decision and the
    // charge; the listing filters by kind and time.
    let (_, list) = c.get("/v1/invocations?kind=fuel_exhausted&since=1h").await;
    let listed = list["invocations"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["function"], "spin");
    assert_eq!(listed[0]["charged"]["tool_calls"], 1, "{list}");
    let (_, later) = c.get("/v1/invocations?since=2999-01-01").await;
    assert_eq!(later["invocations"], json!([]));
    let id = parked["invocation_id"].as_str().unwrap();
    let (_, rec) = c.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(rec["args"]["amount-usd"], 120.0, "{rec}");
    assert!(rec["args_sha256"].is_string(), "{rec}");
    assert!(
        rec["decision"]["rule"]
            .as_str()
            .unwrap()
            .contains("approval"),
        "{rec}"
    );
    server.stop();

    // The same report from the data dir, without the server.
    let out = ok(host(&[
        "stats",
        "--tenant",
        "acme",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--json",
        "--data-dir",
        s(&dir),
    ]));
    let cli: Value = serde_json::from_str(&out).unwrap();
    let mut api = report.clone();
    // Task ledgers are read at report time; nothing changed since.
    api["range"] = cli["range"].clone();
    assert_eq!(cli, api, "the CLI and the API give the same report");
    let text = ok(host(&[
        "stats",
        "--tenant",
        "acme",
        "--since",
        "1h",
        "--data-dir",
        s(&dir),
    ]));
    assert!(text.contains("hostile"), "{text}");
    assert!(text.contains("fuel_exhausted=1"), "{text}");
    assert!(text.contains("t1"), "{text}");
    let bad = host(&["stats", "--since", "soon", "--data-dir", s(&dir)]);
    assert_eq!(bad.status.code(), Some(2), "bad usage");
}
