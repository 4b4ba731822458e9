//! What the hot writer ([`super::writer`]) writes: audit commits
//! ([`append_in`]), budget reservations ([`reserve_in`]) and idempotency
//! markers, as cached prepared statements inside `BEGIN IMMEDIATE`
//! transactions on the writer's connection.
//!
//! All run on the writer thread, where a statement is a function call (no
//! thread handoff), so a transaction of many small statements is cheap; the
//! chain heads are read inside the transaction, so concurrent processes on
//! one data dir never fork a chain.

use crate::audit::link::{Head, link};
use crate::storage::{
    Batch, Charge, Exceeded, IdempotencyBegin, IdempotencyDone, Notary, Signed, StoredEntry,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::BTreeMap;

/// [`append_in`] in a transaction of its own.
pub(super) fn append(
    conn: &mut Connection,
    batch: &Batch,
    notary: &Notary,
) -> rusqlite::Result<Vec<StoredEntry>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored = append_in(&tx, batch, notary)?;
    tx.commit()?;
    Ok(stored)
}

/// Store the chain registry.
pub(super) fn registry_put(conn: &Connection, registry: &Signed) -> rusqlite::Result<()> {
    let text = serde_json::to_string(registry).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('audit.registry', ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([text])?;
    Ok(())
}

/// Write a batch inside the caller's write transaction (`BEGIN
/// IMMEDIATE`): read the touched chains' heads, [`link`] the entries, write
/// the entries, the signed heads, the periodic checkpoints and (for new
/// chains) the registry; settle its budget lines, and store its invocation
/// records, approvals, idempotency answers and cache entries. Returns the
/// stored entries in order.
pub(super) fn append_in(
    tx: &Connection,
    batch: &Batch,
    notary: &Notary,
) -> rusqlite::Result<Vec<StoredEntry>> {
    let mut heads: BTreeMap<String, Option<Head>> = BTreeMap::new();
    {
        let mut read = tx.prepare_cached("SELECT seq, hash FROM audit_heads WHERE chain = ?")?;
        for e in &batch.entries {
            if !heads.contains_key(e.chain.as_str()) {
                let head = read
                    .query_row([&e.chain], |r| {
                        Ok(Head {
                            seq: r.get(0)?,
                            hash: r.get(1)?,
                        })
                    })
                    .optional()?;
                heads.insert(e.chain.clone(), head);
            }
        }
    }
    let registry = if heads.values().any(Option::is_none) {
        tx.prepare_cached("SELECT value FROM meta WHERE key = 'audit.registry'")?
            .query_row([], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|text| serde_json::from_str::<Signed>(&text).ok())
    } else {
        None
    };
    let now = batch.entries.last().map_or(0, |e| e.time_ms);
    let linked = link(&batch.entries, &heads, registry.as_ref(), notary, now);
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
        )?;
        for e in &linked.entries {
            insert.execute(params![
                e.chain,
                e.seq,
                e.time_ms,
                e.body,
                e.prev_hash,
                e.hash
            ])?;
        }
        let mut checkpoint = tx.prepare_cached(
            "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind, statement)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )?;
        for c in &linked.checkpoints {
            checkpoint.execute(params![
                c.chain,
                c.seq,
                c.hash,
                c.time_ms,
                c.signature,
                c.kind,
                c.statement
            ])?;
        }
        let mut upsert = tx.prepare_cached(
            "INSERT INTO audit_heads (chain, seq, hash, signed_seq, signed_hash, signed_time_ms, signature,
                                      signed_statement)
             VALUES (?1, ?2, ?3, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
               signed_seq = excluded.signed_seq, signed_hash = excluded.signed_hash,
               signed_time_ms = excluded.signed_time_ms, signature = excluded.signature,
               signed_statement = excluded.signed_statement",
        )?;
        for (chain, head, signed) in &linked.heads {
            upsert.execute(params![
                chain,
                head.seq,
                head.hash,
                now,
                signed.signature,
                signed.statement
            ])?;
        }
    }
    if let Some(r) = &linked.registry {
        registry_put(tx, r)?;
    }
    let stored = linked.entries;
    settle(tx, &batch.release, &batch.charge)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                      status, error_kind, created_ms, response)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
               error_kind = excluded.error_kind, response = excluded.response",
        )?;
        for r in &batch.invocations {
            insert.execute(params![
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
            ])?;
        }
    }
    for a in &batch.approvals {
        tx.prepare_cached(
            "INSERT INTO approvals (id, tenant, invocation_id, status, tool, function, version, workflow,
                                    task_id, args, args_redacted, args_sha256, rule, requester, created_ms,
                                    expires_ms, callback_url)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
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
        ])?;
    }
    for d in &batch.idempotency {
        finish_idempotency(tx, d)?;
    }
    for c in &batch.cache {
        tx.prepare_cached(
            "INSERT INTO result_cache (tenant, key, result, expires_ms) VALUES (?, ?, ?, ?)
             ON CONFLICT (tenant, key) DO UPDATE SET result = excluded.result, expires_ms = excluded.expires_ms",
        )?
        .execute(params![c.tenant, c.key, c.result, c.expires_ms])?;
    }
    Ok(stored)
}

