//! Test harness: builds the real guest components in `guest-examples/` once
//! per test binary (plain `cargo build --release --target wasm32-wasip2`, as
//! a tool author would) and shares one runtime.

#![allow(dead_code)]

pub mod pg;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use toolhost::gate::SandboxOnly;
use toolhost::{Host, LoadOptions, Runtime, RuntimeConfig, Tool};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Build every guest example once; return the directory holding the `.wasm` files.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root().join("guest-examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"]);
        // Do not leak the outer build's settings into the guest build.
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" {
                cmd.env_remove(key);
            }
        }
        let status = cmd.status().expect("running cargo to build guest-examples");
        assert!(
            status.success(),
            "building guest-examples failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
        root.join("target/wasm32-wasip2/release")
    })
}

/// The path of a built guest component, by crate name (`text-tools`).
pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(&RuntimeConfig::default()).expect("runtime")))
        .clone()
}

/// Load (compile) a guest once per test binary.
pub fn tool(name: &str) -> Arc<Tool> {
    static TOOLS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Tool>>>> =
        OnceLock::new();
    let tools = TOOLS.get_or_init(Default::default);
    if let Some(t) = tools.lock().unwrap().get(name) {
        return t.clone();
    }
    let t = Arc::new(
        runtime()
            .load_file(&guest(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("loading {name}: {e}")),
    );
    tools.lock().unwrap().insert(name.to_string(), t.clone());
    t
}

/// A host with the sandbox-only gate.
pub fn host() -> Host {
    Host::new(runtime(), Arc::new(SandboxOnly))
}

pub fn call(function: &str, args: serde_json::Value) -> toolhost::Call {
    toolhost::Call {
        function: function.into(),
        args,
        limits: toolhost::Limits::default(),
        context: Default::default(),
    }
}

/// A fresh temporary directory.
pub fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "toolhost-{tag}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for outbound tests. Paths:
/// `/json` a small JSON body, `/echo` the request head (in JSON), `/big`
/// 2 MiB, `/slow` answers after 5 s;
/// anything else 404. Every request's head is kept.
pub struct TestServer {
    pub port: u16,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    seen.lock().unwrap().push(head.clone());
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, body): (&str, Vec<u8>) = match path.split('?').next().unwrap() {
                        "/json" => ("200 OK", br#"{"orders": 3}"#.to_vec()),
                        // The request's head, as many APIs echo it on errors.
                        "/echo" => (
                            "200 OK",
                            serde_json::json!({ "you_sent": head })
                                .to_string()
                                .into_bytes(),
                        ),
                        "/big" => ("200 OK", vec![b'x'; 2 << 20]),
                        "/slow" => {
                            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                            ("200 OK", b"{}".to_vec())
                        }
                        _ => ("404 Not Found", b"{}".to_vec()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        TestServer { port, requests }
    }
}
