//! The hot writes: units of work ([`PostgresStorage::commit_works`], group
//! committed), admissions ([`admit`]) and idempotency keys
//! ([`idempotency_begin`]).
//!
//! A batch of units of work is one transaction of a fixed number of
//! statements whatever its size: the touched chains' heads locked `FOR
//! UPDATE` in chain order, the invocation rows and approvals they move
//! locked likewise, every precondition decided in memory by the shared
//! rules ([`check`], [`may_decide`]) in order (each work seeing the ones
//! accepted before it), then all writes as multi-row statements.

use super::{PostgresStorage, transact};
use crate::audit::link::{HeadRow, link, refused, vet};
use crate::error::Result;
use crate::storage::{
    Admit, Charge, Decision, End, IdempotencyBegin, KeyBegin, KeyRow, NewEntry, NewRun, Notary,
    Refused, RowState, Signed, StoredEntry, Work, check, decide, end_charges, exceeds, may_decide,
    settlement,
};
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::oneshot;

/// The answers to a list of units of work.
pub(super) type Committed = Vec<Result<Vec<StoredEntry>>>;

/// Units of work waiting for the committer.
pub(super) struct Pending {
    works: Vec<Work>,
    notary: Arc<Notary>,
    done: oneshot::Sender<Result<Committed>>,
}

/// Most audit entries committed in one transaction.
const MAX_ENTRIES: usize = 2048;

