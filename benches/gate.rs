//! The gate's added latency per trivial invocation: the full governed gate
//! (Cedar policy, budget reserve/settle, audit append with group commit)
//! against the sandbox-only gate, both on `text-tools` `hello`.
//!
//! `governed-memory` uses the in-memory storage backend: the gate's own work
//! (Cedar, budget arithmetic, canonical JSON, hashing, signing), excluding the
//! durability wait. `governed-tmpfs` adds SQLite on tmpfs (`/dev/shm`: its
//! transactions, no fsync); `governed-disk` adds the fsync on the target
//! dir's disk.
//!
//! Run: `cargo bench --bench gate` (see benches/RESULTS.md).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use toolhost::audit::AuditLog;
use toolhost::budget::Ledger;
use toolhost::gate::{CallContext, Governed};
use toolhost::policy::Policy;
use toolhost::secrets::NoSecrets;
use toolhost::storage::prelude::*;
use toolhost::storage::sqlite::SqliteStorage;
use toolhost::{Call, Host};

const POLICY: &str = r#"
workflow: bench
budget:
  max_tool_calls: 1000000000
  max_cost_usd: 1000000
policy:
  allow_tools: [hello]
logging:
  redact_fields: [email, address, card_last4]
tools:
  hello:
    price: {per_call_usd: 0.0001}
"#;

async fn governed(dir: PathBuf, in_memory: bool) -> Host {
    let storage: Arc<dyn Storage> = if in_memory {
        Arc::new(toolhost::storage::memory::MemoryStorage::new())
    } else {
        Arc::new(SqliteStorage::open(&dir).await.unwrap())
    };
    let audit = AuditLog::open(storage.clone(), &dir).await.unwrap();
    let policy = Arc::new(Policy::parse("bench.yaml", POLICY).unwrap());
    let gate = Governed::new(policy, Ledger::new(storage), audit, Arc::new(NoSecrets));
    Host::new(common::runtime(), Arc::new(gate))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tool = common::tool("text-tools");
    let mut call: Call = common::call("hello", json!({"name": "bench"}));
    call.context = CallContext {
        task_id: Some("bench-task".into()),
        principal: Some("bench".into()),
        ..Default::default()
    };
    let bare = common::host();
    let shm = std::path::Path::new("/dev/shm");
    let fast_dir = if shm.is_dir() {
        let d = shm.join(format!("toolhost-bench-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    } else {
        common::tempdir("bench-gate")
    };
    let disk_dir = common::repo_root().join(format!("target/bench-gate-{}", std::process::id()));
    let memory = rt.block_on(governed(common::tempdir("bench-mem"), true));
    let fast = rt.block_on(governed(fast_dir.clone(), false));
    let disk = rt.block_on(governed(disk_dir.clone(), false));
    for host in [&bare, &memory, &fast, &disk] {
        let out = rt.block_on(host.invoke(&tool, &call));
        assert!(out.ok, "{:?}", out.error);
    }

    let mut group = c.benchmark_group("gate-hello");
    group
        .measurement_time(Duration::from_secs(8))
        .sample_size(100);
    group.bench_function("sandbox-only", |b| {
        b.to_async(&rt).iter(|| bare.invoke(&tool, &call))
    });
    group.bench_function("governed-memory", |b| {
        b.to_async(&rt).iter(|| memory.invoke(&tool, &call))
    });
    group.bench_function("governed-tmpfs", |b| {
        b.to_async(&rt).iter(|| fast.invoke(&tool, &call))
    });
    group.bench_function("governed-disk", |b| {
        b.to_async(&rt).iter(|| disk.invoke(&tool, &call))
    });
    group.finish();

    // Where the gate's time goes: the policy decision alone, and one audit
    // append (in memory) alone.
    let policy = Policy::parse("bench.yaml", POLICY).unwrap();
    let (function, _) = tool.function("hello").unwrap();
    let args = json!({"name": "bench"});
    let subject = toolhost::policy::Subject {
        tenant: None,
        workflow: Some("bench"),
        task_id: Some("t"),
        principal: "bench",
        tool: "text-tools",
        function,
        args: &args,
        approved: false,
    };
    c.bench_function("parts/policy-decide", |b| {
        b.iter(|| policy.decide(&subject))
    });
    let log = rt.block_on(async {
        let storage: Arc<dyn Storage> = Arc::new(toolhost::storage::memory::MemoryStorage::new());
        AuditLog::open(storage, &common::tempdir("bench-log"))
            .await
            .unwrap()
    });
    c.bench_function("parts/audit-append-memory", |b| {
        b.to_async(&rt)
            .iter(|| log.append(vec![("_".into(), 1, json!({"type": "invocation", "n": 1}))]))
    });
    let _ = std::fs::remove_dir_all(fast_dir);
    let _ = std::fs::remove_dir_all(disk_dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
