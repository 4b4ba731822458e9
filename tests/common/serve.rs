//! Helpers for end-to-end tests of `host serve`: a spawned server on a
//! random port with a temporary data dir, an HTTP client, and `host`
//! commands.

use super::{guest, tempdir};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_host");

pub const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 3
policy:
  allow_tools: [text-tools, types, hostile, lookup_order, create_refund_draft]
  deny_tools: [issue_refund]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
tools:
  hostile:
    limits: {timeout: 1s, fuel: 100000000}
"#;

pub fn host(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("running host")
}

pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A data dir with a policy file, and tools registered for `acme`.
pub fn data_dir(tag: &str, tools: &[(&str, &str)]) -> PathBuf {
    data_dir_with(tag, POLICY, tools)
}

/// A data dir with `policy` as `policy.yaml`, and tools registered for
/// `acme`.
pub fn data_dir_with(tag: &str, policy: &str, tools: &[(&str, &str)]) -> PathBuf {
    let dir = tempdir(tag);
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    for (name, file) in tools {
        ok(host(&[
            "register",
            s(&guest(file)),
            "--name",
            name,
            "--tenant",
            "acme",
            "--data-dir",
            s(&dir),
        ]));
    }
    dir
}

/// Register the guest `file` as `name` for `tenant`.
pub fn register(dir: &Path, tenant: &str, name: &str, file: &str) {
    ok(host(&[
        "register",
        s(&guest(file)),
        "--name",
        name,
        "--tenant",
        tenant,
        "--data-dir",
        s(dir),
    ]));
}

pub fn key(dir: &Path, tenant: &str, roles: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--tenant", tenant, "--data-dir", s(dir)];
    for r in roles {
        args.extend(["--role", r]);
    }
    let out = ok(host(&args));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "only the key on stdout: {out:?}");
    assert!(lines[0].starts_with("thk_"));
    lines[0].to_string()
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_env(dir, extra, &[])
    }

    /// Start with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = dir.join(format!("serve-{}.log", rand_suffix()));
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", s(dir)])
            .args(["--policy", s(&dir.join("policy.yaml"))])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning host serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "no URL on stdout; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "first line: {url:?}");
        Server { child, url, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit: {status}; log:\n{}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub struct Client {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Client {
    pub fn new(server: &Server, key: Option<&str>) -> Client {
        Client {
            http: reqwest::Client::new(),
            url: server.url.clone(),
            key: key.map(str::to_string),
        }
    }

    /// Invoke hostile's `sleep-forever` (it runs until its deadline) on a
    /// task of its own, retried while refused `503` (a probe may hold the
    /// slot it wants); its answer.
    pub fn sleep_forever(&self) -> tokio::task::JoinHandle<reqwest::Response> {
        let url = format!("{}/v1/tools/hostile/sleep-forever/invoke", self.url);
        let (http, key) = (self.http.clone(), self.key.clone());
        tokio::spawn(async move {
            loop {
                let mut r = http.post(&url).json(&serde_json::json!({}));
                if let Some(k) = &key {
                    r = r.bearer_auth(k);
                }
                let r = r.send().await.unwrap();
                if r.status().as_u16() != 503 {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    /// Invoke text-tools' `hello` with `name`: the answer.
    pub async fn hello(&self, name: &str) -> (u16, Value) {
        self.post(
            "/v1/tools/text-tools/hello/invoke",
            serde_json::json!({"args": {"name": name}}),
        )
        .await
    }

    /// Invoke text-tools' `hello` up to `tries` times, `pause` apart, until
    /// it is answered `status`: whether it was.
    pub async fn hello_until(&self, status: u16, tries: usize, pause: Duration) -> bool {
        for _ in 0..tries {
            let (got, _) = self.hello("x").await;
            if got == status {
                return true;
            }
            tokio::time::sleep(pause).await;
        }
        false
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.auth(self.http.get(format!("{}{path}", self.url)));
        answer(r.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.url)))
            .json(&body);
        answer(r.send().await.unwrap()).await
    }

    /// POST JSON with extra headers; also returns the response headers.
    pub async fn post_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut r = self
            .auth(self.http.post(format!("{}{path}", self.url)))
            .json(&body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let response = r.send().await.unwrap();
        let h = response.headers().clone();
        let (status, body) = answer(response).await;
        (status, body, h)
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.url)))
            .header("content-type", content_type)
            .body(body);
        answer(r.send().await.unwrap()).await
    }
}

pub async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = r.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{status}: body is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    if status >= 400 && body.get("invocation_id").is_none() {
        assert_eq!(ct, "application/problem+json", "{status} {body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["kind"].is_string() && body["detail"].is_string(),
            "{body}"
        );
    }
    (status, body)
}
