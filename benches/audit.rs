//! Durable audit throughput with group commit, and `verify` speed.
//!
//! * append: 64 concurrent writers each append records one at a time and
//!   wait for durability (what every invocation does); reports records/s.
//! * verify: a chain of 200,000 records; reports records/s.
//!
//! Run: `cargo bench --bench audit` (a plain timing script; figures in
//! benches/RESULTS.md). `AUDIT_BENCH_DIR` chooses the data dir's disk.

#[path = "../tests/common/mod.rs"]
mod common;

use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use toolhost::audit::{AuditLog, verify};
use toolhost::storage::prelude::*;
use toolhost::storage::sqlite::SqliteStorage;

fn record(i: usize) -> serde_json::Value {
    json!({
        "type": "invocation", "invocation_id": format!("inv_{i:032x}"), "tenant": "acme",
        "workflow": "refund_request", "task_id": "t", "tool": "refund", "function": "lookup-order",
        "args": {"order-id": "ord_1001"}, "args_sha256": "8bcebb0b25921d52a9ed29555382d2fd5950403182226c5e5104e5ab655d8746",
        "decision": {"effect": "allow", "rule": "policy.allow_tools[0] (lookup_order)"},
        "outcome": {"ok": true}, "usage": {"fuel": 23074, "wall_ms": 1, "memory_peak_bytes": 1114112},
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| common::repo_root().join("target"));
    let dir = base.join(format!("bench-audit-{}", std::process::id()));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir).await.unwrap());
    let log = AuditLog::open(storage, &dir).await.unwrap();

    let writers = 64;
    let per_writer = 250;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                log.append(vec![(
                    "acme".into(),
                    1_795_000_000_000,
                    record(w * per_writer + i),
                )])
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = writers * per_writer;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "audit append: {n} durable records, {writers} concurrent writers: {secs:.2}s, {:.0} records/s",
        n as f64 / secs
    );

    // Grow the chain to 200k records quickly (large batches), then verify.
    let total = 200_000;
    let mut next = n;
    while next < total {
        let batch: Vec<_> = (next..(next + 5_000).min(total))
            .map(|i| ("acme".to_string(), 1_795_000_000_000, record(i)))
            .collect();
        next += batch.len();
        log.append(batch).await.unwrap();
    }
    let key = verify::parse_key(&log.public_key()).unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let report = verify::verify(log.storage(), &key, None).await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert!(report.ok);
        println!(
            "audit verify: {} records in {secs:.3}s, {:.0} records/s",
            report.entries,
            report.entries as f64 / secs
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
