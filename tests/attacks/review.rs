//! Holes an adversarial review of the lifecycle, audit and secrets work
//! found: each test reproduced one on the code it was written against.

use serde_json::json;
use std::sync::Arc;
use toolhost::audit::AuditLog;
use toolhost::ids::{InvocationId, TenantId};
use toolhost::storage::prelude::*;
use toolhost::storage::*;

async fn backends(tag: &str) -> Vec<(&'static str, Arc<dyn Storage>, std::path::PathBuf)> {
    let dir = crate::common::tempdir(tag);
    let sqlite: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir.join("sqlite"))
            .await
            .unwrap(),
    );
    let memory: Arc<dyn Storage> = Arc::new(toolhost::storage::memory::MemoryStorage::new());
    vec![
        ("memory", memory, dir.join("memory")),
        ("sqlite", sqlite, dir.join("sqlite")),
    ]
}

fn run(id: &str, owner: &str, lease_until: i64, key: Option<&str>) -> NewRun {
    NewRun {
        id: id.into(),
        tenant: "acme".into(),
        tool: "t".into(),
        function: "f".into(),
        version: Some("1".into()),
        workflow: None,
        task_id: Some("task".into()),
        principal: Some("k".into()),
        transport: "http".into(),
        idempotency_key: key.map(str::to_string),
        created_ms: 1,
        owner: owner.into(),
        lease_until,
    }
}

fn record(id: &str, status: &str) -> InvocationRecord {
    InvocationRecord {
        id: id.into(),
        tenant: "acme".into(),
        tool: "t".into(),
        function: "f".into(),
        version: Some("1".into()),
        workflow: None,
        task_id: Some("task".into()),
        principal: Some("k".into()),
        status: toolhost::storage::Status::parse(status).unwrap(),
        error_kind: None,
        created_ms: 1,
        response: json!({"invocation_id": id, "status": status}).to_string(),
    }
}

fn begin(id: &str) -> KeyBegin {
    KeyBegin {
        tenant: "acme".into(),
        key: "k1".into(),
        fingerprint: "fp".into(),
        now_ms: 10,
        expires_ms: 100_000,
        run: run(id, "hst_a", 1000, Some("k1")),
    }
}

