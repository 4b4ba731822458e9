//! The audit trail against someone who can write the database but does not
//! hold the signing key.

use crate::common::tempdir;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toolhost::audit::AuditLog;
use toolhost::audit::verify::{self, Report};
use toolhost::storage::prelude::*;
use toolhost::storage::sqlite::SqliteStorage;

const T0: i64 = 1_790_000_000_000;

async fn trail(chains: &[(&str, i64)]) -> (PathBuf, Arc<AuditLog>) {
    let dir = tempdir("attack-audit");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let log = AuditLog::open(storage, &dir).await.unwrap();
    for (chain, n) in chains {
        let records = (1..=*n)
            .map(|i| {
                (
                    chain.to_string(),
                    T0 + i,
                    json!({"type": "invocation", "n": i}),
                )
            })
            .collect();
        log.append(records).await.unwrap();
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

fn all_problems(r: &Report) -> Vec<String> {
    r.problems
        .iter()
        .cloned()
        .chain(r.chains.iter().flat_map(|c| c.problems.clone()))
        .collect()
}

fn assert_finds(r: &Report, needle: &str) {
    let p = all_problems(r);
    assert!(!r.ok, "verification passed but should have found: {needle}");
    assert!(
        p.iter().any(|p| p.contains(needle)),
        "expected `{needle}` in {p:#?}"
    );
}

/// A periodic checkpoint relabelled as a prune anchor used to let anyone
/// delete every record before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_periodic_checkpoint_relabelled_as_a_prune_anchor_is_found() {
    let (dir, log) = trail(&[("acme", 2100)]).await;
    assert!(check(&log).await.ok);
    sql(
        &dir,
        &[
            "UPDATE audit_checkpoints SET kind = 'prune' WHERE kind = 'periodic' AND seq = 2000",
            "DELETE FROM audit_entries WHERE seq <= 2000",
            "DELETE FROM audit_checkpoints WHERE kind = 'periodic' AND seq < 2000",
        ],
    )
    .await;
    let r = check(&log).await;
    assert_finds(&r, "is signed as a periodic checkpoint (relabelled)");
    assert_finds(&r, "entries 1 to 2000 are missing");
}

/// The same signature passed off as the head: the chain cut back to a
/// periodic checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn a_periodic_signature_cannot_stand_in_for_the_head() {
    let (dir, log) = trail(&[("acme", 1010)]).await;
    sql(
        &dir,
        &[
            "DELETE FROM audit_entries WHERE seq > 1000",
            "UPDATE audit_heads SET (seq, hash, signed_seq, signed_hash, signed_time_ms, signature, signed_statement) =
               (SELECT seq, hash, seq, hash, time_ms, signature, statement FROM audit_checkpoints
                WHERE kind = 'periodic' AND seq = 1000)",
        ],
    )
    .await;
    assert_finds(&check(&log).await, "is signed as a periodic checkpoint");
}

/// Deleting every row of a chain (or of all chains) used to verify as ok.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_chain_is_reported() {
    let (dir, log) = trail(&[("acme", 5), ("globex", 5)]).await;
    assert!(
        check(&log).await.ok,
        "{:?}",
        all_problems(&check(&log).await)
    );
    for table in ["audit_entries", "audit_heads", "audit_checkpoints"] {
        sql(
            &dir,
            &[&format!("DELETE FROM {table} WHERE chain = 'globex'")],
        )
        .await;
    }
    assert_finds(
        &check(&log).await,
        "chain `globex` is in the signed registry but has no entries or head (deleted)",
    );
    // All of them, and the registry too.
    for table in ["audit_entries", "audit_heads", "audit_checkpoints"] {
        sql(&dir, &[&format!("DELETE FROM {table}")]).await;
    }
    assert_finds(&check(&log).await, "chain `acme` is in the signed registry");
    sql(&dir, &["DELETE FROM meta WHERE key = 'audit.registry'"]).await;
    assert_finds(
        &check(&log).await,
        "the signed registry of chains is missing",
    );
    // Reopening does not quietly sign a new registry over the loss.
    drop(log);
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let log = AuditLog::open(storage, &dir).await.unwrap();
    assert_finds(
        &check(&log).await,
        "the signed registry of chains is missing",
    );
}

/// A chain that was never registered (written around Toolhost) is reported;
/// so is a tenant with invocation records but no chain.
#[tokio::test(flavor = "multi_thread")]
async fn chains_outside_the_registry_and_tenants_without_chains_are_reported() {
    let (dir, log) = trail(&[("acme", 2)]).await;
    sql(
        &dir,
        &[
            "INSERT INTO audit_heads (chain, seq, hash) VALUES ('ghost', 0, 'x')",
            "INSERT INTO invocations (id, tenant, tool, function, status, created_ms, response)
             VALUES ('inv_1', 'initech', 't', 'f', 'ok', 1, '{}')",
        ],
    )
    .await;
    let r = check(&log).await;
    assert_finds(&r, "chain `ghost` is not in the signed registry");
    assert_finds(
        &r,
        "tenant `initech` has invocation records but no audit chain",
    );
}

/// Every commit signs the heads it moves, in its transaction: nothing
/// acknowledged is past the signed head, so a deleted tail is always found.
#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_record_is_covered_by_the_signed_head() {
    let (dir, log) = trail(&[("acme", 3)]).await;
    for i in 0..20 {
        log.append(vec![("acme".into(), T0 + 100 + i, json!({"i": i}))])
            .await
            .unwrap();
        // Acknowledged: the signed head is this very record.
        let rows = log.storage().checkpoints("acme").await.unwrap();
        let tip = rows.iter().find(|c| c.kind == "tip").unwrap();
        let head = rows.iter().find(|c| c.kind == "head").unwrap();
        assert_eq!((head.seq, &head.hash), (tip.seq, &tip.hash));
    }
    // The last acknowledged record deleted, the head row rewound to match:
    // the signed head still says where the chain ended.
    sql(
        &dir,
        &[
            "DELETE FROM audit_entries WHERE seq = 23",
            "UPDATE audit_heads SET seq = 22, hash = (SELECT hash FROM audit_entries WHERE seq = 22)",
        ],
    )
    .await;
    assert_finds(&check(&log).await, "the chain ends before its signed head");
}

/// A prune anchor whose retention had not passed is not accepted, even
/// signed (e.g. by a host with a wrong clock).
#[tokio::test(flavor = "multi_thread")]
async fn pruning_is_accepted_only_with_its_retention_proven() {
    let (_dir, log) = trail(&[("acme", 30)]).await;
    // The records are at T0 + 1..30 ms: pruned with 1 day of retention at
    // T0 + 1 day + 10 ms, entries 1 to 9 go (all older than a day).
    assert_eq!(log.prune("acme", 1, T0 + 86_400_000 + 10).await.unwrap(), 9);
    assert!(
        check(&log).await.ok,
        "{:?}",
        all_problems(&check(&log).await)
    );
    // An anchor that claims a retention longer than the records' age.
    let premature = toolhost::audit::statement::Statement::Prune {
        chain: "acme".into(),
        first_seq: 10,
        seq: 20,
        hash: "00".into(),
        time_ms: T0 + 20,
        pruned_at_ms: T0 + 30,
        retain_days: Some(1),
        upgraded: false,
    };
    let row = toolhost::audit::link::checkpoint(&premature, log.notary());
    log.storage().audit_prune(row).await.unwrap();
    let r = check(&log).await;
    assert_finds(&r, "does not prove its retention period had passed");
    assert_finds(&r, "entries 10 to 20 are missing");
}
