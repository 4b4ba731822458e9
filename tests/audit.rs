//! The audit trail is tamper-evident: `verify` finds every edit, removal,
//! insertion, reordering and truncation and says where; pruning and export
//! keep what remains verifiable.

mod common;

use common::tempdir;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toolhost::audit::verify::{self, Report};
use toolhost::audit::{AuditLog, chain_hash};
use toolhost::storage::prelude::*;
use toolhost::storage::sqlite::SqliteStorage;

const T0: i64 = 1_790_000_000_000;

async fn trail(n: i64) -> (PathBuf, Arc<AuditLog>) {
    let dir = tempdir("audit");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let log = AuditLog::open(storage, &dir).await.unwrap();
    for i in 1..=n {
        log.append(vec![(
            "acme".into(),
            T0 + i * 86_400_000,
            json!({"type": "invocation", "n": i}),
        )])
        .await
        .unwrap();
    }
    (dir, log)
}

async fn check(log: &AuditLog) -> Report {
    let key = verify::parse_key(&log.public_key()).unwrap();
    verify::verify(log.storage(), &key, None).await.unwrap()
}

async fn sql(dir: &Path, statements: &[&str]) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for s in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn hash_of(dir: &Path, seq: i64) -> (String, i64) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_as("SELECT hash, time_ms FROM audit_entries WHERE seq = ?")
        .bind(seq)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

fn problems(r: &Report) -> Vec<String> {
    r.chains.iter().flat_map(|c| c.problems.clone()).collect()
}

