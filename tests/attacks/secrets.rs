//! Secrets the host injects never come back out: not to the caller, not
//! into records, the audit trail, exports, idempotent answers or the
//! result cache; and the data dir is private.

use crate::common::TestServer;
use crate::common::serve::{Client, Server, data_dir_with, key, s};
use serde_json::json;
use std::path::Path;

const SECRET: &str = "sk_live_ECHOED_BACK_41c9e2";

fn policy(port: u16) -> String {
    format!(
        r#"
workflow: "*"
policy:
  allow_tools: [read-env, get-json]
tools:
  read-env:
    env:
      API_KEY: "{{{{secret:shop_token}}}}"
      REGION: eu-west-1
    cache: {{ttl: 10m}}
  http-json:
    allow_cidrs: [127.0.0.0/8]
    http:
      - url: http://localhost:{port}
        headers: {{Authorization: "Bearer {{{{secret:shop_token}}}}"}}
"#
    )
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn assert_nowhere(dir: &Path, secret: &str) {
    for path in files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret leaked into {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_or_returned_secret_is_scrubbed_everywhere() {
    let echo = TestServer::start().await;
    let dir = data_dir_with(
        "attack-secrets",
        &policy(echo.port),
        &[("hostile", "hostile"), ("http-json", "http-json")],
    );
    let secrets_dir = crate::common::tempdir("attack-secrets-file");
    let secrets = secrets_dir.join("secrets.yaml");
    std::fs::write(&secrets, format!("shop_token: {SECRET}\n")).unwrap();
    let server = Server::start(&dir, &["--secrets", s(&secrets)]);
    let invoker = key(&dir, "acme", &["invoke"]);
    let c = Client::new(&server, Some(&invoker));

    // A destination that echoes the request's headers (many do on errors).
    let url = format!("http://localhost:{}/echo", echo.port);
    let (status, body) = c
        .post(
            "/v1/tools/http-json/get-json/invoke",
            json!({"args": {"url": url}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = echo.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|h| h.contains(&format!("Bearer {SECRET}"))),
        "the secret went on the wire: {seen:?}"
    );
    let text = body.to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("authorization: [SECRET]"), "{text}");

    // An environment secret the guest returns, with an idempotency key
    // (the answer is kept) and a cache (the result is kept).
    let (status, body, _) = c
        .post_with(
            "/v1/tools/hostile/read-env/invoke",
            json!({}),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains(SECRET) && text.contains("[SECRET]"),
        "{text}"
    );
    let (_, replay, headers) = c
        .post_with(
            "/v1/tools/hostile/read-env/invoke",
            json!({}),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert!(!replay.to_string().contains(SECRET));
    let (_, cached) = c.post("/v1/tools/hostile/read-env/invoke", json!({})).await;
    assert_eq!(cached["cached"], true, "{cached}");
    assert!(!cached.to_string().contains(SECRET));

    // An export of the trail.
    let export = dir.join("export.jsonl");
    crate::common::serve::ok(crate::common::serve::host(&[
        "audit",
        "export",
        "--tenant",
        "acme",
        "--data-dir",
        s(&dir),
        "--output",
        s(&export),
    ]));
    server.stop();
    // Nothing on disk holds it: database, WAL, export, server log.
    assert_nowhere(&dir, SECRET);
}

#[test]
fn the_data_dir_is_private_and_looser_modes_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let parent = crate::common::tempdir("attack-perms");
    let dir = parent.join("data");
    crate::common::serve::ok(crate::common::serve::host(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--role",
        "invoke",
        "--data-dir",
        s(&dir),
    ]));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data dir");
    for f in files(&dir) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert!(files(&dir).iter().any(|f| f.ends_with("toolhost.db")));

    // An operator loosened it: `host serve` says so at start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.join("toolhost.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), crate::common::serve::POLICY).unwrap();
    std::fs::set_permissions(
        dir.join("policy.yaml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let server = Server::start(&dir, &[]);
    let log = server.log();
    drop(server);
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(log.contains("toolhost.db"), "{log}");
}
