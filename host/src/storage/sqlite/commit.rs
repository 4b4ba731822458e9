//! What the hot writer ([`super::writer`]) writes: units of work
//! ([`commit_in`]), admissions ([`admit_in`]) and idempotency keys, as cached prepared statements inside `BEGIN IMMEDIATE`
//! transactions on the writer's connection.
//!
//! All run on the writer thread, where a statement is a function call (no
//! thread handoff), so a transaction of many small statements is cheap; the
//! chain heads are read inside the transaction, so concurrent processes on
//! one data dir never fork a chain.

use crate::audit::link::{HeadRow, link, refused, vet};
use crate::error::Result;
use crate::storage::{
    Admit, ApprovalRecord, Charge, Decision, End, IdempotencyBegin, IdempotencyDone, KeyBegin,
    KeyRow, NewEntry, NewRun, Notary, Refused, RowState, Signed, StoredEntry, Work, check, decide,
    end_charges, exceeds, may_decide, reservations, settlement,
};
use crate::storage::{ApprovalStatus, Status};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::BTreeMap;

/// [`commit_in`] in a transaction of its own.
pub(super) fn commit(
    conn: &mut Connection,
    works: &[Work],
    notary: &Notary,
) -> rusqlite::Result<Vec<Result<Vec<StoredEntry>>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let answers = commit_in(&tx, works, notary)?;
    tx.commit()?;
    Ok(answers)
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

/// An invocation row's lifecycle columns.
fn row_state(tx: &Connection, id: &str) -> rusqlite::Result<Option<(RowState, Option<String>)>> {
    tx.prepare_cached("SELECT status, owner, lease_until, worst FROM invocations WHERE id = ?")?
        .query_row([id], |r| {
            Ok((
                RowState {
                    status: Status::parse(&r.get::<_, String>(0)?),
                    owner: r.get(1)?,
                    lease_until: r.get(2)?,
                },
                r.get(3)?,
            ))
        })
        .optional()
}

/// Whether a decision may be applied now (read in the transaction).
fn may_decide_in(tx: &Connection, d: &Decision) -> rusqlite::Result<bool> {
    let found: Option<(String, i64, String)> = tx
        .prepare_cached(
            "SELECT status, expires_ms, invocation_id FROM approvals WHERE tenant = ? AND id = ?",
        )?
        .query_row(rusqlite::params![d.tenant, d.approval_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((status, expires_ms, invocation_id)) = found else {
        return Ok(false);
    };
    // A status no host writes (a hand-edited row) is decided by no one.
    let Some(status) = ApprovalStatus::parse(&status) else {
        return Ok(false);
    };
    if !may_decide(d, status, expires_ms) {
        return Ok(false);
    }
    if d.run.is_some() {
        let row = row_state(tx, &invocation_id)?;
        return Ok(row.is_some_and(|(r, _)| r.status == Some(Status::PendingApproval)));
    }
    Ok(true)
}

/// Apply a decision [`may_decide_in`] allowed.
fn decide_in(tx: &Connection, d: &Decision) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE approvals SET status = ?, decided_by = ?, decided_ms = ?, reason = ?, args = ''
         WHERE tenant = ? AND id = ?",
    )?
    .execute(params![
        d.status,
        d.decided_by,
        d.now_ms,
        d.reason,
        d.tenant,
        d.approval_id
    ])?;
    if let Some((owner, lease_until)) = &d.run {
        tx.prepare_cached(
            "UPDATE invocations SET status = 'running', owner = ?, lease_until = ?, admitted = 0
             WHERE id = (SELECT invocation_id FROM approvals WHERE tenant = ? AND id = ?)
               AND status = 'pending_approval'",
        )?
        .execute(params![owner, lease_until, d.tenant, d.approval_id])?;
    }
    Ok(())
}

/// Apply an end whose precondition held: settle the row's reservation by
/// its own charges, then write the record.
fn end_in(tx: &Connection, end: &End, worst: Option<String>) -> rusqlite::Result<()> {
    let worst: Option<Vec<Charge>> = worst.and_then(|w| serde_json::from_str(&w).ok());
    match &worst {
        Some(worst) => {
            let (release, charge) = end_charges(worst, end.used.as_deref());
            settle(tx, &release, &charge)?;
        }
        None => {
            if let Some(used) = &end.used {
                settle(tx, &[], used)?;
            }
        }
    }
    let r = &end.record;
    tx.prepare_cached(
        "INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                  status, error_kind, created_ms, response, record_version)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
           error_kind = excluded.error_kind, response = excluded.response,
           record_version = excluded.record_version, owner = NULL, lease_until = NULL, worst = NULL",
    )?
    .execute(params![
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
        r.response,
        crate::record::RECORD_VERSION
    ])?;
    Ok(())
}

