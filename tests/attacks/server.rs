//! The HTTP server under attack: noisy neighbours, bodies sent before (or
//! instead of) a valid key, ambiguous headers, plain-text errors, unknown
//! key ids.

use crate::common::serve::{
    Client, Server, answer, data_dir, data_dir_with, host, key, ok, register,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc};

/// An HTTP server that holds every request it receives until released:
/// tells when a request arrives (the invocation that sent it is running),
/// and answers it only when the test says so.
struct Hold {
    port: u16,
    arrived: Mutex<mpsc::UnboundedReceiver<()>>,
    release: Arc<Semaphore>,
}

impl Hold {
    async fn start() -> Hold {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        let release = Arc::new(Semaphore::new(0));
        let gate = release.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let (tx, gate) = (tx.clone(), gate.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(());
                    gate.acquire().await.unwrap().forget();
                    let _ = c
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                        .await;
                });
            }
        });
        Hold {
            port,
            arrived: Mutex::new(rx),
            release,
        }
    }

    /// Wait until a request arrives.
    async fn arrived(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.arrived.lock().await.recv())
            .await
            .expect("no request reached the held server")
            .unwrap();
    }

    /// Answer `n` requests (held or still to come).
    fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

/// Tools may reach the held server; its calls wait as long as it holds them.
fn hold_policy(port: u16) -> String {
    format!(
        r#"
workflow: "*"
policy:
  allow_tools: [http-json, text-tools]
tools:
  http-json:
    allow_cidrs: [127.0.0.0/8]
    limits: {{timeout: 60s}}
    http:
      - url: http://localhost:{port}
        methods: [GET]
        timeout: 60s
"#
    )
}

/// A call that runs until the held server answers it.
fn slow_call(server: &Server, key: &str, port: u16) -> tokio::task::JoinHandle<(u16, Value)> {
    let c = Client::new(server, Some(key));
    let url = format!("http://localhost:{port}/slow");
    tokio::spawn(async move {
        c.post(
            "/v1/tools/http-json/get-json/invoke",
            json!({"args": {"url": url}}),
        )
        .await
    })
}

fn hello(server: &Server, key: &str, name: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let c = Client::new(server, Some(key));
    let body = json!({"args": {"name": name}});
    tokio::spawn(async move { c.post("/v1/tools/text-tools/hello/invoke", body).await })
}

/// Wait until the server's log has `n` lines containing `what`.
async fn logged(server: &Server, what: &str, n: usize) {
    for _ in 0..1500 {
        if server.log().lines().filter(|l| l.contains(what)).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never logged {n} × {what:?}:\n{}", server.log());
}

/// Read one HTTP/1.1 answer: status, head, JSON body.
async fn read_answer(c: &mut TcpStream) -> (u16, String, Value) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = serde_json::from_slice(&buf[end + 4..end + 4 + length])
                        .unwrap_or(Value::Null);
                    return (status, head, body);
                }
            }
            let n = c.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-answer: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no answer")
}

/// Send a request head (and no body), read the answer.
async fn head_only(addr: String, head: String) -> (u16, String, Value) {
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    read_answer(&mut c).await
}

