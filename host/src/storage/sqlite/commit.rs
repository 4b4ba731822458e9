//! The hot write path of the SQLite backend.
//!
//! One audit commit (its entries, chain heads, budget settlements,
//! invocation records, approvals, idempotency answers and cache entries) is
//! one statement, so one round trip to the connection's SQLite thread: an
//! insert into the view `audit_commit`, whose trigger does every write, with
//! the rows as JSON arrays (`json_each`), so the statement never changes and
//! stays prepared whatever the batch holds. Budget reservations of
//! concurrent invocations are batched the same way ([`RESERVE`]).
//!
//! The hot connection commits with `synchronous = NORMAL` (no fsync while it
//! holds SQLite's write lock); [`WalSync`] then makes the commit durable with
//! an `fdatasync` of the WAL file, shared by every commit written before it
//! started. Invariant: a caller is answered only after an fsync that began
//! after its commit returned, so what it was told is committed survives power
//! loss exactly as with `synchronous = FULL`, while other writers
//! (reservations, the next group of commits) use the write lock during the
//! fsync.
//!
//! Chain heads are remembered between commits (this process is usually the
//! only writer). The trigger's first statement is a guard that aborts the
//! commit when a head is not the remembered one (another process appended);
//! the caller then reads the heads inside a transaction and commits again.

use crate::audit::{CHECKPOINT_EVERY, GENESIS, chain_hash};
use crate::error::{Error, Result};
use crate::storage::{Batch, Charge, Signer, StoredEntry};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Migration 5: what [`APPEND`] and [`RESERVE`] write through. Each is an
/// `INSTEAD OF INSERT` trigger on a view, so that one statement (one round
/// trip, prepared once) does the whole write atomically.
pub(super) const MIGRATION: &str = "
    CREATE VIEW audit_commit (expected, entries, periodic, heads, budget, invocations, approvals,
                              idempotency, cache)
      AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL;
    CREATE TRIGGER audit_commit_insert INSTEAD OF INSERT ON audit_commit BEGIN
      SELECT RAISE(ABORT, 'toolhost: stale audit head') FROM json_each(NEW.expected) AS g
        WHERE coalesce((SELECT h.seq || ':' || h.hash FROM audit_heads AS h WHERE h.chain = g.value->>0),
                       '0:0000000000000000000000000000000000000000000000000000000000000000')
              IS NOT g.value->>1;
      INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5
        FROM json_each(NEW.entries);
      INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, 'periodic'
        FROM json_each(NEW.periodic);
      INSERT INTO audit_heads (chain, seq, hash, signed_seq, signed_hash, signed_time_ms, signature)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6
        FROM json_each(NEW.heads) WHERE true
        ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
          signed_seq = coalesce(excluded.signed_seq, signed_seq),
          signed_hash = coalesce(excluded.signed_hash, signed_hash),
          signed_time_ms = coalesce(excluded.signed_time_ms, signed_time_ms),
          signature = coalesce(excluded.signature, signature);
      INSERT INTO budget (scope, window, metric, used, reserved)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4
        FROM json_each(NEW.budget) WHERE true
        ON CONFLICT (scope, window, metric) DO UPDATE
        SET used = used + excluded.used, reserved = max(0, reserved + excluded.reserved);
      INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                               status, error_kind, created_ms, response)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6,
               value->>7, value->>8, value->>9, value->>10, value->>11
        FROM json_each(NEW.invocations) WHERE true
        ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
          error_kind = excluded.error_kind, response = excluded.response;
      INSERT INTO approvals (id, tenant, invocation_id, status, tool, function, version, workflow,
                             task_id, args, args_redacted, args_sha256, rule, requester, created_ms,
                             expires_ms, callback_url)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6,
               value->>7, value->>8, value->>9, value->>10, value->>11, value->>12, value->>13,
               value->>14, value->>15, value->>16
        FROM json_each(NEW.approvals);
      UPDATE idempotency SET state = 'done', http_status = d.value->>2, response = d.value->>3
        FROM json_each(NEW.idempotency) AS d
        WHERE idempotency.tenant = d.value->>0 AND idempotency.key = d.value->>1;
      INSERT INTO result_cache (tenant, key, result, expires_ms)
        SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(NEW.cache) WHERE true
        ON CONFLICT (tenant, key) DO UPDATE
        SET result = excluded.result, expires_ms = excluded.expires_ms;
    END;
    CREATE VIEW budget_reserve (charges) AS SELECT NULL;
    CREATE TRIGGER budget_reserve_insert INSTEAD OF INSERT ON budget_reserve BEGIN
      SELECT RAISE(ABORT, 'toolhost: over budget') FROM json_each(NEW.charges) AS c
        LEFT JOIN budget AS b
          ON b.scope = c.value->>0 AND b.window = c.value->>1 AND b.metric = c.value->>2
        WHERE c.value->>4 IS NOT NULL
          AND coalesce(b.used, 0) + coalesce(b.reserved, 0) + (c.value->>3) > c.value->>4;
      INSERT INTO budget (scope, window, metric, used, reserved, lim)
        SELECT value->>0, value->>1, value->>2, 0, value->>3, value->>4
        FROM json_each(NEW.charges) WHERE true
        ON CONFLICT (scope, window, metric) DO UPDATE
        SET reserved = reserved + excluded.reserved, lim = excluded.lim;
    END;";