/// Commit units of work inside the caller's write transaction (`BEGIN
/// IMMEDIATE`): check each one's preconditions (in order, each seeing the
/// ones before it) and leave out those that fail; link the entries of the
/// rest onto their chains' heads, write the entries, the signed heads, the
/// periodic checkpoints and (for new chains) the registry; write what each
/// work carries. Answers each work.
pub(super) fn commit_in(
    tx: &Connection,
    works: &[Work],
    notary: &Notary,
) -> rusqlite::Result<Vec<Result<Vec<StoredEntry>>>> {
    // The touched chains' heads, as their signatures say (vet): a work on a
    // chain that fails is refused before anything of it is applied.
    let mut rows: BTreeMap<String, Option<HeadRow>> = BTreeMap::new();
    // Chains whose head row cannot even be read (a column of the wrong
    // type): refused like any chain `vet` refuses, never failing the
    // transaction (and with it other tenants' works).
    let mut unreadable: BTreeMap<String, String> = BTreeMap::new();
    {
        let mut read = tx.prepare_cached(
            "SELECT seq, hash, signed_statement, signature FROM audit_heads WHERE chain = ?",
        )?;
        for e in works.iter().flat_map(|w| &w.entries) {
            if !rows.contains_key(e.chain.as_str()) && !unreadable.contains_key(e.chain.as_str()) {
                let row = read
                    .query_row([&e.chain], |r| {
                        let statement: Option<String> = r.get(2)?;
                        let signature: Option<String> = r.get(3)?;
                        Ok(HeadRow {
                            seq: r.get(0)?,
                            hash: r.get(1)?,
                            signed: statement
                                .zip(signature)
                                .map(|(statement, signature)| Signed {
                                    statement,
                                    signature,
                                }),
                        })
                    })
                    .optional();
                match row {
                    Ok(row) => {
                        rows.insert(e.chain.clone(), row);
                    }
                    Err(
                        e2 @ (rusqlite::Error::FromSqlConversionFailure(..)
                        | rusqlite::Error::InvalidColumnType(..)),
                    ) => {
                        unreadable.insert(
                            e.chain.clone(),
                            format!("its head row cannot be read ({e2})"),
                        );
                    }
                    Err(other) => return Err(other),
                }
            }
        }
    }
    let registry = if rows.values().any(Option::is_none) {
        tx.prepare_cached("SELECT value FROM meta WHERE key = 'audit.registry'")?
            .query_row([], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|text| serde_json::from_str::<Signed>(&text).ok())
    } else {
        None
    };
    let (heads, mut bad) = vet(&rows, registry.as_ref(), notary);
    bad.extend(unreadable);
    // Entries past a chain's signed head were not written by a host (every
    // commit moves the head with its entries): continuing the chain would
    // collide with them and fail the whole transaction.
    {
        let mut stray = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM audit_entries WHERE chain = ? AND seq > ?)",
        )?;
        for (chain, head) in &heads {
            let after = head.as_ref().map_or(0, |h| h.seq);
            if stray.query_row(params![chain, after], |r| r.get::<_, bool>(0))? {
                bad.insert(
                    chain.clone(),
                    format!(
                        "it has entries past its signed head at entry {after} (inserted outside Toolhost)"
                    ),
                );
            }
        }
    }
    let mut taken: Vec<std::result::Result<(), crate::Error>> = Vec::with_capacity(works.len());
    for w in works {
        if let Some(e) = w.entries.iter().find(|e| bad.contains_key(&e.chain)) {
            taken.push(Err(refused(&e.chain, &bad[&e.chain])));
            continue;
        }
        let decide_ok = match &w.decide {
            Some(d) => may_decide_in(tx, d)?,
            None => true,
        };
        let end_ok = match (&w.end, decide_ok) {
            (Some(e), true) => {
                let state = row_state(tx, &e.record.id)?;
                let ok = check(&e.expect, state.as_ref().map(|(s, _)| s));
                ok.then(|| state.and_then(|(_, worst)| worst))
            }
            (None, true) => Some(None),
            (_, false) => None,
        };
        let Some(worst) = end_ok else {
            taken.push(Err(conflict()));
            continue;
        };
        if let Some(d) = &w.decide {
            decide_in(tx, d)?;
        }
        if let Some(e) = &w.end {
            end_in(tx, e, worst)?;
        }
        taken.push(Ok(()));
    }
    let entries: Vec<NewEntry> = works
        .iter()
        .zip(&taken)
        .filter(|(_, ok)| ok.is_ok())
        .flat_map(|(w, _)| w.entries.iter().cloned())
        .collect();
    let now = entries.last().map_or(0, |e| e.time_ms);
    let linked = link(&entries, &heads, registry.as_ref(), notary, now);
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
    let mut stored = linked.entries.into_iter();
    let mut answers = Vec::with_capacity(works.len());
    for (w, ok) in works.iter().zip(taken) {
        if let Err(e) = ok {
            answers.push(Err(e));
            continue;
        }
        settle(tx, &[], &w.charge)?;
        for a in &w.approvals {
            insert_approval(tx, a)?;
        }
        for d in &w.idempotency {
            finish_idempotency(tx, d)?;
        }
        for c in &w.cache {
            tx.prepare_cached(
                "INSERT INTO result_cache (tenant, key, result, expires_ms) VALUES (?, ?, ?, ?)
                 ON CONFLICT (tenant, key) DO UPDATE SET result = excluded.result, expires_ms = excluded.expires_ms",
            )?
            .execute(params![c.tenant, c.key, c.result, c.expires_ms])?;
        }
        for m in &w.outbox {
            tx.prepare_cached(
                "INSERT INTO outbox (tenant, invocation_id, approval_id, url, created_ms, attempts, state, next_ms)
                 VALUES (?, ?, ?, ?, ?, 0, 'pending', ?)",
            )?
            .execute(params![
                m.tenant,
                m.invocation_id,
                m.approval_id,
                m.url,
                m.created_ms,
                m.created_ms
            ])?;
        }
        answers.push(Ok(stored.by_ref().take(w.entries.len()).collect()));
    }
    Ok(answers)
}