/// Finding 1. A keyed invocation whose lease lapsed while its owner was
/// still alive (renewals failed or were late for one lease length; the
/// wall clock stepped forward; another replica's clock runs ahead) is
/// forgotten by the reaper with its key. Its owner then admits it anyway:
/// `admit_in` takes a missing row as "new" and inserts it admitted. The
/// call runs, its answer is written to a key row that no longer exists,
/// and a retry with the same key runs it a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_keyed_invocation_is_not_admitted_afterwards() {
    let mut failed = Vec::new();
    for (name, s, _) in backends("review-forget-admit").await {
        assert_eq!(
            s.idempotency_begin(begin("inv_1")).await.unwrap(),
            IdempotencyBegin::Started
        );
        // The reaper (any host) finds the lease expired and forgets it.
        assert!(
            s.invocation_forget(
                &InvocationId::from("inv_1"),
                Expect::Expired { now_ms: 2000 }
            )
            .await
            .unwrap()
        );
        // The owner, still alive, reaches admission for the row it began.
        let admitted = s
            .invocation_admit(Admit {
                run: run("inv_1", "hst_a", 20_000, Some("k1")),
                worst: vec![],
                existing: true,
            })
            .await
            .unwrap();
        if admitted != Err(Refused::Taken) {
            failed.push(format!("{name}: {admitted:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "the row the key began was forgotten (its key with it); admitting it anew runs a \
         keyed call whose key no longer points at it: {failed:?}"
    );
}

/// Finding 1b. An end's IdempotencyDone updates the key whatever
/// invocation the key now points at (`UPDATE idempotency ... WHERE tenant
/// AND key`, memory: `finish`): the stale invocation's answer overwrites
/// the key of the retry that is running, so that retry's own retries get
/// the other invocation's answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_end_answers_only_the_key_that_points_at_it() {
    let mut failed = Vec::new();
    for (name, s, dir) in backends("review-key-crosstalk").await {
        let log = AuditLog::open(s.clone(), &dir).await.unwrap();
        s.idempotency_begin(begin("inv_1")).await.unwrap();
        assert!(
            s.invocation_forget(
                &InvocationId::from("inv_1"),
                Expect::Expired { now_ms: 2000 }
            )
            .await
            .unwrap()
        );
        // A retry with the key starts inv_2 (the key now points at it).
        assert_eq!(
            s.idempotency_begin(begin("inv_2")).await.unwrap(),
            IdempotencyBegin::Started
        );
        // inv_1's owner ends it (no row: Expect::Mine accepts that) and
        // answers "its" key.
        let work = Work {
            end: Some(End {
                record: record("inv_1", "ok"),
                expect: Expect::Mine {
                    owner: "hst_a".into(),
                },
                used: Some(vec![]),
            }),
            idempotency: vec![IdempotencyDone {
                tenant: "acme".into(),
                key: "k1".into(),
                invocation_id: "inv_1".into(),
                response: "{\"from\":\"inv_1\"}".into(),
            }],
            ..Work::default()
        };
        log.commit(vec![("acme".into(), 20, json!({"n": 1}))], work)
            .await
            .unwrap();
        // inv_2 still runs: a retry must be told so, not given inv_1's answer.
        let again = s.idempotency_begin(begin("inv_3")).await.unwrap();
        if again != IdempotencyBegin::InProgress {
            failed.push(format!("{name}: {again:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "inv_1's end answered the key that points at the running inv_2: {failed:?}"
    );
}

/// Finding 2. An export's `export` statement signs only its last entry
/// (chain, seq, hash, time): nothing signed says where the export starts
/// (`since`, the first seq and its prev_hash). Anyone holding the file can
/// drop its first records — all but the last — and `host audit verify
/// --file` still says ok.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_cut_at_the_front_does_not_verify() {
    use toolhost::audit::verify;
    const T0: i64 = 1_790_000_000_000;
    let dir = crate::common::tempdir("review-export");
    let storage: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let log = AuditLog::open(storage, &dir).await.unwrap();
    for i in 1..=20 {
        log.append(vec![(
            "acme".into(),
            T0 + i,
            json!({"type": "invocation", "n": i}),
        )])
        .await
        .unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(
        verify::export(&log, "acme", None, None, &mut out)
            .await
            .unwrap(),
        20
    );
    let text = String::from_utf8(out).unwrap();
    let whole = verify::verify_export(&mut text.as_bytes(), Some(&log.public_key())).unwrap();
    assert!(whole.ok && whole.entries == 20);
    // Keep the header, the last entry and the signed export statement.
    let lines: Vec<&str> = text.lines().collect();
    let kept: Vec<&str> = lines
        .iter()
        .filter(|l| !l.contains(r#""type":"entry""#) || l.contains(r#""seq":20,"#))
        .copied()
        .collect();
    let cut = kept.join("\n");
    let r = verify::verify_export(&mut cut.as_bytes(), Some(&log.public_key())).unwrap();
    assert!(
        !r.ok,
        "an export with 19 of its 20 records removed verifies ({} entries)",
        r.entries
    );
}

// ---------------------------------------------------------------- secrets

const SECRET: &str = "sk_live_REVIEW_5ec2e7a9d1";

struct Tok;
impl toolhost::secrets::SecretSource for Tok {
    fn get(&self, name: &str) -> Option<toolhost::secrets::Secret> {
        (name == "tok").then(|| toolhost::secrets::Secret::new(SECRET))
    }
}

/// A destination that echoes the Authorization header it got: `/h` in a
/// response header with one non-ASCII byte after it (obs-text, legal), `/t`
/// in a chunked trailer.
async fn echo_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
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
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization:")
                            .then(|| l[14..].trim().to_string())
                    })
                    .unwrap_or_default();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut resp = Vec::new();
                if path == "/t" {
                    resp.extend_from_slice(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-echo\r\nconnection: close\r\n\r\n2\r\n{}\r\n0\r\nx-echo: ",
                    );
                    resp.extend_from_slice(auth.as_bytes());
                    resp.extend_from_slice(b"\r\n\r\n");
                } else {
                    resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nx-echo: ");
                    resp.extend_from_slice(auth.as_bytes());
                    resp.extend_from_slice(
                        b" \xe9\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    );
                }
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

fn leaky_host(port: u16) -> (toolhost::Host, std::path::PathBuf) {
    let policy = format!(
        r#"
workflow: "*"
policy:
  allow_tools: [leaky]
tools:
  leaky:
    env:
      API_KEY: "{{{{secret:tok}}}}"
    allow_cidrs: [127.0.0.0/8]
    http:
      - url: http://127.0.0.1:{port}
        headers: {{Authorization: "Bearer {{{{secret:tok}}}}"}}
"#
    );
    let dir = crate::common::tempdir("review-secrets");
    let rt = tokio::runtime::Handle::current();
    let (storage, audit) = tokio::task::block_in_place(|| {
        rt.block_on(async {
            let storage: Arc<dyn Storage> = Arc::new(
                toolhost::storage::sqlite::SqliteStorage::open(&dir)
                    .await
                    .unwrap(),
            );
            let audit = AuditLog::open(storage.clone(), &dir).await.unwrap();
            (storage, audit)
        })
    });
    let gate = toolhost::gate::Governed::new(
        Arc::new(toolhost::policy::Policy::parse("p.yaml", &policy).unwrap()),
        toolhost::budget::Ledger::new(storage),
        audit,
        Arc::new(Tok),
    );
    (
        toolhost::Host::new(crate::common::runtime(), Arc::new(gate)),
        dir,
    )
}

fn context() -> toolhost::gate::CallContext {
    toolhost::gate::CallContext {
        tenant: "acme".into(),
        principal: Some("k".into()),
        ..Default::default()
    }
}

/// Every byte the invocation produced that reaches the caller or disk.
fn everything(outcome: &toolhost::Outcome) -> Vec<u8> {
    use base64::Engine as _;
    let mut all = serde_json::to_vec(outcome).unwrap();
    if let Some(serde_json::Value::String(s)) = outcome
        .result
        .as_ref()
        .map(|r| r.get("ok").cloned().unwrap_or_else(|| r.clone()))
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s)
    {
        all.extend(bytes);
    }
    all
}

fn holds(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Finding 4. A `list<u8>` result is rendered as base64 by the host
/// (`value::val_to_json`), after which `Outcome::scrub` looks for the
/// secret's plain text in strings and never finds it: an env-granted
/// secret returned as bytes reaches the caller, the record, the audit
/// trail's redacted result, the cache and idempotent answers. The same
/// value returned as `string` is scrubbed. README: "Everything the host
/// injected ... is scrubbed ... in the result".
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_in_a_bytes_result_is_scrubbed() {
    let (host, _dir) = leaky_host(1);
    let tool = crate::common::tool("leaky");
    let mut call = crate::common::call("env-text", json!({}));
    call.context = context();
    let text = host.invoke(&tool, &call).await;
    assert!(text.ok, "{:?}", text.error);
    assert!(
        !holds(&everything(&text), SECRET),
        "string results are scrubbed"
    );
    call.function = "env-bytes".into();
    let bytes = host.invoke(&tool, &call).await;
    assert!(bytes.ok, "{:?}", bytes.error);
    assert!(
        !holds(&everything(&bytes), SECRET),
        "the env secret comes back base64-encoded in a list<u8> result: {:?}",
        bytes.result
    );
}

/// Finding 5. The guest reads an echoed secret unscrubbed when the
/// destination echoes it in a header value with a non-visible-ASCII byte
/// (`HeaderValue::to_str` fails, the value is skipped) or in a chunked
/// trailer (`Capped::pass` passes trailers through). README: "the response
/// headers and body the guest reads have the secrets of that request
/// replaced". With a bytes result it then reaches the caller too.
#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_secret_never_reaches_the_guest() {
    let port = echo_server().await;
    let (host, _dir) = leaky_host(port);
    let tool = crate::common::tool("leaky");
    let mut leaks = Vec::new();
    for (function, path) in [("header-bytes", "/h"), ("trailer-bytes", "/t")] {
        let mut call = crate::common::call(
            function,
            json!({"url": format!("http://127.0.0.1:{port}{path}")}),
        );
        call.context = context();
        let out = host.invoke(&tool, &call).await;
        assert!(out.ok, "{function}: {:?}", out.error);
        let seen = out.result.clone().unwrap();
        assert!(seen.get("ok").is_some(), "{function}: {seen}");
        if holds(&everything(&out), SECRET) {
            leaks.push(function);
        }
    }
    assert!(
        leaks.is_empty(),
        "the guest read the echoed secret in: {leaks:?}"
    );
}

/// Finding 6. Captured stdout is cut at `max_stdio_bytes` before it is
/// scrubbed: a secret straddling the cut is no longer the whole value, so
/// its first bytes are returned and recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_cut_by_the_stdout_cap_is_not_half_returned() {
    let (host, _dir) = leaky_host(1);
    let tool = crate::common::tool("leaky");
    let prefix = "x".repeat(90);
    let mut call = crate::common::call(
        "print",
        json!({"text": format!("{prefix}{SECRET}\n"), "times": 1}),
    );
    call.context = context();
    call.limits.max_stdio_bytes = 90 + SECRET.len() - 4;
    // (The text is the injected value, as a guest printing its config
    // would print it; the scrubber knows it, the cut hides it.)
    let out = host.invoke(&tool, &call).await;
    assert!(out.ok, "{:?}", out.error);
    let kept = &SECRET[..SECRET.len() - 4];
    assert!(
        !out.stdout.contains(kept),
        "{} of the secret's {} bytes are in stdout: {:?}",
        kept.len(),
        SECRET.len(),
        out.stdout
    );
}

// ---------------------------------------------------------------- lifecycle

const T0: i64 = 1_790_000_000_000;

struct Node {
    storage: Arc<dyn Storage>,
    clock: Arc<toolhost::clock::ManualClock>,
    audit: Arc<AuditLog>,
    dir: std::path::PathBuf,
}

async fn node(tag: &str) -> Node {
    let dir = crate::common::tempdir(tag);
    let storage: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let audit = AuditLog::open(storage.clone(), &dir).await.unwrap();
    Node {
        storage,
        clock: toolhost::clock::ManualClock::new(T0),
        audit,
        dir,
    }
}

fn service(n: &Node) -> Arc<toolhost::service::InvocationService> {
    let instance =
        toolhost::lease::Instance::new(n.clock.clone(), std::time::Duration::from_secs(15));
    let gate = Arc::new(
        toolhost::gate::Governed::new(
            Arc::new(
                toolhost::policy::Policy::parse(
                    "p.yaml",
                    "workflow: w\npolicy:\n  allow_tools: [hello]\n",
                )
                .unwrap(),
            ),
            toolhost::budget::Ledger::new(n.storage.clone()),
            n.audit.clone(),
            Arc::new(toolhost::secrets::NoSecrets),
        )
        .with_instance(instance.clone()),
    );
    Arc::new(toolhost::service::InvocationService::new(
        Arc::new(toolhost::Host::new(crate::common::runtime(), gate)),
        Some(toolhost::service::Keys {
            audit: n.audit.clone(),
            retention: std::time::Duration::from_secs(86_400),
        }),
        instance,
    ))
}

/// Finding 1c. The reaper reaps rows of its own host that it knows are
/// alive (in its own `Live` set) as soon as their lease has run out: after
/// a wall-clock step forward of one lease, or a stall of the renewer (a
/// paused process, a busy writer), the first of {renewer, reaper} to run
/// decides. An admitted call is ended `host_lost` while it still runs (its
/// caller then gets `conflict`), a keyed one not yet admitted is forgotten
/// with its key — and then admitted anyway (finding 1).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_does_not_reap_what_it_is_running() {
    let n = node("review-self-reap").await;
    let owner = service(&n);
    let id = "inv_live";
    let _running = owner.instance().live().enter(&InvocationId::from(id));
    n.storage
        .idempotency_begin(KeyBegin {
            tenant: "acme".into(),
            key: "k".into(),
            fingerprint: "fp".into(),
            now_ms: T0,
            expires_ms: T0 + 86_400_000,
            run: run(
                id,
                &owner.instance().id,
                owner.instance().lease_until(),
                Some("k"),
            ),
        })
        .await
        .unwrap();
    n.clock.advance(16_000);
    assert_eq!(
        owner.reap().await.unwrap(),
        0,
        "the host reaped (forgot, with its key) an invocation it is running"
    );
}

/// A keyed invocation `id` running on `owner`, then its row edited by hand
/// (`update`, straight into the SQLite file).
async fn keyed_row_edited(n: &Node, id: &str, owner: &str, update: &str) {
    n.storage
        .idempotency_begin(KeyBegin {
            tenant: "acme".into(),
            key: "k".into(),
            fingerprint: "fp".into(),
            now_ms: T0,
            expires_ms: T0 + 86_400_000,
            run: run(id, owner, T0 + 15_000, Some("k")),
        })
        .await
        .unwrap();
    use sqlx::Connection;
    let url = format!("sqlite://{}", n.dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(update.to_string()))
        .execute(&mut c)
        .await
        .unwrap();
}

/// Finding 7. A value in the database that does not decode (sqlx `Row::get`
/// panics) kills the reaper task for good: `start_lifecycle` spawns `loop {
/// reap().await }` and a panic ends the loop. One poisoned row — written
/// by anyone with write access to the database — stops reaping on every
/// host: lost invocations keep their reservations, approvals never expire.
#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_row_does_not_kill_the_reaper() {
    let n = node("review-poison").await;
    let svc = service(&n);
    keyed_row_edited(
        &n,
        "inv_dead",
        "hst_dead",
        "UPDATE invocations SET admitted = 'yes' WHERE id = 'inv_dead'",
    )
    .await;
    n.clock.advance(20_000);
    let reaped = tokio::spawn(async move { svc.reap().await.map_err(|e| e.message) }).await;
    assert!(
        reaped.is_ok(),
        "the reaper panicked on a row it could not decode: {:?}",
        reaped.err()
    );
}

/// A status no host writes (a hand-edited row) reads as a `corrupt` error
/// that names it: never a panic, never passed on as if it meant something.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_stored_status_is_an_error_that_names_it() {
    let n = node("review-status").await;
    keyed_row_edited(
        &n,
        "inv_odd",
        "hst_1",
        "UPDATE invocations SET status = 'finished?' WHERE id = 'inv_odd'",
    )
    .await;
    let (tenant, id) = (TenantId::from("acme"), InvocationId::from("inv_odd"));
    let storage = n.storage.clone();
    let got = tokio::spawn(async move { storage.invocation_get(&tenant, &id).await })
        .await
        .expect("reading the row panicked");
    let err = got.expect_err("a status no host writes was read as a record");
    assert_eq!(err.kind, toolhost::ErrorKind::Corrupt, "{}", err.message);
    assert!(err.message.contains("finished?"), "{}", err.message);
    let listed = n
        .storage
        .invocation_list(
            &"acme".into(),
            InvocationFilter {
                limit: 10,
                ..InvocationFilter::default()
            },
        )
        .await;
    assert_eq!(listed.unwrap_err().kind, toolhost::ErrorKind::Corrupt);
}