/// One audit commit, atomic on its own. Bind, in order: expected heads,
/// entries, periodic checkpoints, new heads, budget lines, invocation
/// records, approvals, idempotency answers, cache entries (each a JSON array
/// of arrays; see [`prepare`]). Fails when a head is not the expected one (`toolhost: stale audit head`).
pub(super) const APPEND: &str = "INSERT INTO audit_commit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Reserve the charges of many invocations, in order, each all-or-nothing;
/// bind a JSON array of charge lists (`[scope, window, metric, amount,
/// limit]`). Fails with [`is_over_budget`] (and reserves nothing) if any
/// invocation would pass a limit.
pub(super) const RESERVE: &str = "INSERT INTO budget_reserve SELECT value FROM json_each(?)";

/// Whether a failed [`RESERVE`] found a limit that would be passed.
pub(super) fn is_over_budget(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.message().contains("toolhost: over budget"))
}

/// The [`RESERVE`] row of one invocation's charges.
pub(super) fn reservation(charges: &[Charge]) -> Value {
    Value::Array(
        charges
            .iter()
            .map(|c| json!([c.scope, c.window, c.metric, c.amount, c.limit]))
            .collect(),
    )
}

/// The parameters of one [`APPEND`], and what it stores.
pub(super) struct Append {
    pub params: [String; 9],
    pub stored: Vec<StoredEntry>,
    /// Each touched chain's new head.
    pub heads: HashMap<String, (i64, String)>,
}

/// Chain the batch's entries onto `heads` (a chain missing there starts at
/// genesis) and encode everything [`APPEND`] writes.
pub(super) fn prepare(
    batch: &Batch,
    heads: &HashMap<String, (i64, String)>,
    signer: &Signer,
) -> Append {
    let mut chains: Vec<&str> = batch.entries.iter().map(|e| e.chain.as_str()).collect();
    chains.sort_unstable();
    chains.dedup();
    let head = |c: &str| {
        heads
            .get(c)
            .cloned()
            .unwrap_or_else(|| (0, GENESIS.to_string()))
    };
    let expected: Vec<Value> = chains
        .iter()
        .map(|c| {
            let (seq, hash) = head(c);
            json!([c, format!("{seq}:{hash}")])
        })
        .collect();
    let mut new_heads: HashMap<String, (i64, String)> =
        chains.iter().map(|c| (c.to_string(), head(c))).collect();
    let mut stored = Vec::with_capacity(batch.entries.len());
    let mut periodic = Vec::new();
    for e in &batch.entries {
        let (seq, prev) = new_heads
            .get(&e.chain)
            .cloned()
            .unwrap_or_else(|| (0, GENESIS.to_string()));
        let seq = seq + 1;
        let hash = chain_hash(&prev, e.time_ms, &e.body);
        if seq % CHECKPOINT_EVERY == 0 {
            let signature = signer(&e.chain, seq, &hash, e.time_ms);
            periodic.push(json!([e.chain, seq, hash, e.time_ms, signature]));
        }
        new_heads.insert(e.chain.clone(), (seq, hash.clone()));
        stored.push(StoredEntry {
            chain: e.chain.clone(),
            seq,
            time_ms: e.time_ms,
            body: e.body.clone(),
            prev_hash: prev,
            hash,
        });
    }
    let now = stored.last().map_or(0, |e| e.time_ms);
    let head_rows: Vec<Value> = chains
        .iter()
        .filter_map(|c| {
            let (seq, hash) = new_heads.get(*c)?;
            Some(if batch.sign.iter().any(|s| s == c) {
                let signature = signer(c, *seq, hash, now);
                json!([c, seq, hash, seq, hash, now, signature])
            } else {
                json!([c, seq, hash, null, null, null, null])
            })
        })
        .collect();
    let entries: Vec<Value> = stored
        .iter()
        .map(|e| json!([e.chain, e.seq, e.time_ms, e.body, e.prev_hash, e.hash]))
        .collect();
    let budget: Vec<Value> = settlement(&batch.release, &batch.charge)
        .into_iter()
        .map(|((scope, window, metric), (used, released))| {
            json!([scope, window, metric, used, -released])
        })
        .collect();
    let invocations: Vec<Value> = batch
        .invocations
        .iter()
        .map(|r| {
            json!([
                r.id,
                r.tenant,
                r.tool,
                r.function,
                r.version,
                r.workflow,
                r.task_id,
                r.principal,
                r.status,
                r.error_kind,
                r.created_ms,
                r.response
            ])
        })
        .collect();
    let approvals: Vec<Value> = batch
        .approvals
        .iter()
        .map(|a| {
            json!([
                a.id,
                a.tenant,
                a.invocation_id,
                a.status,
                a.tool,
                a.function,
                a.version,
                a.workflow,
                a.task_id,
                a.args,
                a.args_redacted,
                a.args_sha256,
                a.rule,
                a.requester,
                a.created_ms,
                a.expires_ms,
                a.callback_url
            ])
        })
        .collect();
    let idempotency: Vec<Value> = batch
        .idempotency
        .iter()
        .map(|d| json!([d.tenant, d.key, d.http_status, d.response]))
        .collect();
    let cache: Vec<Value> = batch
        .cache
        .iter()
        .map(|c| json!([c.tenant, c.key, c.result, c.expires_ms]))
        .collect();
    let text = |rows: Vec<Value>| Value::Array(rows).to_string();
    Append {
        params: [
            text(expected),
            text(entries),
            text(periodic),
            text(head_rows),
            text(budget),
            text(invocations),
            text(approvals),
            text(idempotency),
            text(cache),
        ],
        stored,
        heads: new_heads,
    }
}