fn assert_finds(r: &Report, needle: &str) {
    assert!(!r.ok, "verification passed but should have found: {needle}");
    let p = problems(r);
    assert!(
        p.iter().any(|p| p.contains(needle)),
        "expected `{needle}` in {p:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untouched_trail_verifies() {
    let (_dir, log) = trail(30).await;
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.entries, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_record_is_found() {
    let (dir, log) = trail(30).await;
    sql(
        &dir,
        &["UPDATE audit_entries SET body = replace(body, '\"n\":5', '\"n\":500') WHERE seq = 5"],
    )
    .await;
    assert_finds(
        &check(&log).await,
        "entry 5: its content does not match its hash (modified)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_with_a_recomputed_hash_is_found_at_the_next_link() {
    let (dir, log) = trail(30).await;
    let (prev, _) = hash_of(&dir, 4).await;
    let (_, time_ms) = hash_of(&dir, 5).await;
    let body = r#"{"n":5,"type":"forged"}"#;
    let hash = chain_hash(&prev, time_ms, body);
    sql(
        &dir,
        &[&format!(
            "UPDATE audit_entries SET body = '{body}', hash = '{hash}' WHERE seq = 5"
        )],
    )
    .await;
    assert_finds(
        &check(&log).await,
        "entry 6: does not link to the entry before it",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_edited_with_control_characters_is_found() {
    let (dir, log) = trail(10).await;
    sql(
        &dir,
        &["UPDATE audit_entries SET body = body || char(30) || '9' || char(31) WHERE seq = 4"],
    )
    .await;
    assert_finds(
        &check(&log).await,
        "entry 4: its content does not match its hash (modified)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_timestamp_is_found() {
    let (dir, log) = trail(10).await;
    sql(
        &dir,
        &["UPDATE audit_entries SET time_ms = time_ms + 1 WHERE seq = 3"],
    )
    .await;
    assert_finds(
        &check(&log).await,
        "entry 3: its content does not match its hash",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_record_is_found() {
    let (dir, log) = trail(30).await;
    sql(&dir, &["DELETE FROM audit_entries WHERE seq = 7"]).await;
    let r = check(&log).await;
    assert_finds(&r, "entry 7 is missing (removed)");
    assert_finds(&r, "entry 8: does not link");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inserted_record_is_found() {
    let (dir, log) = trail(30).await;
    // Make room at seq 10 and forge a well-linked entry there.
    sql(
        &dir,
        &[
            "UPDATE audit_entries SET seq = -seq WHERE seq >= 10",
            "UPDATE audit_entries SET seq = -seq + 1 WHERE seq < 0",
        ],
    )
    .await;
    let (prev, _) = hash_of(&dir, 9).await;
    let body = r#"{"n":"inserted"}"#;
    let hash = chain_hash(&prev, T0, body);
    sql(
        &dir,
        &[&format!(
            "INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash) VALUES ('acme', 10, {T0}, '{body}', '{prev}', '{hash}')"
        )],
    )
    .await;
    let r = check(&log).await;
    assert_finds(&r, "entry 11: does not link");
    assert_finds(&r, "past the chain's head");
    // Appending at the end, however well linked, is not covered by a signature.
    let (dir, log) = trail(5).await;
    let (prev, _) = hash_of(&dir, 5).await;
    let hash = chain_hash(&prev, T0, body);
    sql(
        &dir,
        &[&format!(
            "INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash) VALUES ('acme', 6, {T0}, '{body}', '{prev}', '{hash}')"
        )],
    )
    .await;
    assert_finds(
        &check(&log).await,
        "entries 6 to 6 are past the chain's head (appended outside Toolhost)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reordered_records_are_found() {
    let (dir, log) = trail(30).await;
    sql(
        &dir,
        &[
            "UPDATE audit_entries SET seq = 1000 WHERE seq = 3",
            "UPDATE audit_entries SET seq = 3 WHERE seq = 4",
            "UPDATE audit_entries SET seq = 4 WHERE seq = 1000",
        ],
    )
    .await;
    let r = check(&log).await;
    assert_finds(&r, "entry 3: does not link");
    assert_finds(&r, "entry 4: does not link");
    assert_finds(&r, "entry 5: does not link");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncation_is_found() {
    let (dir, log) = trail(30).await;
    sql(&dir, &["DELETE FROM audit_entries WHERE seq > 25"]).await;
    assert_finds(
        &check(&log).await,
        "entries 26 to 30 are missing: the chain ends before its head (truncated)",
    );
    // Cutting the head off instead.
    let (dir, log) = trail(10).await;
    sql(&dir, &["DELETE FROM audit_entries WHERE seq <= 2"]).await;
    assert_finds(&check(&log).await, "entries 1 to 2 are missing (removed)");
    // Rewriting the head row to match the truncation: the signed head still
    // says where the chain ended.
    let (dir, log) = trail(10).await;
    sql(
        &dir,
        &[
            "DELETE FROM audit_entries WHERE seq > 8",
            "UPDATE audit_heads SET seq = 8, hash = (SELECT hash FROM audit_entries WHERE seq = 8)",
        ],
    )
    .await;
    assert_finds(
        &check(&log).await,
        "entries 9 to 10 are missing: the chain ends before its signed head",
    );
    // Moving the signed head too breaks its signature.
    let (dir, log) = trail(10).await;
    sql(
        &dir,
        &[
            "DELETE FROM audit_entries WHERE seq > 8",
            "UPDATE audit_heads SET seq = 8, hash = (SELECT hash FROM audit_entries WHERE seq = 8),
                 signed_seq = 8, signed_hash = (SELECT hash FROM audit_entries WHERE seq = 8)",
        ],
    )
    .await;
    assert_finds(&check(&log).await, "disagrees with its signed statement");
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_keeps_the_rest_verifiable() {
    let (dir, log) = trail(30).await;
    // Keep the last 10 days of records.
    let now = T0 + 31 * 86_400_000;
    assert_eq!(log.prune("acme", 10, now).await.unwrap(), 20);
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.entries, 10);
    assert_eq!(r.chains[0].first_seq, Some(21));
    // Tampering after pruning is still found.
    sql(&dir, &["DELETE FROM audit_entries WHERE seq = 21"]).await;
    assert_finds(&check(&log).await, "entry 21 is missing (removed)");
    // New records keep chaining after a prune.
    let (_dir, log) = trail(5).await;
    log.prune("acme", 1, T0 + 11 * 86_400_000).await.unwrap();
    log.append(vec![(
        "acme".into(),
        T0 + 20 * 86_400_000,
        json!({"n": "after"}),
    )])
    .await
    .unwrap();
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.entries, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_verify_on_their_own_and_show_tampering() {
    let (_dir, log) = trail(30).await;
    let mut out = Vec::new();
    let n = verify::export(
        &log,
        "acme",
        Some(T0 + 5 * 86_400_000),
        Some(T0 + 15 * 86_400_000),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(n, 10);
    let text = String::from_utf8(out).unwrap();
    let r = verify::verify_export(&mut text.as_bytes(), Some(&log.public_key())).unwrap();
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.entries, 10);
    // Change one exported record.
    let tampered = text.replacen(r#"\"n\":7"#, r#"\"n\":70"#, 1);
    assert_ne!(tampered, text);
    let r = verify::verify_export(&mut tampered.as_bytes(), Some(&log.public_key())).unwrap();
    assert!(!r.ok);
    // Drop one line.
    let lines: Vec<&str> = text.lines().collect();
    let dropped = [&lines[..3], &lines[4..]].concat().join("\n");
    let r = verify::verify_export(&mut dropped.as_bytes(), Some(&log.public_key())).unwrap();
    assert!(!r.ok);
    // Another key does not vouch for it.
    let other = "11".repeat(32);
    let r = verify::verify_export(&mut text.as_bytes(), Some(&other));
    assert!(r.map(|r| !r.ok).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_form_one_unbroken_chain() {
    let (dir, log) = trail(0).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(vec![("acme".into(), T0 + i, json!({"i": i}))])
                .await
                .unwrap()
        }));
    }
    let mut seqs: Vec<i64> = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap().iter().map(|e| e.seq));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    // Durable: a second connection to the data dir sees every record.
    let other = SqliteStorage::open(&dir).await.unwrap();
    assert_eq!(other.audit_read("acme", 0, 1000).await.unwrap().len(), 200);
}

/// Two processes on one data dir (here: two connections, each with its own
/// remembered chain heads) append to the same chain in turn and at once:
/// each notices the other's entries and the chain never forks.
#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_one_data_dir_never_fork_a_chain() {
    let dir = tempdir("audit-two");
    let a: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let b: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let la = AuditLog::open(a, &dir).await.unwrap();
    let lb = AuditLog::open(b, &dir).await.unwrap();
    for i in 0..20 {
        let log = if i % 3 == 0 { &la } else { &lb };
        let stored = log
            .append(vec![("acme".into(), T0 + i, json!({"turn": i}))])
            .await
            .unwrap();
        assert_eq!(stored[0].seq, i + 1, "each append continues the other's");
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let log = if i % 2 == 0 { la.clone() } else { lb.clone() };
        tasks.push(tokio::spawn(async move {
            log.append(vec![("acme".into(), T0 + 100 + i, json!({"at_once": i}))])
                .await
                .unwrap()
        }));
    }
    let mut seqs: Vec<i64> = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap().iter().map(|e| e.seq));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (21..=120).collect::<Vec<_>>());
    let r = check(&la).await;
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.entries, 120);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_is_bound_to_its_key() {
    let (dir, log) = trail(3).await;
    drop(log);
    std::fs::write(dir.join(toolhost::audit::KEY_FILE), "22".repeat(32)).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let err = AuditLog::open(storage, &dir)
        .await
        .err()
        .expect("a swapped key is refused");
    assert!(
        err.message.contains("does not match the key"),
        "{}",
        err.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_memory_backend_keeps_the_same_contract() {
    use toolhost::storage::memory::MemoryStorage;
    let dir = tempdir("audit-mem");
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let log = AuditLog::open(storage, &dir).await.unwrap();
    for i in 1..=2500 {
        log.append(vec![("acme".into(), T0 + i, json!({"n": i}))])
            .await
            .unwrap();
    }
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.entries, 2500);
    let periodic = log.storage().checkpoints("acme").await.unwrap();
    assert_eq!(periodic.iter().filter(|c| c.kind == "periodic").count(), 2);
    assert_eq!(
        log.prune("acme", 1, T0 + 1001 + 86_400_000).await.unwrap(),
        1000
    );
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    assert_eq!(r.chains[0].first_seq, Some(1001));
}

/// `host audit prune --policy` prunes each chain as `host serve` does: to
/// the longest retention of the documents that may govern its tenant. A
/// tenant whose own document keeps records for years loses none of them
/// because the file's tenant-less document keeps a week.
#[tokio::test(flavor = "multi_thread")]
async fn pruning_by_policy_keeps_each_tenant_its_own_retention() {
    let dir = tempdir("audit-prune-cli");
    {
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
        let log = AuditLog::open(storage, &dir).await.unwrap();
        for i in 1..=5 {
            for tenant in ["acme", "globex"] {
                log.append(vec![(
                    tenant.into(),
                    T0 + i * 86_400_000,
                    json!({"type": "invocation", "n": i}),
                )])
                .await
                .unwrap();
            }
        }
    }
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "workflow: \"*\"\nlogging: {retain_days: 7}\npolicy: {allow_tools: [hello]}\n---\n\
         workflow: \"*\"\ntenant: globex\nlogging: {retain_days: 36500}\npolicy: {allow_tools: [hello]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["audit", "prune", "--policy"])
        .arg(&policy)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let log = AuditLog::open(storage, &dir).await.unwrap();
    let r = check(&log).await;
    assert!(r.ok, "{:#?}", problems(&r));
    let entries = |chain: &str| {
        r.chains
            .iter()
            .find(|c| c.chain == chain)
            .map_or(0, |c| c.entries)
    };
    // acme's records are months old and its retention is a week: gone.
    assert!(entries("acme") < 5, "{stdout}");
    // globex keeps a century: nothing of it is pruned.
    assert_eq!(entries("globex"), 5, "{stdout}");
    assert!(
        stdout.contains("chain globex: pruned 0 records older than 36500 days"),
        "{stdout}"
    );
}

/// Rewrite entry `seq`'s body and recompute every hash from it to the head
/// row: what a database writer without the signing key can do.
async fn rewrite_with_hashes(dir: &Path, seq: i64) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT seq, time_ms, body, prev_hash FROM audit_entries WHERE seq >= ? ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut prev = rows[0].3.clone();
    for (s, time_ms, body, _) in rows {
        let body = if s == seq {
            json!({"type": "invocation", "n": "forged"}).to_string()
        } else {
            body
        };
        let hash = chain_hash(&prev, time_ms, &body);
        sqlx::query("UPDATE audit_entries SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&body)
            .bind(&prev)
            .bind(&hash)
            .bind(s)
            .execute(&mut c)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_heads SET hash = ?")
        .bind(&prev)
        .execute(&mut c)
        .await
        .unwrap();
}

async fn entry_count(dir: &Path) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("toolhost.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// The host signs a prune anchor or an export only over a chain that
/// verifies up to its signed head. Someone who can write the database (but
/// not read the key) and ages recent records, cuts the chain's end, or
/// rewrites a record with every later hash recomputed gets `corrupt`:
/// nothing is deleted, and no export of the forgery is signed.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_signed_over_a_chain_that_does_not_verify() {
    use toolhost::ErrorKind;
    let now = T0 + 11 * 86_400_000;
    let refused = |e: toolhost::Error| {
        assert_eq!(e.kind, ErrorKind::Corrupt, "{}", e.message);
        assert!(e.message.contains("does not verify"), "{}", e.message);
    };
    let export = |log: Arc<AuditLog>| async move {
        verify::export(&log, "acme", None, None, &mut Vec::new()).await
    };

    // Aged by hand: every record looks 100 days older than it is.
    let (dir, log) = trail(10).await;
    sql(
        &dir,
        &["UPDATE audit_entries SET time_ms = time_ms - 8640000000"],
    )
    .await;
    refused(log.prune("acme", 5, now).await.unwrap_err());
    assert_eq!(entry_count(&dir).await, 10, "nothing pruned");
    refused(export(log).await.unwrap_err());

    // The end cut off, the head row moved back onto the new end.
    let (dir, log) = trail(10).await;
    sql(
        &dir,
        &[
            "DELETE FROM audit_entries WHERE seq = 10",
            "UPDATE audit_heads SET seq = 9, hash = (SELECT hash FROM audit_entries WHERE seq = 9)",
        ],
    )
    .await;
    refused(export(log).await.unwrap_err());

    // A record rewritten, its hash and every later one recomputed.
    let (dir, log) = trail(10).await;
    rewrite_with_hashes(&dir, 5).await;
    refused(export(log.clone()).await.unwrap_err());
    refused(log.prune("acme", 5, now).await.unwrap_err());
    assert_eq!(entry_count(&dir).await, 10, "nothing pruned");

    // Untouched, the same calls work.
    let (dir, log) = trail(10).await;
    assert_eq!(export(log.clone()).await.unwrap(), 10);
    assert_eq!(log.prune("acme", 5, now).await.unwrap(), 5);
    assert_eq!(entry_count(&dir).await, 5);
}

/// A chain someone tampered with refuses only its own works: in one commit
/// group, another tenant's work still commits. (An entry inserted past a
/// head would collide with the next one; a head row of the wrong type
/// could not be read: either failed the whole transaction.)
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_chain_refuses_only_its_own_works() {
    use toolhost::storage::{NewEntry, Work};
    for edit in [
        "INSERT INTO audit_entries SELECT chain, seq + 1, time_ms + 1, body, hash, hash \
         FROM audit_entries WHERE chain = 'acme' AND seq = 3",
        "UPDATE audit_heads SET seq = 'abc' WHERE chain = 'acme'",
    ] {
        let dir = tempdir("audit-isolated");
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
        let log = AuditLog::open(storage.clone(), &dir).await.unwrap();
        for i in 1..=3 {
            for tenant in ["acme", "globex"] {
                log.append(vec![(tenant.into(), T0 + i, json!({"n": i}))])
                    .await
                    .unwrap();
            }
        }
        sql(&dir, &[edit]).await;
        let work = |chain: &str| Work {
            entries: vec![NewEntry {
                chain: chain.into(),
                time_ms: T0 + 10,
                body: json!({"n": "next"}).to_string(),
            }],
            ..Work::default()
        };
        let answers = storage
            .audit_commit(vec![work("acme"), work("globex")], log.notary().clone())
            .await
            .unwrap_or_else(|e| panic!("{edit}: the whole group failed: {e}"));
        let e = answers[0].as_ref().unwrap_err();
        assert_eq!(e.kind, toolhost::ErrorKind::Corrupt, "{edit}: {e}");
        assert!(answers[1].is_ok(), "{edit}: {:?}", answers[1]);
        let key = verify::parse_key(&log.public_key()).unwrap();
        let r = verify::verify(log.storage(), &key, Some("globex"))
            .await
            .unwrap();
        let globex = r.chains.iter().find(|c| c.chain == "globex").unwrap();
        assert!(globex.problems.is_empty(), "{edit}: {:?}", globex.problems);
        assert_eq!(globex.entries, 4, "{edit}");
    }
}
