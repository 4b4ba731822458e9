//! Crash safety, end to end: `kill -9` a loaded `host serve`, restart it,
//! and check what every promise says must hold. And a panic in a tool's
//! host call path.

mod common;

use common::serve::{BIN, Client, Server, data_dir_with, key, s};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 100000
policy:
  allow_tools: [hello, sleep-forever, get-json]
tools:
  hostile:
    limits: {timeout: 1500ms}
  http-json:
    allow_cidrs: [127.0.0.0/8]
    http:
      - url: http://panic.toolhost.test
"#;

const TOOLS: &[(&str, &str)] = &[
    ("text-tools", "text-tools"),
    ("hostile", "hostile"),
    ("http-json", "http-json"),
];

/// One client's answers: key → (status, invocation id).
type Answers = Arc<Mutex<HashMap<String, (u16, String)>>>;

/// The requests client `c` sends in round `r`: (path, body, key).
fn request(r: usize, c: usize, n: usize) -> (String, Value, String) {
    let key = format!("k-{r}-{c}-{n}");
    let task = format!("t{c}");
    if n % 3 == 2 {
        (
            "/v1/tools/hostile/sleep-forever/invoke".into(),
            json!({"task_id": task}),
            key,
        )
    } else {
        (
            "/v1/tools/text-tools/hello/invoke".into(),
            json!({"task_id": task, "args": {"name": format!("{c}-{n}")}}),
            key,
        )
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    api_key: &str,
    (path, body, key): &(String, Value, String),
) -> Option<(u16, Value)> {
    let r = client
        .post(format!("{url}{path}"))
        .bearer_auth(api_key)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.ok()?;
    Some((status, body))
}

async fn running(c: &Client) -> Vec<Value> {
    let (status, body) = c.get("/v1/invocations?status=running&limit=500").await;
    assert_eq!(status, 200, "{body}");
    body["invocations"].as_array().unwrap().clone()
}

/// Invocation audit entries per idempotency key hash, read off the store.
async fn audited_runs(dir: &std::path::Path) -> HashMap<String, usize> {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM audit_entries")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut runs = HashMap::new();
    for b in bodies {
        let v: Value = serde_json::from_str(&b).unwrap();
        if v["type"] == "invocation"
            && let Some(h) = v["idempotency_key_sha256"].as_str()
        {
            *runs.entry(h.to_string()).or_insert(0) += 1;
        }
    }
    runs
}

fn sha(key: &str) -> String {
    toolhost::audit::canonical::sha256_hex(key.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_nothing_acknowledged_and_leaks_nothing() {
    let dir = data_dir_with("crash", POLICY, TOOLS);
    let api_key = key(&dir, "acme", &["invoke", "audit"]);
    let lease = ["--lease", "1s"];
    let mut all: HashMap<String, (u16, String)> = HashMap::new();
    let mut sent: Vec<(String, Value, String)> = Vec::new();
    for round in 0..3 {
        let mut server = Server::start(&dir, &lease);
        let answers: Answers = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..12 {
            let (url, api_key, answers, stop) = (
                server.url.clone(),
                api_key.clone(),
                answers.clone(),
                stop.clone(),
            );
            clients.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut mine = Vec::new();
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let req = request(round, c, n);
                    mine.push(req.clone());
                    match send(&http, &url, &api_key, &req).await {
                        Some((status, body)) if body["invocation_id"].is_string() => {
                            answers.lock().unwrap().insert(
                                req.2.clone(),
                                (status, body["invocation_id"].as_str().unwrap().to_string()),
                            );
                        }
                        // The server died under it.
                        None => break,
                        Some((status, body)) => panic!("{status}: {body}"),
                    }
                }
                mine
            }));
        }
        // Load for a while, then kill -9 mid-flight (calls are running).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in clients {
            sent.extend(c.await.unwrap());
        }
        let answered = answers.lock().unwrap().clone();
        assert!(
            !answered.is_empty(),
            "round {round}: nothing answered before the kill"
        );
        all.extend(answered);
        drop(server);

        // Restart: the reaper ends what the dead host left.
        let server = Server::start(&dir, &lease);
        let c = Client::new(&server, Some(&api_key));
        let mut left = running(&c).await;
        for _ in 0..200 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = running(&c).await;
        }
        assert!(left.is_empty(), "round {round}: still running: {left:?}");
        // The kill did catch calls mid-flight: some ended as lost.
        let (_, lost) = c.get("/v1/invocations?status=error&limit=500").await;
        let reaped = lost["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["error"]["kind"] == "host_lost")
            .count();
        assert!(
            reaped > 0,
            "round {round}: no call was in flight at the kill"
        );
        // Every acknowledged invocation has its record, finished.
        for (key, (status, id)) in &all {
            let (code, rec) = c.get(&format!("/v1/invocations/{id}")).await;
            assert_eq!(code, 200, "{key} ({status}): {rec}");
            assert_ne!(rec["status"], "running", "{rec}");
        }
        // Retrying every request sent (answered or not) runs nothing twice:
        // an answered key replays its answer.
        let http = reqwest::Client::new();
        for req in &sent {
            let Some((status, body)) = send(&http, &server.url, &api_key, req).await else {
                panic!("retry failed")
            };
            if let Some((_, id)) = all.get(&req.2) {
                assert_eq!(
                    body["invocation_id"].as_str(),
                    Some(id.as_str()),
                    "{status} {body}"
                );
            } else {
                assert!(body["invocation_id"].is_string(), "{status}: {body}");
                all.insert(
                    req.2.clone(),
                    (status, body["invocation_id"].as_str().unwrap().into()),
                );
            }
        }
        // No reservation is left; the ledgers equal the records that ran.
        for client in 0..12 {
            let task = format!("t{client}");
            let (_, usage) = c.get(&format!("/v1/tasks/{task}/usage")).await;
            for line in usage["usage"].as_array().unwrap() {
                assert_eq!(line["reserved"], 0, "{task}: {line}");
            }
            let used = usage["usage"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["metric"] == "tool_calls")
                .map_or(0, |l| l["used"].as_i64().unwrap());
            let (_, recs) = c
                .get(&format!("/v1/invocations?task_id={task}&limit=500"))
                .await;
            let ran = recs["invocations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["status"] == "ok" || r["status"] == "error")
                .count() as i64;
            assert_eq!(used, ran, "{task}: ledger vs records");
        }
        server.stop();
        // The audit trail verifies; every key ran at most once.
        let out = std::process::Command::new(BIN)
            .args(["audit", "verify", "--data-dir", s(&dir)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let runs = audited_runs(&dir).await;
        let keys: HashSet<&String> = all.keys().collect();
        for key in keys {
            assert_eq!(
                runs.get(&sha(key)).copied(),
                Some(1),
                "{key} ran {:?} times",
                runs.get(&sha(key))
            );
        }
    }
}

/// A panic inside a tool's host call path (injected in test builds) ends the
/// invocation's task: its reservation is not leaked, its row ends as
/// `host_lost`, and the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_host_call_path_leaks_no_reservation() {
    let dir = data_dir_with("panic", POLICY, TOOLS);
    let api_key = key(&dir, "acme", &["invoke", "audit"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&api_key));
    let (status, body) = c
        .post(
            "/v1/tools/http-json/get-json/invoke",
            json!({"task_id": "p", "args": {"url": "http://panic.toolhost.test/x"}}),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    // Ended by the reaper at once (not after the lease).
    let mut rec = Value::Null;
    for _ in 0..100 {
        let (_, list) = c.get("/v1/invocations?task_id=p").await;
        rec = list["invocations"][0].clone();
        if rec["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rec["error"]["kind"], "host_lost", "{rec}");
    let (_, usage) = c.get("/v1/tasks/p/usage").await;
    for line in usage["usage"].as_array().unwrap() {
        assert_eq!(line["reserved"], 0, "{line}");
    }
    let (status, ok) = c.hello("x").await;
    assert_eq!(status, 200, "{ok}");
    server.stop();
}