/// A value of the wrong type in a hand-edited row (text where a number is
/// stored) reads as a `corrupt` error: API keys, tool versions and audit
/// entries are read with `try_get`, never `Row::get`, which panics.
#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_column_is_an_error_not_a_panic() {
    let n = node("review-mistyped").await;
    n.storage
        .key_put(ApiKeyRecord {
            id: "0123456789abcdef".into(),
            tenant: "acme".into(),
            roles: vec!["invoke".into()],
            hash: "00".repeat(32),
            label: None,
            created_ms: T0,
            revoked_ms: None,
        })
        .await
        .unwrap();
    use sqlx::Connection;
    let url = format!("sqlite://{}", n.dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE api_keys SET created_ms = 'yesterday'")
        .execute(&mut c)
        .await
        .unwrap();
    let storage = n.storage.clone();
    let got = tokio::spawn(async move { storage.key_get(&"0123456789abcdef".into()).await })
        .await
        .expect("reading the key panicked");
    let err = got.expect_err("a mistyped row was read as a key");
    assert_eq!(err.kind, toolhost::ErrorKind::Corrupt, "{}", err.message);
    let storage = n.storage.clone();
    let listed = tokio::spawn(async move { storage.key_list(None).await })
        .await
        .expect("listing the keys panicked");
    assert_eq!(listed.unwrap_err().kind, toolhost::ErrorKind::Corrupt);
    // The policy in force, likewise.
    n.storage
        .policy_put("p.yaml", "workflow: w", T0)
        .await
        .unwrap();
    sqlx::query("UPDATE policies SET created_ms = 'yesterday'")
        .execute(&mut c)
        .await
        .unwrap();
    let storage = n.storage.clone();
    let policy = tokio::spawn(async move { storage.policy_current().await })
        .await
        .expect("reading the policy panicked");
    assert_eq!(policy.unwrap_err().kind, toolhost::ErrorKind::Corrupt);
}