impl PostgresStorage {
    /// Commit units of work: queue them, and take the committer's turn;
    /// whoever holds it commits everything queued (with the same notary) as
    /// one transaction, so concurrent invocations share commits.
    pub(super) async fn commit_works(
        &self,
        works: Vec<Work>,
        notary: Arc<Notary>,
    ) -> Result<Committed> {
        let (done, mut wait) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                works,
                notary,
                done,
            });
        loop {
            let turn = self.turn.lock().await;
            match wait.try_recv() {
                Ok(answer) => return answer,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(crate::Error::internal("the audit commit was abandoned"));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<Pending> = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let mut take = 0;
                let mut count = 0;
                for p in q.iter() {
                    let n: usize = p.works.iter().map(|w| w.entries.len()).sum();
                    if take > 0
                        && (count + n > MAX_ENTRIES || !Arc::ptr_eq(&p.notary, &q[0].notary))
                    {
                        break;
                    }
                    count += n;
                    take += 1;
                }
                q.drain(..take).collect()
            };
            if batch.is_empty() {
                drop(turn);
                continue;
            }
            let notary = batch[0].notary.clone();
            let mut works = Vec::new();
            let mut sizes = Vec::with_capacity(batch.len());
            let mut waiters = Vec::with_capacity(batch.len());
            for p in batch {
                sizes.push(p.works.len());
                works.extend(p.works);
                waiters.push(p.done);
            }
            let answered = transact!(self, true, |tx| (
                commit_in(&mut tx, &works, &notary).await?,
                true
            ));
            drop(turn);
            match answered {
                Ok(answers) => {
                    let mut answers = answers.into_iter();
                    for (n, done) in sizes.into_iter().zip(waiters) {
                        let _ = done.send(Ok(answers.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    for done in waiters {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// An invocation row as a batch sees it.
#[derive(Debug, Clone)]
struct Inv {
    state: RowState,
    worst: Option<String>,
}

/// An approval as a batch sees it.
#[derive(Debug, Clone)]
struct Apr {
    tenant: String,
    status: String,
    expires_ms: i64,
    invocation_id: String,
}

async fn read_heads(
    tx: &mut PgConnection,
    chains: &[String],
) -> std::result::Result<BTreeMap<String, HeadRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT chain, seq, hash, signed_statement, signature FROM audit_heads
         WHERE chain = ANY($1) ORDER BY chain FOR UPDATE",
    )
    .bind(chains)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let statement: Option<String> = r.get(3);
            let signature: Option<String> = r.get(4);
            (
                r.get::<String, _>(0),
                HeadRow {
                    seq: r.get(1),
                    hash: r.get(2),
                    signed: statement
                        .zip(signature)
                        .map(|(statement, signature)| Signed {
                            statement,
                            signature,
                        }),
                },
            )
        })
        .collect())
}

/// Commit units of work inside the caller's transaction (see the module
/// docs). Answers each work: its stored entries, or why it was left out.
pub(super) async fn commit_in(
    tx: &mut PgConnection,
    works: &[Work],
    notary: &Notary,
) -> std::result::Result<Committed, sqlx::Error> {
    // 1. The touched chains' heads, locked in chain order; the registry
    // (locked: chains are added one commit at a time) when one is new.
    let chains: Vec<String> = works
        .iter()
        .flat_map(|w| &w.entries)
        .map(|e| e.chain.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found = if chains.is_empty() {
        BTreeMap::new()
    } else {
        read_heads(tx, &chains).await?
    };
    let mut registry = None;
    if chains.iter().any(|c| !found.contains_key(c)) {
        registry = sqlx::query_scalar::<_, String>(
            "SELECT value FROM meta WHERE key = 'audit.registry' FOR UPDATE",
        )
        .fetch_optional(&mut *tx)
        .await?
        .and_then(|text| serde_json::from_str::<Signed>(&text).ok());
        // Created by a commit that held the registry before us?
        let missing: Vec<String> = chains
            .iter()
            .filter(|c| !found.contains_key(*c))
            .cloned()
            .collect();
        found.extend(read_heads(tx, &missing).await?);
    }
    let rows: BTreeMap<String, Option<HeadRow>> = chains
        .iter()
        .map(|c| (c.clone(), found.remove(c)))
        .collect();
    let (heads, bad) = vet(&rows, registry.as_ref(), notary);

    // 2. The approvals decided and the invocation rows moved, locked.
    let approval_ids: Vec<String> = works
        .iter()
        .filter_map(|w| w.decide.as_ref().map(|d| d.approval_id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut approvals: BTreeMap<String, Apr> = BTreeMap::new();
    if !approval_ids.is_empty() {
        for r in sqlx::query(
            "SELECT id, tenant, status, expires_ms, invocation_id FROM approvals WHERE id = ANY($1)",
        )
        .bind(&approval_ids)
        .fetch_all(&mut *tx)
        .await?
        {
            approvals.insert(
                r.get(0),
                Apr {
                    tenant: r.get(1),
                    status: r.get(2),
                    expires_ms: r.get(3),
                    invocation_id: r.get(4),
                },
            );
        }
    }
    let inv_ids: Vec<String> = works
        .iter()
        .filter_map(|w| w.end.as_ref().map(|e| e.record.id.clone()))
        .chain(approvals.values().map(|a| a.invocation_id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut invs: BTreeMap<String, Inv> = BTreeMap::new();
    if !inv_ids.is_empty() {
        for r in sqlx::query(
            "SELECT id, status, owner, lease_until, worst FROM invocations
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&inv_ids)
        .fetch_all(&mut *tx)
        .await?
        {
            invs.insert(
                r.get(0),
                Inv {
                    state: RowState {
                        status: r.get(1),
                        owner: r.get(2),
                        lease_until: r.get(3),
                    },
                    worst: r.get(4),
                },
            );
        }
    }
    if !approval_ids.is_empty() {
        // Re-read the approvals under their locks (a decision elsewhere
        // may have committed since the first read).
        for r in sqlx::query(
            "SELECT id, status FROM approvals WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&approval_ids)
        .fetch_all(&mut *tx)
        .await?
        {
            if let Some(a) = approvals.get_mut(&r.get::<String, _>(0)) {
                a.status = r.get(1);
            }
        }
    }

    // 3. Decide, in order, each work seeing the ones accepted before it.
    let mut taken: Vec<std::result::Result<(), crate::Error>> = Vec::with_capacity(works.len());
    let mut decisions: Vec<&Decision> = Vec::new();
    let mut records: BTreeMap<String, &End> = BTreeMap::new();
    let mut release: Vec<Charge> = Vec::new();
    let mut charge: Vec<Charge> = Vec::new();
    for w in works {
        if let Some(e) = w.entries.iter().find(|e| bad.contains_key(&e.chain)) {
            taken.push(Err(refused(&e.chain, &bad[&e.chain])));
            continue;
        }
        let decide_ok = match &w.decide {
            Some(d) => approvals.get(&d.approval_id).is_some_and(|a| {
                a.tenant == d.tenant
                    && may_decide(d, &a.status, a.expires_ms)
                    && (d.run.is_none()
                        || invs
                            .get(&a.invocation_id)
                            .is_some_and(|i| i.state.status == "pending_approval"))
            }),
            None => true,
        };
        if !decide_ok {
            taken.push(Err(conflict()));
            continue;
        }
        // The decision's effect on the row, as this work's end sees it.
        let mut after: Option<(String, Inv)> = None;
        if let Some(d) = &w.decide
            && let Some((owner, lease_until)) = &d.run
        {
            let id = approvals[&d.approval_id].invocation_id.clone();
            let mut inv = invs[&id].clone();
            inv.state = RowState {
                status: "running".into(),
                owner: Some(owner.clone()),
                lease_until: Some(*lease_until),
            };
            after = Some((id, inv));
        }
        let end_ok = match &w.end {
            Some(e) => {
                let state = match &after {
                    Some((id, inv)) if *id == e.record.id => Some(inv),
                    _ => invs.get(&e.record.id),
                };
                check(&e.expect, state.map(|i| &i.state))
                    .then(|| state.and_then(|i| i.worst.clone()))
            }
            None => Some(None),
        };
        let Some(worst) = end_ok else {
            taken.push(Err(conflict()));
            continue;
        };
        // Accepted: apply to the batch's view.
        if let Some(d) = &w.decide {
            if let Some(a) = approvals.get_mut(&d.approval_id) {
                a.status = d.status.clone();
            }
            decisions.push(d);
        }
        if let Some((id, inv)) = after {
            invs.insert(id, inv);
        }
        if let Some(e) = &w.end {
            let worst: Option<Vec<Charge>> = worst.and_then(|w| serde_json::from_str(&w).ok());
            match &worst {
                Some(worst) => {
                    let (r, c) = end_charges(worst, e.used.as_deref());
                    release.extend(r);
                    charge.extend(c);
                }
                None => charge.extend(e.used.iter().flatten().cloned()),
            }
            invs.insert(
                e.record.id.clone(),
                Inv {
                    state: RowState {
                        status: e.record.status.clone(),
                        owner: None,
                        lease_until: None,
                    },
                    worst: None,
                },
            );
            records.insert(e.record.id.clone(), e);
        }
        charge.extend(w.charge.iter().cloned());
        taken.push(Ok(()));
    }

    // 4. Write.
    for d in &decisions {
        decide_in(tx, d).await?;
    }
    upsert_records(tx, &records).await?;
    settle(tx, &release, &charge).await?;
    let entries: Vec<NewEntry> = works
        .iter()
        .zip(&taken)
        .filter(|(_, ok)| ok.is_ok())
        .flat_map(|(w, _)| w.entries.iter().cloned())
        .collect();
    let now = entries.last().map_or(0, |e| e.time_ms);
    let linked = link(&entries, &heads, registry.as_ref(), notary, now);
    if !linked.entries.is_empty() {
        let e = &linked.entries;
        sqlx::query(
            "INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[])",
        )
        .bind(e.iter().map(|x| x.chain.clone()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.seq).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.time_ms).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.body.clone()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.prev_hash.clone()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.hash.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    for c in &linked.checkpoints {
        sqlx::query(
            "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind, statement)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.chain)
        .bind(c.seq)
        .bind(&c.hash)
        .bind(c.time_ms)
        .bind(&c.signature)
        .bind(&c.kind)
        .bind(&c.statement)
        .execute(&mut *tx)
        .await?;
    }
    if !linked.heads.is_empty() {
        let h = &linked.heads;
        sqlx::query(
            "INSERT INTO audit_heads (chain, seq, hash, signed_seq, signed_hash, signed_time_ms, signature,
                                      signed_statement)
             SELECT c, s, h, s, h, $4, sig, st
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $5::text[], $6::text[]) AS x(c, s, h, sig, st)
             ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
               signed_seq = excluded.signed_seq, signed_hash = excluded.signed_hash,
               signed_time_ms = excluded.signed_time_ms, signature = excluded.signature,
               signed_statement = excluded.signed_statement",
        )
        .bind(h.iter().map(|x| x.0.clone()).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.1.seq).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.1.hash.clone()).collect::<Vec<_>>())
        .bind(now)
        .bind(h.iter().map(|x| x.2.signature.clone()).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.2.statement.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if let Some(r) = &linked.registry {
        registry_put(tx, r).await?;
    }
    let mut stored = linked.entries.into_iter();
    let mut answers = Vec::with_capacity(works.len());
    let mut done_keys = Vec::new();
    for (w, ok) in works.iter().zip(taken) {
        if let Err(e) = ok {
            answers.push(Err(e));
            continue;
        }
        for a in &w.approvals {
            insert_approval(tx, a).await?;
        }
        done_keys.extend(w.idempotency.iter());
        for c in &w.cache {
            sqlx::query(
                "INSERT INTO result_cache (tenant, key, result, expires_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, key) DO UPDATE SET result = excluded.result, expires_ms = excluded.expires_ms",
            )
            .bind(&c.tenant)
            .bind(&c.key)
            .bind(&c.result)
            .bind(c.expires_ms)
            .execute(&mut *tx)
            .await?;
        }
        for m in &w.outbox {
            sqlx::query(
                "INSERT INTO outbox (tenant, invocation_id, approval_id, url, created_ms, attempts, state, next_ms)
                 VALUES ($1, $2, $3, $4, $5, 0, 'pending', $5)",
            )
            .bind(&m.tenant)
            .bind(&m.invocation_id)
            .bind(&m.approval_id)
            .bind(&m.url)
            .bind(m.created_ms)
            .execute(&mut *tx)
            .await?;
        }
        answers.push(Ok(stored.by_ref().take(w.entries.len()).collect()));
    }
    if !done_keys.is_empty() {
        let d = &done_keys;
        sqlx::query(
            "UPDATE idempotency k SET state = 'done', response = x.r
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS x(t, k, i, r)
             WHERE k.tenant = x.t AND k.key = x.k AND k.invocation_id = x.i",
        )
        .bind(d.iter().map(|x| x.tenant.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|x| x.key.clone()).collect::<Vec<_>>())
        .bind(
            d.iter()
                .map(|x| x.invocation_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(d.iter().map(|x| x.response.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
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

/// Store the chain registry.
pub(super) async fn registry_put(
    tx: &mut PgConnection,
    registry: &Signed,
) -> std::result::Result<(), sqlx::Error> {
    let text = serde_json::to_string(registry).unwrap_or_default();
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('audit.registry', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(text)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Apply a decision the batch accepted.
async fn decide_in(tx: &mut PgConnection, d: &Decision) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE approvals SET status = $1, decided_by = $2, decided_ms = $3, reason = $4, args = ''
         WHERE tenant = $5 AND id = $6",
    )
    .bind(&d.status)
    .bind(&d.decided_by)
    .bind(d.now_ms)
    .bind(&d.reason)
    .bind(&d.tenant)
    .bind(&d.approval_id)
    .execute(&mut *tx)
    .await?;
    if let Some((owner, lease_until)) = &d.run {
        sqlx::query(
            "UPDATE invocations SET status = 'running', owner = $1, lease_until = $2, admitted = false
             WHERE id = (SELECT invocation_id FROM approvals WHERE tenant = $3 AND id = $4)
               AND status = 'pending_approval'",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(&d.tenant)
        .bind(&d.approval_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Write the records of the ends the batch accepted (one per row: the
/// last).
async fn upsert_records(
    tx: &mut PgConnection,
    ends: &BTreeMap<String, &End>,
) -> std::result::Result<(), sqlx::Error> {
    if ends.is_empty() {
        return Ok(());
    }
    let r: Vec<&crate::storage::InvocationRecord> = ends.values().map(|e| &e.record).collect();
    let s = |f: fn(&crate::storage::InvocationRecord) -> &String| -> Vec<String> {
        r.iter().map(|x| f(x).clone()).collect()
    };
    let o = |f: fn(&crate::storage::InvocationRecord) -> &Option<String>| -> Vec<Option<String>> {
        r.iter().map(|x| f(x).clone()).collect()
    };
    sqlx::query(
        "INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                  status, error_kind, created_ms, response, record_version)
         SELECT *, $13 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                   $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[])
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
           error_kind = excluded.error_kind, response = excluded.response,
           record_version = excluded.record_version, owner = NULL, lease_until = NULL, worst = NULL",
    )
    .bind(s(|x| &x.id))
    .bind(s(|x| &x.tenant))
    .bind(s(|x| &x.tool))
    .bind(s(|x| &x.function))
    .bind(o(|x| &x.version))
    .bind(o(|x| &x.workflow))
    .bind(o(|x| &x.task_id))
    .bind(o(|x| &x.principal))
    .bind(s(|x| &x.status))
    .bind(o(|x| &x.error_kind))
    .bind(r.iter().map(|x| x.created_ms).collect::<Vec<_>>())
    .bind(s(|x| &x.response))
    .bind(i32::try_from(crate::record::RECORD_VERSION).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn insert_approval<'a>(
    tx: &'a mut PgConnection,
    a: &'a crate::storage::ApprovalRecord,
) -> crate::BoxFuture<'a, std::result::Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO approvals (id, tenant, invocation_id, status, tool, function, version, workflow,
                                    task_id, args, args_redacted, args_sha256, rule, requester, created_ms,
                                    expires_ms, callback_url)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&a.id)
        .bind(&a.tenant)
        .bind(&a.invocation_id)
        .bind(&a.status)
        .bind(&a.tool)
        .bind(&a.function)
        .bind(&a.version)
        .bind(&a.workflow)
        .bind(&a.task_id)
        .bind(&a.args)
        .bind(&a.args_redacted)
        .bind(&a.args_sha256)
        .bind(&a.rule)
        .bind(&a.requester)
        .bind(a.created_ms)
        .bind(a.expires_ms)
        .bind(&a.callback_url)
        .execute(&mut *tx)
        .await?;
        Ok(())
    })
}

/// Release reservations and record usage: one statement, lines in key
/// order (so concurrent settlements lock them in one order).
pub(super) async fn settle(
    tx: &mut PgConnection,
    release: &[Charge],
    charge: &[Charge],
) -> std::result::Result<(), sqlx::Error> {
    let lines = settlement(release, charge);
    if lines.is_empty() {
        return Ok(());
    }
    let mut k: (Vec<String>, Vec<String>, Vec<String>) = Default::default();
    let (mut used, mut released) = (Vec::new(), Vec::new());
    for ((scope, window, metric), (u, r)) in lines {
        k.0.push(scope.to_string());
        k.1.push(window.to_string());
        k.2.push(metric.to_string());
        used.push(u);
        released.push(-r);
    }
    sqlx::query(
        "INSERT INTO budget AS b (scope, win, metric, used, reserved)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
           AS x(s, w, m, u, r)
         ORDER BY s COLLATE \"C\", w COLLATE \"C\", m COLLATE \"C\"
         ON CONFLICT (scope, win, metric) DO UPDATE
         SET used = b.used + excluded.used, reserved = greatest(0, b.reserved + excluded.reserved)",
    )
    .bind(k.0)
    .bind(k.1)
    .bind(k.2)
    .bind(used)
    .bind(released)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Admission in the caller's transaction: the row must be new (or this
/// owner's unadmitted one); each limited line of the worst case is
/// reserved by a conditional update, in line order. Returns the answer and
/// whether to commit (a refusal rolls back what it reserved).
pub(super) async fn admit_in(
    tx: &mut PgConnection,
    a: &Admit,
) -> std::result::Result<(std::result::Result<(), Refused>, bool), sqlx::Error> {
    // A row written before admission (its key's, or its approval's) must
    // still be this owner's unadmitted one; a new row's id must be free
    // (checked when it is inserted, below).
    if a.existing {
        let existing =
            sqlx::query("SELECT status, owner, admitted FROM invocations WHERE id = $1 FOR UPDATE")
                .bind(&a.run.id)
                .fetch_optional(&mut *tx)
                .await?;
        let mine = existing.is_some_and(|r| {
            r.get::<String, _>(0) == "running"
                && !r.get::<bool, _>(2)
                && r.get::<Option<String>, _>(1).as_deref() == Some(&a.run.owner)
        });
        if !mine {
            return Ok((Err(Refused::Taken), false));
        }
    }
    let mut lines: Vec<&Charge> = a.worst.iter().filter(|c| c.limit.is_some()).collect();
    lines.sort_by(|x, y| (&x.scope, &x.window, &x.metric).cmp(&(&y.scope, &y.window, &y.metric)));
    // One line per key (a worst case naming a line twice reserves the sum).
    let mut merged: Vec<Charge> = Vec::with_capacity(lines.len());
    for c in lines {
        match merged.last_mut() {
            Some(m)
                if (m.scope.as_str(), m.window.as_str(), m.metric.as_str())
                    == (c.scope.as_str(), c.window.as_str(), c.metric.as_str()) =>
            {
                m.amount = m.amount.saturating_add(c.amount);
                m.limit = c.limit;
            }
            _ => merged.push(c.clone()),
        }
    }
    for c in &merged {
        // The limit check and the reservation in one statement: a new line
        // is written only if the amount fits its limit; an existing one is
        // locked and updated only if `used + reserved + amount <= limit`
        // on its latest version (a concurrent reservation is waited for,
        // then the condition re-checked). No row back: refused.
        let reserved = sqlx::query(
            "INSERT INTO budget AS b (scope, win, metric, used, reserved, lim)
             SELECT $1, $2, $3, 0, $4, $5 WHERE $4 <= $5
             ON CONFLICT (scope, win, metric) DO UPDATE
             SET reserved = b.reserved + excluded.reserved, lim = excluded.lim
             WHERE b.used + b.reserved + excluded.reserved <= excluded.lim
             RETURNING 1",
        )
        .bind(&c.scope)
        .bind(&c.window)
        .bind(&c.metric)
        .bind(c.amount)
        .bind(c.limit)
        .fetch_optional(&mut *tx)
        .await?;
        if reserved.is_none() {
            let r = sqlx::query(
                "SELECT used, reserved FROM budget WHERE scope = $1 AND win = $2 AND metric = $3",
            )
            .bind(&c.scope)
            .bind(&c.window)
            .bind(&c.metric)
            .fetch_optional(&mut *tx)
            .await?;
            let (used, held): (i64, i64) = r.map_or((0, 0), |r| (r.get(0), r.get(1)));
            let refusal = exceeds(c, used, held).unwrap_or(crate::storage::Exceeded {
                scope: c.scope.clone(),
                window: c.window.clone(),
                metric: c.metric.clone(),
                limit: c.limit.unwrap_or(0),
                used,
                reserved: held,
                requested: c.amount,
            });
            return Ok((Err(Refused::Exceeded(refusal)), false));
        }
    }
    let worst = serde_json::to_string(&a.worst).unwrap_or_default();
    if a.existing {
        sqlx::query(
            "UPDATE invocations SET admitted = true, worst = $1, lease_until = $2 WHERE id = $3",
        )
        .bind(worst)
        .bind(a.run.lease_until)
        .bind(&a.run.id)
        .execute(&mut *tx)
        .await?;
    } else if !insert_running(tx, &a.run, true, Some(&worst)).await? {
        return Ok((Err(Refused::Taken), false));
    }
    Ok((Ok(()), true))
}

/// Write a new running row; false if the id is taken.
pub(super) async fn insert_running(
    tx: &mut PgConnection,
    run: &NewRun,
    admitted: bool,
    worst: Option<&str>,
) -> std::result::Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                  status, created_ms, response, owner, lease_until, admitted, worst,
                                  transport, idempotency_key, record_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, '{}', $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&run.id)
    .bind(&run.tenant)
    .bind(&run.tool)
    .bind(&run.function)
    .bind(&run.version)
    .bind(&run.workflow)
    .bind(&run.task_id)
    .bind(&run.principal)
    .bind(run.created_ms)
    .bind(&run.owner)
    .bind(run.lease_until)
    .bind(admitted)
    .bind(worst)
    .bind(&run.transport)
    .bind(&run.idempotency_key)
    .bind(i32::try_from(crate::record::RECORD_VERSION).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// [`crate::storage::IdempotencyStore::idempotency_begin`] in the caller's
/// transaction: the key's row locked (or its insertion raced: retried),
/// [`decide`] on it, and when the request starts, the key and its running
/// (unadmitted) invocation row stored.
pub(super) async fn idempotency_begin_in(
    tx: &mut PgConnection,
    b: &KeyBegin,
) -> std::result::Result<(Option<IdempotencyBegin>, bool), sqlx::Error> {
    let row = sqlx::query(
        "SELECT k.fingerprint, k.expires_ms, k.state, k.response, i.status
         FROM idempotency k LEFT JOIN invocations i ON i.id = k.invocation_id
         WHERE k.tenant = $1 AND k.key = $2 FOR UPDATE OF k",
    )
    .bind(&b.tenant)
    .bind(&b.key)
    .fetch_optional(&mut *tx)
    .await?;
    let stored = row.map(|r| {
        let state: String = r.get(2);
        let response: Option<String> = r.get(3);
        KeyRow {
            fingerprint: r.get(0),
            expires_ms: r.get(1),
            answer: (state == "done").then(|| response.unwrap_or_default()),
            invocation: r.get(4),
        }
    });
    let answer = decide(stored.as_ref(), &b.fingerprint, b.now_ms);
    if answer == IdempotencyBegin::Started {
        // A new key: a concurrent first use of the same key makes this
        // insert fail (unique violation), and the retry finds theirs.
        let inserted = sqlx::query(
            "INSERT INTO idempotency (tenant, key, fingerprint, state, started_ms, expires_ms, invocation_id)
             VALUES ($1, $2, $3, 'running', $4, $5, $6)
             ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, state = 'running',
               http_status = NULL, response = NULL, started_ms = excluded.started_ms,
               expires_ms = excluded.expires_ms, invocation_id = excluded.invocation_id
             WHERE $7",
        )
        .bind(&b.tenant)
        .bind(&b.key)
        .bind(&b.fingerprint)
        .bind(b.now_ms)
        .bind(b.expires_ms)
        .bind(&b.run.id)
        .bind(stored.is_some())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Someone inserted it after our read: decide again on theirs.
            return Ok((None, false));
        }
        if !insert_running(tx, &b.run, false, None).await? {
            // The invocation id is taken (never, with fresh ids): refuse
            // rather than point the key at another's row.
            return Err(sqlx::Error::Protocol(format!(
                "invocation id {} exists",
                b.run.id
            )));
        }
    }
    Ok((Some(answer), true))
}

impl PostgresStorage {
    pub(super) async fn admit(&self, a: Admit) -> Result<std::result::Result<(), Refused>> {
        transact!(self, false, |tx| admit_in(&mut tx, &a).await?)
    }

    pub(super) async fn idempotency_begin_tx(&self, b: KeyBegin) -> Result<IdempotencyBegin> {
        for _ in 0..super::ATTEMPTS {
            if let Some(answer) =
                transact!(self, false, |tx| idempotency_begin_in(&mut tx, &b).await?)?
            {
                return Ok(answer);
            }
        }
        Err(crate::Error::new(
            crate::ErrorKind::Unavailable,
            "the idempotency key is being started by several requests at once; retry",
        ))
    }
}
