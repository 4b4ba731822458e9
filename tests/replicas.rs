//! Many `host serve` replicas on one PostgreSQL database: every promise
//! holds across them (budgets, one audit chain, idempotency keys,
//! approvals, change propagation, a replica killed under load, the
//! database going away and coming back). Each test runs three (or more)
//! real `host serve` processes on a fresh database of the server
//! `TOOLHOST_TEST_DATABASE_URL` names; without one it skips loudly, and
//! fails in CI.

mod common;

use common::serve::{BIN, Client, Server, ok, s};
use common::{TestServer, guest, tempdir};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 4
  per_tenant:
    day: {max_tool_calls: 6}
policy:
  allow_tools: [text-tools, hostile, issue_refund, lookup_order]
approval:
  required_for:
    - tool: issue_refund
      threshold_usd: 50
tools:
  hostile:
    limits: {timeout: 60s}
"#;

/// The same, with room for many calls.
const ROOMY: &str = r#"
workflow: "*"
budget:
  max_tool_calls: 100000
policy:
  allow_tools: [text-tools, hostile]
tools:
  hostile:
    limits: {timeout: 60s}
"#;

/// One database, a shared audit key, and the replicas' data dirs (each
/// node keeps only its own compiled artifacts there).
struct Fleet {
    url: String,
    key_file: PathBuf,
    root: PathBuf,
    nodes: std::sync::atomic::AtomicU32,
}

impl Fleet {
    async fn new(tag: &str, policy: &str) -> Option<Fleet> {
        let url = common::pg::fresh_database(tag).await?;
        let root = tempdir(tag);
        std::fs::write(root.join("policy.yaml"), policy).unwrap();
        let mut secret = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut secret)
            .unwrap();
        let key_file = root.join("audit.key");
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key_file, hex).unwrap();
        Some(Fleet {
            url,
            key_file,
            root,
            nodes: Default::default(),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOOLHOST_DATABASE_URL", self.url.clone()),
            ("TOOLHOST_AUDIT_KEY", s(&self.key_file).to_string()),
            ("TOOLHOST_DATABASE_POOL", "24".into()),
        ]
    }

    /// `host ARGS` as an admin on the database (its own data dir).
    fn host(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .args(["--data-dir", s(&self.root.join("admin"))])
            .envs(self.env())
            .output()
            .expect("running host")
    }

    fn register(&self, tenant: &str, name: &str, file: &str) {
        ok(self.host(&[
            "register",
            s(&guest(file)),
            "--name",
            name,
            "--tenant",
            tenant,
        ]));
    }

    fn key(&self, tenant: &str, roles: &[&str]) -> String {
        let mut args = vec!["keys", "create", "--tenant", tenant];
        for r in roles {
            args.extend(["--role", r]);
        }
        ok(self.host(&args)).trim().to_string()
    }

    /// A new replica: `host serve` on the database with a data dir of its
    /// own.
    fn replica(&self, extra: &[&str]) -> Server {
        self.replica_env(extra, &[])
    }

    fn replica_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let n = self.nodes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = self.root.join(format!("node-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.root.join("policy.yaml"), dir.join("policy.yaml")).unwrap();
        let base = self.env();
        let mut all: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(env);
        Server::start_env(&dir, extra, &all)
    }

    fn verify(&self) -> String {
        ok(self.host(&["audit", "verify"]))
    }
}

async fn invoke(c: &Client, tool_fn: &str, body: Value) -> (u16, Value) {
    c.post(&format!("/v1/tools/{tool_fn}/invoke"), body).await
}

async fn tool_calls(c: &Client, task: &str) -> i64 {
    let (_, u) = c.get(&format!("/v1/tasks/{task}/usage")).await;
    u["usage"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["metric"] == "tool_calls" && l["window"] == "all")
                .map(|l| l["used"].as_i64().unwrap())
                .sum()
        })
        .unwrap_or(0)
}