/// Finding 8. `host run --policy` (the CLI, on the server's data dir)
/// starts the whole lifecycle, outbox deliverer included, but never sets a
/// callback allowlist: the deliverer claims every due callback, `check`
/// refuses it (`forbidden`: "this server takes no callback URLs") and the
/// message is marked `failed` for good. One CLI run fails every pending
/// approval callback of the server's tenants.
#[tokio::test(flavor = "multi_thread")]
async fn a_cli_run_does_not_fail_the_servers_callbacks() {
    let dir = crate::common::tempdir("review-cli-outbox");
    {
        let storage: Arc<dyn Storage> = Arc::new(
            toolhost::storage::sqlite::SqliteStorage::open(&dir)
                .await
                .unwrap(),
        );
        let log = AuditLog::open(storage.clone(), &dir).await.unwrap();
        let now = toolhost::clock::now_ms();
        let work = Work {
            outbox: vec![OutboxMessage {
                id: 0,
                tenant: "acme".into(),
                invocation_id: "inv_cb".into(),
                approval_id: Some("apr_cb".into()),
                url: "https://hooks.example.com/done".into(),
                created_ms: now,
                attempts: 0,
                state: "pending".into(),
                last_error: None,
                delivered_ms: None,
            }],
            ..Work::default()
        };
        log.commit(
            vec![("acme".into(), now, json!({"type": "approval_decision"}))],
            work,
        )
        .await
        .unwrap();
    }
    std::fs::write(
        dir.join("p.yaml"),
        "workflow: w\npolicy:\n  allow_tools: [sleep-forever]\n",
    )
    .unwrap();
    // A call that lasts a second (it times out): the CLI's lifecycle runs
    // meanwhile, as it does during any call longer than a few milliseconds.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args([
            "run",
            crate::common::guest("hostile").to_str().unwrap(),
            "sleep-forever",
        ])
        .args(["--timeout", "1s", "--policy"])
        .arg(dir.join("p.yaml"))
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timeout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let storage = toolhost::storage::sqlite::SqliteStorage::open(&dir)
        .await
        .unwrap();
    let m = storage.outbox_for("acme", "inv_cb").await.unwrap();
    assert_eq!(
        m[0].state, "pending",
        "the CLI's deliverer gave the server's callback up: {:?}",
        m[0]
    );
}