/// The net change per budget line of releasing `release` and recording
/// `charge`: `(used += u, reserved -= r)`, lines with no change left out.
pub(super) fn settlement<'a>(
    release: &'a [Charge],
    charge: &'a [Charge],
) -> BTreeMap<(&'a str, &'a str, &'a str), (i64, i64)> {
    let mut lines: BTreeMap<(&str, &str, &str), (i64, i64)> = BTreeMap::new();
    for c in release.iter().filter(|c| c.amount != 0) {
        lines.entry((&c.scope, &c.window, &c.metric)).or_default().1 += c.amount;
    }
    for c in charge.iter().filter(|c| c.amount != 0) {
        lines.entry((&c.scope, &c.window, &c.metric)).or_default().0 += c.amount;
    }
    lines
}

/// Group fsync of the WAL file, outside SQLite's write lock.
pub(super) struct WalSync {
    path: PathBuf,
    /// Commits written to the WAL (numbered under the writer lock, in WAL
    /// order).
    written: AtomicU64,
    /// Every commit up to this number is durable.
    synced: AtomicU64,
    /// Held by the one caller running an fsync.
    syncing: tokio::sync::Mutex<()>,
    /// Set when an fsync failed: after that the kernel may have dropped
    /// dirty pages, so no later fsync can vouch for earlier writes.
    failed: AtomicBool,
}

impl WalSync {
    pub(super) fn new(db_path: &std::path::Path) -> WalSync {
        let mut path = db_path.as_os_str().to_owned();
        path.push("-wal");
        WalSync {
            path: PathBuf::from(path),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncing: tokio::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
        }
    }

    /// Number a commit that was just written; call while still holding the
    /// writer, so numbers follow WAL order.
    pub(super) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Return once commit `upto` is durable: run an fsync, or wait for one
    /// that started after it was written.
    pub(super) async fn sync(&self, upto: u64) -> Result<()> {
        if self.synced.load(Ordering::Acquire) >= upto {
            return self.check();
        }
        let _syncing = self.syncing.lock().await;
        if self.synced.load(Ordering::Acquire) >= upto {
            return self.check();
        }
        self.check()?;
        let target = self.written.load(Ordering::Acquire);
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(file) => file.sync_data(),
            // Checkpointed into the database file (which SQLite synced) and
            // removed: nothing left to sync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await;
        match result {
            Ok(Ok(())) => {
                self.synced.fetch_max(target, Ordering::AcqRel);
                Ok(())
            }
            Ok(Err(e)) => {
                self.failed.store(true, Ordering::Release);
                Err(Error::internal(format!(
                    "fsync of {} failed: {e}; committed audit records may not be durable, restart the host",
                    self.path.display()
                )))
            }
            Err(e) => Err(Error::internal(format!("fsync task: {e}"))),
        }
    }

    fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::internal(format!(
                "an earlier fsync of {} failed; restart the host",
                self.path.display()
            )));
        }
        Ok(())
    }
}