/// 50 concurrent calls on one task spread over three replicas, the task
/// allowing 4: exactly 4 run. Then 50 more on fresh tasks against the
/// tenant's day window of 6: exactly 2 more. All of it, and another
/// tenant's calls meanwhile, is one verifiable audit chain per tenant.
#[tokio::test(flavor = "multi_thread")]
async fn budgets_hold_across_replicas_and_the_audit_is_one_chain() {
    let Some(fleet) = Fleet::new("rep-budget", POLICY).await else {
        return;
    };
    fleet.register("acme", "text-tools", "text_tools");
    fleet.register("globex", "text-tools", "text_tools");
    let k = fleet.key("acme", &["invoke"]);
    let kg = fleet.key("globex", &["invoke"]);
    let replicas: Vec<Server> = (0..3).map(|_| fleet.replica(&[])).collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();

    let round = |task: Option<&'static str>| {
        let (urls, k, kg) = (urls.clone(), k.clone(), kg.clone());
        async move {
            let mut calls = Vec::new();
            for i in 0..50usize {
                let url = urls[i % urls.len()].clone();
                let (k, kg) = (k.clone(), kg.clone());
                calls.push(tokio::spawn(async move {
                    let task = task.map_or_else(|| format!("u{i}"), str::to_string);
                    let http = reqwest::Client::new();
                    // Another tenant appends to its own chain meanwhile.
                    let other = http
                        .post(format!("{url}/v1/tools/text-tools/hello/invoke"))
                        .bearer_auth(kg)
                        .json(&json!({"args": {"name": "g"}, "task_id": format!("g{i}")}))
                        .send();
                    let mine = http
                        .post(format!("{url}/v1/tools/text-tools/hello/invoke"))
                        .bearer_auth(k)
                        .json(&json!({"args": {"name": "x"}, "task_id": task}))
                        .send();
                    let (mine, other) = tokio::join!(mine, other);
                    let other = other.unwrap().status().as_u16();
                    let r = mine.unwrap();
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.unwrap(), other)
                }));
            }
            let mut ran = 0;
            for c in calls {
                let (status, body, other) = c.await.unwrap();
                assert!(other == 200 || other == 429, "globex: {other}");
                match status {
                    200 => ran += 1,
                    429 => assert_eq!(body["error"]["kind"], "budget_exceeded", "{body}"),
                    _ => panic!("{status}: {body}"),
                }
            }
            ran
        }
    };
    assert_eq!(round(Some("t1")).await, 4, "the task's max_tool_calls");
    assert_eq!(
        round(None).await,
        2,
        "the tenant's day window: 6 in all, 4 already used"
    );
    let c = Client::new(&replicas[1], Some(&k));
    assert_eq!(tool_calls(&c, "t1").await, 4);

    // One chain per tenant, verified as a whole, whichever replica wrote.
    let report = fleet.verify();
    assert!(
        report.contains("acme") && report.contains("globex"),
        "{report}"
    );
    for r in replicas {
        r.stop();
    }
}