// ---------------------------------------------------------------- audit

/// Finding 9 (high). Without the key, a database writer rewrites history
/// and has the host sign it: strip every statement (the format mark, the
/// registry, the head signatures, the checkpoints), cut or edit the
/// records (the chain hash is unkeyed SHA-256: recompute it), and the next
/// `AuditLog::open` — `host serve`, `host run --policy`, even `host audit
/// verify` itself — takes the store for a legacy one and re-signs it "as it
/// is at that moment". Verification then says ok.
#[tokio::test(flavor = "multi_thread")]
async fn a_stripped_store_is_not_re_signed_as_legacy() {
    use toolhost::audit::verify;
    let dir = crate::common::tempdir("review-downgrade");
    let storage: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let log = AuditLog::open(storage.clone(), &dir).await.unwrap();
    for i in 1..=20 {
        log.append(vec![(
            "acme".into(),
            T0 + i,
            json!({"type": "invocation", "n": i}),
        )])
        .await
        .unwrap();
    }
    let key = verify::parse_key(&log.public_key()).unwrap();
    assert!(verify::verify(&storage, &key, None).await.unwrap().ok);
    // The intruder: drop records 11..20, point the head at 10, strip every
    // signed statement and the format mark.
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for s in [
        "DELETE FROM audit_entries WHERE chain = 'acme' AND seq > 10",
        "UPDATE audit_heads SET seq = 10, hash = (SELECT hash FROM audit_entries WHERE chain = 'acme' AND seq = 10),
           signed_seq = NULL, signed_hash = NULL, signed_time_ms = NULL, signature = NULL, signed_statement = NULL",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM meta WHERE key IN ('audit.format', 'audit.registry')",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    }
    drop(c);
    // Before any host touches it, verification sees it.
    assert!(!verify::verify(&storage, &key, None).await.unwrap().ok);
    // Any host command opens the trail: it refuses (nothing is re-signed
    // without an operator's `host audit upgrade`)...
    let reopened = AuditLog::open(storage.clone(), &dir).await;
    assert_eq!(
        reopened.err().map(|e| e.kind),
        Some(toolhost::ErrorKind::Corrupt)
    );
    // ...and an explicit upgrade finds no legacy signature to vouch for it.
    let upgraded = AuditLog::upgrade_legacy(storage.clone(), &dir)
        .await
        .unwrap();
    assert_eq!(upgraded.chains.len(), 0, "{upgraded:?}");
    let r = verify::verify(&storage, &key, None).await.unwrap();
    assert!(
        !r.ok,
        "10 acknowledged records were deleted without the key and the trail verifies: {r:?}"
    );
}