fn post_head(path: &str, auth: Option<&str>, length: usize) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_flooding_slow_calls_does_not_starve_another_tenant() {
    let hold = Hold::start().await;
    let dir = data_dir_with(
        "attack-fair",
        &hold_policy(hold.port),
        &[("http-json", "http_json")],
    );
    register(&dir, "beta", "text-tools", "text_tools");
    let a = key(&dir, "acme", &["invoke"]);
    let b = key(&dir, "beta", &["invoke"]);
    // Two slots; by default one tenant may hold half of them.
    let server = Server::start(
        &dir,
        &["--max-concurrency", "2", "--request-timeout", "10s"],
    );
    let flood: Vec<_> = (0..4).map(|_| slow_call(&server, &a, hold.port)).collect();
    hold.arrived().await;
    // Before: acme's calls held both slots and queued ahead of beta's,
    // which got 503 at its deadline.
    let (status, r) = hello(&server, &b, "beta").await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(
        flood.iter().all(|t| !t.is_finished()),
        "served while all of acme's calls were running or queued"
    );
    hold.release(100);
    for t in flood {
        let (status, r) = t.await.unwrap();
        assert_eq!((status, &r["status"]), (200, &json!("ok")), "{r}");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_freed_slot_goes_to_the_tenant_served_longest_ago() {
    let hold = Hold::start().await;
    let dir = data_dir_with(
        "attack-turn",
        &hold_policy(hold.port),
        &[("http-json", "http_json")],
    );
    register(&dir, "beta", "text-tools", "text_tools");
    let a = key(&dir, "acme", &["invoke"]);
    let b = key(&dir, "beta", &["invoke"]);
    let server = Server::start_env(
        &dir,
        &["--max-concurrency", "1", "--request-timeout", "20s"],
        &[("RUST_LOG", "info,toolhost::server::fair=debug")],
    );
    let a1 = slow_call(&server, &a, hold.port);
    hold.arrived().await;
    // acme's second call waits, then beta's: the oldest waiter is acme's.
    let a2 = slow_call(&server, &a, hold.port);
    logged(&server, "queued for a slot", 1).await;
    let b1 = hello(&server, &b, "beta");
    logged(&server, "queued for a slot", 2).await;
    hold.release(1);
    // The slot a1 frees goes to beta (never served), not to acme's older
    // waiter, which would hold it until released.
    let (status, r) = b1.await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert!(!a2.is_finished());
    hold.release(100);
    for t in [a1, a2] {
        let (status, r) = t.await.unwrap();
        assert_eq!((status, &r["status"]), (200, &json!("ok")), "{r}");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_past_its_share_gets_429_and_others_are_served() {
    let hold = Hold::start().await;
    let dir = data_dir_with(
        "attack-share",
        &hold_policy(hold.port),
        &[("http-json", "http_json"), ("text-tools", "text_tools")],
    );
    register(&dir, "beta", "text-tools", "text_tools");
    let a = key(&dir, "acme", &["invoke"]);
    let b = key(&dir, "beta", &["invoke"]);
    let server = Server::start(
        &dir,
        &[
            "--max-concurrency",
            "4",
            "--tenant-max-concurrency",
            "1",
            "--tenant-max-queue",
            "0",
        ],
    );
    let a1 = slow_call(&server, &a, hold.port);
    hold.arrived().await;
    let (status, r, h) = Client::new(&server, Some(&a))
        .post_with(
            "/v1/tools/text-tools/hello/invoke",
            json!({"args": {"name": "a"}}),
            &[],
        )
        .await;
    assert_eq!(
        (status, &r["kind"]),
        (429, &json!("tenant_overloaded")),
        "{r}"
    );
    assert_eq!(h["retry-after"], "1");
    assert!(r["detail"].as_str().unwrap().contains("acme"), "{r}");
    let (status, r) = hello(&server, &b, "beta").await.unwrap();
    assert_eq!(status, 200, "{r}");
    hold.release(1);
    assert_eq!(a1.await.unwrap().0, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_keeps_its_slot_after_its_request_ends() {
    let hold = Hold::start().await;
    let dir = data_dir_with(
        "attack-outlive",
        &hold_policy(hold.port),
        &[("http-json", "http_json"), ("text-tools", "text_tools")],
    );
    let a = key(&dir, "acme", &["invoke"]);
    let server = Server::start(
        &dir,
        &[
            "--max-concurrency",
            "4",
            "--tenant-max-concurrency",
            "1",
            "--tenant-max-queue",
            "0",
            "--request-timeout",
            "2s",
        ],
    );
    let slow = slow_call(&server, &a, hold.port);
    hold.arrived().await;
    // The request ends (504 at its deadline; a client hanging up is the
    // same) while its invocation runs on.
    let (status, r) = slow.await.unwrap();
    assert_eq!((status, &r["kind"]), (504, &json!("timeout")), "{r}");
    // Before: the slot went with the request, so a tenant could run any
    // number of invocations past its cap (and the server's) by letting its
    // requests end.
    let c = Client::new(&server, Some(&a));
    let (status, r) = c.hello("a").await;
    assert_eq!(
        (status, &r["kind"]),
        (429, &json!("tenant_overloaded")),
        "{r}"
    );
    // Once the invocation ends, the slot is free.
    hold.release(1);
    for _ in 0..500 {
        let (status, _) = c.hello("a").await;
        if status == 200 {
            server.stop();
            return;
        }
        assert_eq!(status, 429);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the slot was never freed");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_not_read_before_the_key_and_its_role_are_checked() {
    let dir = data_dir("attack-auth", &[("text-tools", "text_tools")]);
    let invoker = key(&dir, "acme", &["invoke"]);
    let approver = key(&dir, "acme", &["approve"]);
    // Before: bodies were read first, so these waited for bodies that never
    // came and got 504 at the deadline.
    let server = Server::start(&dir, &["--request-timeout", "5s"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let unknown = format!("Bearer thk_{}_{}", "0".repeat(16), "1".repeat(64));
    let invoke = "/v1/tools/text-tools/hello/invoke";
    // Many at once, each declaring the largest body and sending none.
    let mut waiting = Vec::new();
    for i in 0..30 {
        let auth = match i % 3 {
            0 => None,
            1 => Some(unknown.as_str()),
            _ => Some("Basic YWRtaW46YWRtaW4="),
        };
        waiting.push(tokio::spawn(head_only(
            addr.clone(),
            post_head(invoke, auth, 1 << 20),
        )));
    }
    for w in waiting {
        let (status, head, r) = w.await.unwrap();
        assert_eq!(
            (status, &r["kind"]),
            (401, &json!("unauthenticated")),
            "{r}"
        );
        assert!(head.contains("application/problem+json"), "{head}");
    }
    // A valid key without the route's role: 403, body unread.
    let bearer = |k: &str| format!("Bearer {k}");
    let (status, _, r) = head_only(
        addr.clone(),
        post_head(invoke, Some(&bearer(&approver)), 1 << 20),
    )
    .await;
    assert_eq!((status, &r["kind"]), (403, &json!("forbidden")), "{r}");
    // An upload (read by its handler, up to --max-upload) by a non-admin.
    let (status, _, r) = head_only(
        addr.clone(),
        post_head("/v1/tools?name=x", Some(&bearer(&invoker)), 64 << 20),
    )
    .await;
    assert_eq!((status, &r["kind"]), (403, &json!("forbidden")), "{r}");
    // A declared body past --max-body: 413 before reading it.
    let (status, _, r) = head_only(
        addr.clone(),
        post_head(invoke, Some(&bearer(&invoker)), 2 << 20),
    )
    .await;
    assert_eq!(
        (status, &r["kind"]),
        (413, &json!("payload_too_large")),
        "{r}"
    );
    // Two Authorization headers (a proxy may read the other one): refused,
    // not half-read.
    let body = r#"{"args": {"name": "x"}}"#;
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {invoke} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {invoker}\r\nAuthorization: {unknown}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let (status, _, r) = read_answer(&mut c).await;
    assert_eq!(
        (status, &r["kind"]),
        (401, &json!("unauthenticated")),
        "{r}"
    );
    // The same request with one key and its body is served.
    let (status, r) = Client::new(&server, Some(&invoker))
        .post(invoke, json!({"args": {"name": "x"}}))
        .await;
    assert_eq!(status, 200, "{r}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn body_memory_is_bounded_in_all_and_per_tenant() {
    let dir = data_dir("attack-bodies", &[("text-tools", "text_tools")]);
    register(&dir, "beta", "text-tools", "text_tools");
    register(&dir, "gamma", "text-tools", "text_tools");
    let a = key(&dir, "acme", &["invoke"]);
    let b = key(&dir, "beta", &["invoke"]);
    let c = key(&dir, "gamma", &["invoke"]);
    let server = Server::start_env(
        &dir,
        &[
            "--max-body",
            "1KiB",
            "--max-body-memory",
            "2KiB",
            "--request-timeout",
            "20s",
        ],
        &[("RUST_LOG", "info,toolhost::server::bodies=debug")],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let invoke = "/v1/tools/text-tools/hello/invoke";
    // A tenant's share is half the pool (1 KiB): of two 1 KiB bodies it
    // starts, one holds the share and the other is refused at once.
    let hold = |k: String| {
        let addr = addr.clone();
        async move {
            let head = post_head(invoke, Some(&format!("Bearer {k}")), 1024);
            let mut first = TcpStream::connect(&addr).await.unwrap();
            let mut second = TcpStream::connect(&addr).await.unwrap();
            first.write_all(head.as_bytes()).await.unwrap();
            second.write_all(head.as_bytes()).await.unwrap();
            let ((status, head, r), holder) = tokio::select! {
                a = read_answer(&mut first) => (a, second),
                a = read_answer(&mut second) => (a, first),
            };
            assert_eq!(
                (status, &r["kind"]),
                (429, &json!("tenant_overloaded")),
                "{r}"
            );
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
            holder
        }
    };
    let mut held_a = hold(a).await;
    let held_b = hold(b).await;
    // The pool is full: gamma's body waits for bytes.
    let waiting = hello(&server, &c, "gamma");
    logged(&server, "waiting for body memory", 1).await;
    // acme's held request sends its body: it is served, and its bytes go
    // to gamma.
    let name = "x".repeat(1024 - r#"{"args": {"name": ""}}"#.len());
    let body = format!(r#"{{"args": {{"name": "{name}"}}}}"#);
    assert_eq!(body.len(), 1024);
    held_a.write_all(body.as_bytes()).await.unwrap();
    let (status, _, r) = read_answer(&mut held_a).await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = waiting.await.unwrap();
    assert_eq!(status, 200, "{r}");
    // (Else shutdown waits for its body until the deadline.)
    drop(held_b);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_or_repeated_idempotency_key_is_refused() {
    let dir = data_dir("attack-idem", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["invoke"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    let hello = |headers: &'static [(&'static str, &'static str)]| {
        let c = &c;
        async move {
            c.post_with(
                "/v1/tools/text-tools/hello/invoke",
                json!({"args": {"name": "x"}}),
                headers,
            )
            .await
        }
    };
    let (status, r, _) = hello(&[("idempotency-key", "")]).await;
    assert_eq!(
        (status, &r["kind"]),
        (400, &json!("invalid_request")),
        "{r}"
    );
    // Before: the first was used and the second ignored.
    let (status, r, _) = hello(&[("idempotency-key", "k1"), ("idempotency-key", "k2")]).await;
    assert_eq!(
        (status, &r["kind"]),
        (400, &json!("invalid_request")),
        "{r}"
    );
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("one Idempotency-Key"),
        "{r}"
    );
    let (status, r, _) = hello(&[("idempotency-key", "k1")]).await;
    assert_eq!(status, 200, "{r}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_a_problem_document() {
    let dir = data_dir("attack-problems", &[("text-tools", "text_tools")]);
    let k = key(&dir, "acme", &["admin"]);
    let server = Server::start(&dir, &[]);
    let c = Client::new(&server, Some(&k));
    // Path parameters that are not UTF-8: axum's rejection was text/plain.
    // (`answer` checks every error is application/problem+json with its
    // status and a kind.)
    for path in [
        "/v1/tools/%FF",
        "/v1/invocations/%FF",
        "/v1/tasks/%FF/usage",
        "/v1/approvals/%FF",
    ] {
        let (status, r) = c.get(path).await;
        assert_eq!(
            (status, &r["kind"]),
            (400, &json!("invalid_request")),
            "{path}: {r}"
        );
    }
    for path in [
        "/v1/tools/%FF/invoke",
        "/v1/tools/%FF/deploy",
        "/v1/tools/%FF/disable",
        "/v1/approvals/%FF/approve",
        "/v1/tasks/%FF/usage",
    ] {
        let (status, r) = c.post(path, json!({})).await;
        assert_eq!(
            (status, &r["kind"]),
            (400, &json!("invalid_request")),
            "{path}: {r}"
        );
    }
    // Not a route, not a method the route takes.
    let (status, _) = c.get("/v2/nothing").await;
    assert_eq!(status, 404);
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/tools", server.url))
        .bearer_auth(&k)
        .send()
        .await
        .unwrap();
    let (status, _) = answer(r).await;
    assert_eq!(status, 405);
    server.stop();
}

#[test]
fn serve_help_describes_the_secrets_file_as_it_is_read() {
    let help = ok(host(&["serve", "--help"]));
    let secrets = help
        .split("--secrets")
        .nth(1)
        .and_then(|s| s.split("\n  -").next())
        .unwrap_or_default();
    // Before: "`name=value` lines", but the file is a YAML map.
    assert!(!secrets.contains("name=value"), "{secrets}");
    assert!(secrets.contains("YAML"), "{secrets}");
}

#[tokio::test]
async fn unknown_key_ids_are_remembered_briefly() {
    use toolhost::keys::{self, Role};
    use toolhost::server::auth::KeyCache;
    use toolhost::storage::memory::MemoryStorage;
    use toolhost::storage::prelude::*;
    let elsewhere = MemoryStorage::new();
    let made = keys::create(&elsewhere, "acme", &[Role::Invoke], None)
        .await
        .unwrap();
    let storage = MemoryStorage::new();
    let cache = KeyCache::new(Duration::from_secs(3600));
    let refused = cache.authenticate(&storage, &made.key).await.unwrap_err();
    assert_eq!(refused.kind, toolhost::ErrorKind::Unauthenticated);
    // The key appears in storage; within the TTL the cache answers from
    // memory that the id is unknown, without reading the key table.
    storage.key_put(made.record.clone()).await.unwrap();
    let refused = cache.authenticate(&storage, &made.key).await.unwrap_err();
    assert_eq!(refused.kind, toolhost::ErrorKind::Unauthenticated);
    // A fresh cache (as after the TTL) reads it.
    let fresh = KeyCache::new(Duration::from_secs(3600));
    assert_eq!(
        fresh.authenticate(&storage, &made.key).await.unwrap().id,
        made.record.id
    );
}