/// Keep an idempotent request's final answer.
pub(super) fn finish_idempotency(conn: &Connection, d: &IdempotencyDone) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE idempotency SET state = 'done', http_status = ?, response = ? WHERE tenant = ? AND key = ?",
    )?
    .execute(params![d.http_status, d.response, d.tenant, d.key])?;
    Ok(())
}

/// [`settle`] in a transaction of its own.
pub(super) fn settle_alone(
    conn: &mut Connection,
    release: &[Charge],
    charge: &[Charge],
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    settle(&tx, release, charge)?;
    tx.commit()
}

/// Release reservations and record usage.
fn settle(conn: &Connection, release: &[Charge], charge: &[Charge]) -> rusqlite::Result<()> {
    let lines = settlement(release, charge);
    if lines.is_empty() {
        return Ok(());
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO budget (scope, window, metric, used, reserved) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (scope, window, metric) DO UPDATE
         SET used = used + excluded.used, reserved = max(0, reserved + excluded.reserved)",
    )?;
    for ((scope, window, metric), (used, released)) in lines {
        upsert.execute(params![scope, window, metric, used, -released])?;
    }
    Ok(())
}

/// [`reserve_in`] in a transaction of its own.
pub(super) fn reserve(
    conn: &mut Connection,
    invocations: &[Vec<Charge>],
) -> rusqlite::Result<Vec<std::result::Result<(), Exceeded>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let answers = reserve_in(&tx, invocations)?;
    tx.commit()?;
    Ok(answers)
}

/// Reserve the charges of many invocations inside the caller's write
/// transaction, in order, each all or nothing: an invocation that would
/// pass a limit reserves nothing and gets the first limit it would pass.
pub(super) fn reserve_in(
    tx: &Connection,
    invocations: &[Vec<Charge>],
) -> rusqlite::Result<Vec<std::result::Result<(), Exceeded>>> {
    let mut answers = Vec::with_capacity(invocations.len());
    {
        let mut read = tx.prepare_cached(
            "SELECT used, reserved FROM budget WHERE scope = ? AND window = ? AND metric = ?",
        )?;
        let mut upsert = tx.prepare_cached(
            "INSERT INTO budget (scope, window, metric, used, reserved, lim) VALUES (?, ?, ?, 0, ?, ?)
             ON CONFLICT (scope, window, metric) DO UPDATE
             SET reserved = reserved + excluded.reserved, lim = excluded.lim",
        )?;
        for charges in invocations {
            let mut refused = None;
            for c in charges {
                let Some(limit) = c.limit else { continue };
                let (used, reserved): (i64, i64) = read
                    .query_row(params![c.scope, c.window, c.metric], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?
                    .unwrap_or((0, 0));
                if used.saturating_add(reserved).saturating_add(c.amount) > limit {
                    refused = Some(Exceeded {
                        scope: c.scope.clone(),
                        window: c.window.clone(),
                        metric: c.metric.clone(),
                        limit,
                        used,
                        reserved,
                        requested: c.amount,
                    });
                    break;
                }
            }
            if let Some(exceeded) = refused {
                answers.push(Err(exceeded));
                continue;
            }
            for c in charges {
                upsert.execute(params![c.scope, c.window, c.metric, c.amount, c.limit])?;
            }
            answers.push(Ok(()));
        }
    }
    Ok(answers)
}

/// The net change per budget line of releasing `release` and recording
/// `charge`: `(used += u, reserved -= r)`, lines with no change left out.
fn settlement<'a>(
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

/// An idempotency key's stored fingerprint, state, status, response and
/// start.
type KeyRow = (String, String, Option<i64>, Option<String>, i64);

/// [`crate::storage::Storage::idempotency_begin`], in one transaction.
pub(super) fn idempotency_begin(
    conn: &mut Connection,
    tenant: &str,
    key: &str,
    fingerprint: &str,
    now_ms: i64,
    expires_ms: i64,
    stale_before_ms: i64,
) -> rusqlite::Result<IdempotencyBegin> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached("DELETE FROM idempotency WHERE expires_ms <= ?")?
        .execute([now_ms])?;
    let row: Option<KeyRow> = tx
        .prepare_cached(
            "SELECT fingerprint, state, http_status, response, started_ms FROM idempotency
             WHERE tenant = ? AND key = ?",
        )?
        .query_row([tenant, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let answer = match row {
        Some((fp, _, _, _, _)) if fp != fingerprint => Some(IdempotencyBegin::Mismatch),
        Some((_, state, status, response, _)) if state == "done" => {
            Some(IdempotencyBegin::Replay {
                http_status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
                response: response.unwrap_or_default(),
            })
        }
        Some((_, _, _, _, started)) if started > stale_before_ms => {
            Some(IdempotencyBegin::InProgress)
        }
        _ => None,
    };
    if let Some(answer) = answer {
        tx.commit()?;
        return Ok(answer);
    }
    tx.prepare_cached(
        "INSERT INTO idempotency (tenant, key, fingerprint, state, started_ms, expires_ms)
         VALUES (?, ?, ?, 'running', ?, ?)
         ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, state = 'running',
           http_status = NULL, response = NULL, started_ms = excluded.started_ms,
           expires_ms = excluded.expires_ms",
    )?
    .execute(params![tenant, key, fingerprint, now_ms, expires_ms])?;
    tx.commit()?;
    Ok(IdempotencyBegin::Started)
}