/// Finding 10 (high). The next commit signs whatever the unsigned head
/// columns say: `commit_in` links new entries onto `SELECT seq, hash FROM
/// audit_heads` (memory: `tips`) and signs the result. A database writer
/// without the key deletes the chain's last records, sets the head row's
/// `seq`/`hash` to the last record kept, and waits for the next
/// invocation: its commit continues the cut chain and signs a head over
/// it. README: cannot "cut a chain's end, including its most recent
/// acknowledged records (every commit signs its head)".
#[tokio::test(flavor = "multi_thread")]
async fn the_next_commit_does_not_sign_a_cut_chain() {
    use toolhost::audit::verify;
    let dir = crate::common::tempdir("review-launder");
    let storage: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let log = AuditLog::open(storage.clone(), &dir).await.unwrap();
    for i in 1..=20 {
        log.append(vec![(
            "acme".into(),
            T0 + i,
            json!({"type": "invocation", "n": i}),
        )])
        .await
        .unwrap();
    }
    let key = verify::parse_key(&log.public_key()).unwrap();
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for s in [
        "DELETE FROM audit_entries WHERE chain = 'acme' AND seq > 10",
        "UPDATE audit_heads SET seq = 10, hash = (SELECT hash FROM audit_entries WHERE chain = 'acme' AND seq = 10)",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    }
    drop(c);
    assert!(
        !verify::verify(&storage, &key, None).await.unwrap().ok,
        "seen until…"
    );
    // …and the next invocation's commit refuses to continue the cut chain
    // (nothing is signed over it).
    let next = log
        .append(vec![(
            "acme".into(),
            T0 + 21,
            json!({"type": "invocation", "n": 21}),
        )])
        .await;
    assert_eq!(
        next.err().map(|e| e.kind),
        Some(toolhost::ErrorKind::Corrupt)
    );
    let r = verify::verify(&storage, &key, None).await.unwrap();
    assert!(
        !r.ok,
        "10 acknowledged records were deleted without the key; the next commit signed over the cut: {r:?}"
    );
}