/// The answer to a work whose precondition failed.
pub(super) fn conflict() -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Conflict,
        "the invocation or approval is no longer in the state this work expected (another host or the reaper moved it)",
    )
}

fn insert_approval(tx: &Connection, a: &ApprovalRecord) -> rusqlite::Result<()> {
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
    Ok(())
}

/// Keep an idempotent request's final answer.
pub(super) fn finish_idempotency(conn: &Connection, d: &IdempotencyDone) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE idempotency SET state = 'done', response = ?
         WHERE tenant = ? AND key = ? AND invocation_id = ?",
    )?
    .execute(params![d.response, d.tenant, d.key, d.invocation_id])?;
    Ok(())
}

/// Record usage outside any invocation, in a transaction of its own.
pub(super) fn charge_alone(conn: &mut Connection, charge: &[Charge]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    settle(&tx, &[], charge)?;
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
         SET used = CASE WHEN excluded.used > 9223372036854775807 - used
                         THEN 9223372036854775807 ELSE used + excluded.used END,
             reserved = max(0, reserved + excluded.reserved)",
    )?;
    for ((scope, window, metric), (used, released)) in lines {
        upsert.execute(params![
            scope,
            window,
            metric,
            used,
            released.saturating_neg()
        ])?;
    }
    Ok(())
}

/// [`admit_in`] in a transaction of its own.
pub(super) fn admit(
    conn: &mut Connection,
    admits: &[Admit],
) -> rusqlite::Result<Vec<std::result::Result<(), Refused>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let answers = admit_in(&tx, admits)?;
    tx.commit()?;
    Ok(answers)
}