/// A keyed retry reaching another replica replays (or 422s); an approval
/// requested on one replica is decided on another and runs once; of
/// concurrent decisions on three replicas exactly one wins; the approved
/// call's callback is sent once.
#[tokio::test(flavor = "multi_thread")]
async fn keys_and_approvals_work_across_replicas() {
    let Some(fleet) = Fleet::new("rep-keys", POLICY).await else {
        return;
    };
    fleet.register("acme", "text-tools", "text_tools");
    fleet.register("acme", "refund", "refund");
    let k = fleet.key("acme", &["invoke"]);
    let approver = fleet.key("acme", &["approve"]);
    let hook = TestServer::start().await;
    let allow = format!("http://127.0.0.1:{}", hook.port);
    let replicas: Vec<Server> = (0..3)
        .map(|_| fleet.replica(&["--callback-allow", &allow]))
        .collect();
    let on = |i: usize, key: &str| Client::new(&replicas[i], Some(key));

    // Idempotency: run on A, the retry on B replays, another body is 422.
    let path = "/v1/tools/text-tools/hello/invoke";
    let body = json!({"args": {"name": "Ada"}, "task_id": "idem"});
    let (s1, r1, _) = on(0, &k)
        .post_with(path, body.clone(), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(s1, 200, "{r1}");
    let (s2, r2, h2) = on(1, &k)
        .post_with(path, body.clone(), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!((s2, &r2), (s1, &r1), "replayed on another replica");
    assert_eq!(h2["idempotent-replayed"], "true");
    let (s3, p3, _) = on(2, &k)
        .post_with(
            path,
            json!({"args": {"name": "Bob"}, "task_id": "idem"}),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!((s3, &p3["kind"]), (422, &json!("idempotency_key_reused")));
    assert_eq!(tool_calls(&on(2, &k), "idem").await, 1, "ran once");
    // The same key sent to all three at once: one runs, the others replay
    // or are told it is in progress; never a second run.
    let mut racers = Vec::new();
    for r in &replicas {
        let (url, k) = (r.url.clone(), k.clone());
        racers.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{url}{path}"))
                .bearer_auth(k)
                .header("idempotency-key", "k-race")
                .json(&json!({"args": {"name": "Race"}, "task_id": "race"}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for r in racers {
        let status = r.await.unwrap();
        assert!(status == 200 || status == 409, "{status}");
    }
    assert_eq!(tool_calls(&on(0, &k), "race").await, 1);

    // Approvals: requested on A with a callback, approved on B.
    let refund = |task: &str| {
        json!({"args": {"order-id": "ord_1001", "amount-usd": 75.0}, "task_id": task,
               "callback_url": format!("{allow}/json")})
    };
    let (status, r) = invoke(&on(0, &k), "refund/issue-refund", refund("apr")).await;
    assert_eq!(status, 202, "{r}");
    let approval = r["approval_id"].as_str().unwrap().to_string();
    let (status, d) = on(1, &approver)
        .post(&format!("/v1/approvals/{approval}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["invocation"]["status"], "ok", "{d}");
    let (status, _) = on(2, &approver)
        .post(&format!("/v1/approvals/{approval}/approve"), json!({}))
        .await;
    assert_eq!(status, 409, "decided once");
    assert_eq!(tool_calls(&on(2, &k), "apr").await, 1, "ran once");

    // Concurrent decisions on all three replicas: exactly one wins.
    let (status, r) = invoke(&on(2, &k), "refund/issue-refund", refund("apr2")).await;
    assert_eq!(status, 202, "{r}");
    let id2 = r["approval_id"].as_str().unwrap().to_string();
    let mut deciders = Vec::new();
    for (i, verb) in ["approve", "deny", "approve"].into_iter().enumerate() {
        let (url, a, id) = (replicas[i].url.clone(), approver.clone(), id2.clone());
        deciders.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/approvals/{id}/{verb}"))
                .bearer_auth(a)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut won = 0;
    for d in deciders {
        match d.await.unwrap() {
            200 => won += 1,
            409 => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(won, 1, "one decision wins");
    let (_, decided) = on(0, &approver).get(&format!("/v1/approvals/{id2}")).await;
    let ran = i64::from(decided["status"] == "approved");
    assert_eq!(tool_calls(&on(0, &k), "apr2").await, ran);

    // Each decided request's callback is delivered once, by one replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = hook.requests.lock().unwrap().len();
        if n >= 2 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts = hook.requests.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "one callback per decision: {posts:?}");
    fleet.verify();
    for r in replicas {
        r.stop();
    }
}

/// A key revoked, a tool disabled, a policy stored — by the CLI or through
/// one replica — is in force on every replica within a second.
#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_every_replica_within_a_second() {
    let Some(fleet) = Fleet::new("rep-changes", ROOMY).await else {
        return;
    };
    fleet.register("acme", "text-tools", "text_tools");
    fleet.register("acme", "hostile", "hostile");
    let k = fleet.key("acme", &["invoke"]);
    let doomed = fleet.key("acme", &["invoke"]);
    let admin = fleet.key("acme", &["admin"]);
    let replicas: Vec<Server> = (0..3).map(|_| fleet.replica(&[])).collect();
    let hello = |i: usize, key: &str| {
        let c = Client::new(&replicas[i], Some(key));
        async move {
            invoke(
                &c,
                "text-tools/hello",
                json!({"args": {"name": "x"}, "task_id": format!("c{}", common::serve::rand_suffix())}),
            )
            .await
        }
    };
    // Every replica knows the key (and remembers it).
    for i in 0..3 {
        assert_eq!(hello(i, &doomed).await.0, 200);
    }
    let id = &doomed[4..20];
    ok(fleet.host(&["keys", "revoke", id]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        assert_eq!(hello(i, &doomed).await.0, 401, "replica {i}");
    }

    // A tool disabled through replica 0's API.
    for i in 0..3 {
        assert_eq!(hello(i, &k).await.0, 200);
    }
    let (status, r) = Client::new(&replicas[0], Some(&admin))
        .post("/v1/tools/text-tools/disable", json!({}))
        .await;
    assert_eq!(status, 200, "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let (status, r) = hello(i, &k).await;
        assert_ne!(status, 200, "replica {i}: {r}");
    }
    let (status, _) = Client::new(&replicas[1], Some(&admin))
        .post("/v1/tools/text-tools/enable", json!({}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        assert_eq!(hello(i, &k).await.0, 200, "replica {i}");
    }

    // A policy stored by the CLI: text-tools no longer allowed.
    let denying = fleet.root.join("deny.yaml");
    std::fs::write(&denying, ROOMY.replace("[text-tools, ", "[")).unwrap();
    ok(fleet.host(&["policy", "set", s(&denying)]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let (status, r) = hello(i, &k).await;
        assert_eq!(
            (status, &r["error"]["kind"]),
            (403, &json!("policy_denied")),
            "replica {i}: {r}"
        );
    }
    for r in replicas {
        r.stop();
    }
}

/// `kill -9` one of three replicas under load: the others keep serving,
/// the dead one's running invocations are ended by a survivor's reaper
/// (`host_lost`), every acknowledged call is recorded, the audit verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load_is_reaped_by_the_others() {
    let Some(fleet) = Fleet::new("rep-kill", ROOMY).await else {
        return;
    };
    fleet.register("acme", "text-tools", "text_tools");
    fleet.register("acme", "hostile", "hostile");
    let k = fleet.key("acme", &["invoke"]);
    let lease = ["--lease", "1s"];
    let mut replicas: Vec<Server> = (0..3).map(|_| fleet.replica(&lease)).collect();
    let survivor = Client::new(&replicas[1], Some(&k));

    // Calls that will still be running on replica 0 when it dies.
    let victim_url = replicas[0].url.clone();
    let mut doomed = Vec::new();
    for _ in 0..3 {
        let (url, k) = (victim_url.clone(), k.clone());
        doomed.push(tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(format!("{url}/v1/tools/hostile/sleep-forever/invoke"))
                .bearer_auth(k)
                .json(&json!({"task_id": "doomed"}))
                .send()
                .await;
        }));
    }
    // Load on the survivors throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for r in &replicas[1..] {
        let (url, k, stop) = (r.url.clone(), k.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http
                    .post(format!("{url}/v1/tools/text-tools/hello/invoke"))
                    .bearer_auth(&k)
                    .json(&json!({"args": {"name": "x"}, "task_id": "load"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let body: Value = r.json().await.unwrap();
                acked.push(body["invocation_id"].as_str().unwrap().to_string());
            }
            acked
        }));
    }
    // Wait until the doomed calls run, then kill their replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let (_, list) = survivor
            .get("/v1/invocations?status=running&task_id=doomed")
            .await;
        let ids: Vec<String> = list["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["invocation_id"]
                    .as_str()
                    .or(r["id"].as_str())
                    .unwrap()
                    .to_string()
            })
            .collect();
        if ids.len() == 3 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "the doomed calls never ran: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut victim = replicas.remove(0);
    Command::new("kill")
        .args(["-9", &victim.child.id().to_string()])
        .status()
        .unwrap();
    victim.child.wait().unwrap();
    for d in doomed {
        d.await.unwrap();
    }
    // The survivors' reapers end them as lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &running {
        loop {
            let (status, rec) = survivor.get(&format!("/v1/invocations/{id}")).await;
            assert_eq!(status, 200, "{rec}");
            if rec["status"] != "running" {
                assert_eq!(rec["status"], "error", "{rec}");
                assert_eq!(rec["error"]["kind"], "host_lost", "{rec}");
                break;
            }
            assert!(Instant::now() < deadline, "never reaped: {rec}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    for l in load {
        acked.extend(l.await.unwrap());
    }
    assert!(!acked.is_empty(), "the survivors kept serving");
    for id in &acked {
        let (status, rec) = survivor.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!((status, &rec["status"]), (200, &json!("ok")), "{id}: {rec}");
    }
    fleet.verify();
    for r in replicas {
        r.stop();
    }
}

/// A replica with another audit key than the one the database's trail is
/// signed with refuses to start and says why; so does a replica without
/// the key file whose store already has one.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_another_audit_key_refuses_to_start() {
    let Some(fleet) = Fleet::new("rep-key", POLICY).await else {
        return;
    };
    let first = fleet.replica(&[]);
    let other = fleet.root.join("other.key");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let node = tempdir("rep-key-node");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", s(&node)])
        .envs(fleet.env())
        .env("TOOLHOST_AUDIT_KEY", s(&other))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the key"), "{err}");
    // No --audit-key, and no key in this node's data dir: refused, and no
    // key is made.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", s(&node)])
        .env("TOOLHOST_DATABASE_URL", &fleet.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a new key is never made"), "{err}");
    assert!(!node.join("audit-signing.key").exists());
    first.stop();
}

/// A TCP relay to the database that can be cut and restored: the
/// database "goes down" for the replica behind it.
struct Relay {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String, up: bool) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(up));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let (f, c) = (flag.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !f.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay {
            port,
            up: flag,
            conns,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn host_port(url: &str) -> (String, String) {
    // postgres://user:pass@HOST:PORT/db?…
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    (host.to_string(), port.to_string())
}

/// The database down at start: the replica retries with backoff and
/// starts once it is back (or gives up with a clear error); down while
/// serving: `/readyz` is not ready and invocations are refused with a
/// problem document (503 `unavailable`); back: it recovers without a
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_going_away_and_coming_back() {
    let Some(fleet) = Fleet::new("rep-down", POLICY).await else {
        return;
    };
    fleet.register("acme", "text-tools", "text_tools");
    let k = fleet.key("acme", &["invoke"]);
    let (host, port) = host_port(&fleet.url);
    let relay = Relay::start(format!("{host}:{port}"), false).await;
    let via = fleet.url.replacen(
        &format!("@{host}:{port}/"),
        &format!("@127.0.0.1:{}/", relay.port),
        1,
    );
    assert_ne!(via, fleet.url);

    // Down for good: a clear error after the connect timeout.
    let node = tempdir("rep-down-node");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", s(&node)])
        .envs(fleet.env())
        .env("TOOLHOST_DATABASE_URL", &via)
        .env("TOOLHOST_DATABASE_CONNECT_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the database"), "{err}");
    assert!(
        !err.contains("toolhost_test@") || !err.contains(":toolhost_test@"),
        "no password: {err}"
    );

    // Down at start, back a moment later: the replica waits and starts.
    let restore = {
        let up = relay.up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            up.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let server = tokio::task::spawn_blocking({
        let env = [("TOOLHOST_DATABASE_URL", via.as_str())].map(|(k, v)| (k, v.to_string()));
        let fleet_env = fleet.env();
        let root = fleet.root.clone();
        move || {
            let dir = root.join("node-down");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(root.join("policy.yaml"), dir.join("policy.yaml")).unwrap();
            let mut all: Vec<(&str, &str)> =
                fleet_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
            Server::start_env(&dir, &[], &all)
        }
    })
    .await
    .unwrap();
    restore.await.unwrap();
    assert!(
        server.log().contains("the database is unreachable"),
        "{}",
        server.log()
    );
    let c = Client::new(&server, Some(&k));
    let call = json!({"args": {"name": "x"}, "task_id": "d"});
    let (status, r) = invoke(&c, "text-tools/hello", call.clone()).await;
    assert_eq!(status, 200, "{r}");

    // Down while serving. First at admission: the key, tool and policy
    // were just read (they are remembered for 0.5 s), so the call gets as
    // far as its admission, which the database cannot take, nor the
    // refusal's record: it stays a refusal, 503 `unavailable`, never a
    // 200.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, r) = invoke(&c, "text-tools/hello", call.clone()).await;
    assert_eq!(status, 200, "{r}");
    relay.cut();
    let (status, p) = invoke(&c, "text-tools/hello", call.clone()).await;
    assert_eq!(
        (status, &p["status"], &p["error"]["kind"]),
        (503, &json!("refused"), &json!("unavailable")),
        "{p}"
    );
    let ready = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    // Then at the key check, once the key must be read again: a problem
    // document.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, p) = invoke(&c, "text-tools/hello", call.clone()).await;
    assert_eq!((status, &p["kind"]), (503, &json!("unavailable")), "{p}");

    // Back: served again, no restart.
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = reqwest::get(format!("{}/readyz", server.url))
            .await
            .unwrap();
        if ready.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, r) = invoke(&c, "text-tools/hello", call).await;
    assert_eq!(status, 200, "{r}");
    fleet.verify();
    server.stop();
}