// ---------------------------------------------------------------- arguments

/// Finding 11. A `map<string, V>` argument may also be sent as `[key,
/// value]` pairs (`to_val`'s `(_, Value::Array)` arm matches string keys
/// too), and pairs may repeat a key. The guest receives every pair, in
/// order; the canonical JSON — what policy (`amounts`, Cedar `args`), the
/// cache key, the fingerprint and the records read — keeps only the last.
/// A guest that takes the first (a linear lookup) runs with a value no
/// decision saw.
#[test]
fn a_map_argument_cannot_name_one_key_twice() {
    use toolhost::tool::{Param, Ty};
    let params = vec![Param {
        name: "amounts".into(),
        ty: Ty::Map(Box::new(Ty::String), Box::new(Ty::U32)),
    }];
    let args = json!({"amounts": [["usd", 499], ["usd", 1]]});
    match toolhost::value::canonical_args("refund", &params, &args) {
        Err(_) => {}
        Ok(c) => {
            let toolhost_pairs = match &c.vals[0] {
                wasmtime::component::Val::Map(pairs) => pairs.len(),
                other => panic!("{other:?}"),
            };
            panic!(
                "accepted: the guest gets {toolhost_pairs} pairs (first usd = 499), every \
                 reader of the canonical arguments sees {}",
                c.json
            );
        }
    }
}