/// Admit many invocations inside the caller's write transaction, in order,
/// each all or nothing: reserve the limited lines of its worst case and
/// write its row running and admitted (a new row, or its owner's
/// unadmitted one).
pub(super) fn admit_in(
    tx: &Connection,
    admits: &[Admit],
) -> rusqlite::Result<Vec<std::result::Result<(), Refused>>> {
    let mut answers = Vec::with_capacity(admits.len());
    let mut read = tx.prepare_cached(
        "SELECT used, reserved FROM budget WHERE scope = ? AND window = ? AND metric = ?",
    )?;
    let mut reserve = tx.prepare_cached(
        "INSERT INTO budget (scope, window, metric, used, reserved, lim) VALUES (?, ?, ?, 0, ?, ?)
         ON CONFLICT (scope, window, metric) DO UPDATE
         SET reserved = CASE WHEN excluded.reserved > 9223372036854775807 - reserved
                             THEN 9223372036854775807 ELSE reserved + excluded.reserved END,
             lim = excluded.lim",
    )?;
    for a in admits {
        let existing: Option<(String, Option<String>, i64)> = tx
            .prepare_cached("SELECT status, owner, admitted FROM invocations WHERE id = ?")?
            .query_row([&a.run.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let mine = match &existing {
            None => !a.existing,
            Some((status, owner, admitted)) => {
                status == "running" && *admitted == 0 && owner.as_deref() == Some(&a.run.owner)
            }
        };
        if !mine {
            answers.push(Err(Refused::Taken));
            continue;
        }
        let mut refused = None;
        let lines = reservations(&a.worst);
        for c in &lines {
            let (used, reserved): (i64, i64) = read
                .query_row(params![c.scope, c.window, c.metric], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
                .unwrap_or((0, 0));
            if let Some(e) = exceeds(c, used, reserved) {
                refused = Some(e);
                break;
            }
        }
        if let Some(e) = refused {
            answers.push(Err(Refused::Exceeded(e)));
            continue;
        }
        for c in &lines {
            reserve.execute(params![c.scope, c.window, c.metric, c.amount, c.limit])?;
        }
        let worst = serde_json::to_string(&a.worst).unwrap_or_default();
        if existing.is_none() {
            insert_running(tx, &a.run, true, Some(&worst))?;
        } else {
            tx.prepare_cached(
                "UPDATE invocations SET admitted = 1, worst = ?, lease_until = ? WHERE id = ?",
            )?
            .execute(params![worst, a.run.lease_until, a.run.id])?;
        }
        answers.push(Ok(()));
    }
    Ok(answers)
}

/// Write a new running row.
pub(super) fn insert_running(
    tx: &Connection,
    run: &NewRun,
    admitted: bool,
    worst: Option<&str>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                  status, created_ms, response, owner, lease_until, admitted, worst,
                                  transport, idempotency_key, record_version)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        run.id,
        run.tenant,
        run.tool,
        run.function,
        run.version,
        run.workflow,
        run.task_id,
        run.principal,
        run.created_ms,
        run.owner,
        run.lease_until,
        i64::from(admitted),
        worst,
        run.transport,
        run.idempotency_key,
        crate::record::RECORD_VERSION
    ])?;
    Ok(())
}

/// [`crate::storage::IdempotencyStore::idempotency_begin`], in one
/// transaction: [`decide`] on the stored key and, when the request starts,
/// store the key and its running (unadmitted) invocation row.
pub(super) fn idempotency_begin(
    conn: &mut Connection,
    b: &KeyBegin,
) -> rusqlite::Result<IdempotencyBegin> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached("DELETE FROM idempotency WHERE expires_ms <= ?")?
        .execute([b.now_ms])?;
    let stored: Option<KeyRow> = tx
        .prepare_cached(
            "SELECT k.fingerprint, k.expires_ms, k.state, k.http_status, k.response, i.status
             FROM idempotency k LEFT JOIN invocations i ON i.id = k.invocation_id
             WHERE k.tenant = ? AND k.key = ?",
        )?
        .query_row(rusqlite::params![b.tenant, b.key], |r| {
            let state: String = r.get(2)?;
            let answer = crate::storage::stored_answer(&state, r.get(4)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
            })?;
            Ok(KeyRow {
                fingerprint: r.get(0)?,
                expires_ms: r.get(1)?,
                answer,
                invocation: r.get(5)?,
            })
        })
        .optional()?;
    let answer = decide(stored.as_ref(), &b.fingerprint, b.now_ms);
    if answer == IdempotencyBegin::Started {
        tx.prepare_cached(
            "INSERT INTO idempotency (tenant, key, fingerprint, state, started_ms, expires_ms, invocation_id)
             VALUES (?, ?, ?, 'running', ?, ?, ?)
             ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, state = 'running',
               http_status = NULL, response = NULL, started_ms = excluded.started_ms,
               expires_ms = excluded.expires_ms, invocation_id = excluded.invocation_id",
        )?
        .execute(params![
            b.tenant,
            b.key,
            b.fingerprint,
            b.now_ms,
            b.expires_ms,
            b.run.id
        ])?;
        insert_running(&tx, &b.run, false, None)?;
    }
    tx.commit()?;
    Ok(answer)
}