/// Finding 10b. The same for a whole chain: delete every entry, checkpoint
/// and the head row of a tenant; its next record starts the chain again at
/// seq 1 (`link` takes a missing head for a new chain, even one the signed
/// registry lists) and the trail verifies.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_commit_does_not_restart_a_deleted_chain() {
    use toolhost::audit::verify;
    let dir = crate::common::tempdir("review-restart");
    let storage: Arc<dyn Storage> = Arc::new(
        toolhost::storage::sqlite::SqliteStorage::open(&dir)
            .await
            .unwrap(),
    );
    let log = AuditLog::open(storage.clone(), &dir).await.unwrap();
    for i in 1..=20 {
        log.append(vec![("acme".into(), T0 + i, json!({"n": i}))])
            .await
            .unwrap();
    }
    let key = verify::parse_key(&log.public_key()).unwrap();
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "DELETE FROM audit_entries WHERE chain = 'acme'; DELETE FROM audit_heads WHERE chain = 'acme';
         DELETE FROM audit_checkpoints WHERE chain = 'acme';",
    )
    .execute(&mut c)
    .await
    .unwrap();
    drop(c);
    assert!(!verify::verify(&storage, &key, None).await.unwrap().ok);
    let next = log
        .append(vec![("acme".into(), T0 + 21, json!({"n": 21}))])
        .await;
    assert_eq!(
        next.err().map(|e| e.kind),
        Some(toolhost::ErrorKind::Corrupt)
    );
    let r = verify::verify(&storage, &key, None).await.unwrap();
    assert!(!r.ok, "a deleted chain restarted and verifies: {r:?}");
}
