//! The hot writes: units of work ([`PostgresStorage::commit_works`], group
//! committed), admissions ([`admit`]) and idempotency keys
//! ([`idempotency_begin`]).
//!
//! A batch of units of work is one transaction of a fixed number of
//! statements whatever its size: the touched chains' heads locked `FOR
//! UPDATE` in chain order, then the invocation rows they move (in the same
//! statement when no approval is decided), the registry and new heads when
//! a chain is new, the approvals decided; every batch takes its locks in
//! this one order. Every precondition is then decided in memory by the
//! shared rules ([`check`], [`may_decide`]) in order (each work seeing the
//! ones accepted before it), and all writes go out as multi-row statements.

use super::{PostgresStorage, transact};
use crate::audit::link::{HeadRow, link, refused, vet};
use crate::error::Result;
use crate::ids::{ApprovalId, InvocationId, TenantId};
use crate::storage::{
    Admit, Charge, Decision, End, IdempotencyBegin, KeyBegin, KeyRow, NewEntry, NewRun, Notary,
    Refused, RowState, Signed, StoredEntry, Work, check, decide, end_charges, exceeds, may_decide,
    reservations, settlement,
};
use crate::storage::{ApprovalStatus, LedgerScope, Status, Window};
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The answers to a list of units of work.
pub(super) type Committed = Vec<Result<Vec<StoredEntry>>>;

/// Units of work waiting for the committer, with the notary that signs
/// their chains' heads.
pub(super) type Pending = (Vec<Work>, Arc<Notary>);

/// Most audit entries committed in one transaction.
const MAX_ENTRIES: usize = 2048;

/// Most admissions decided in one transaction.
const MAX_ADMITS: usize = 512;

impl PostgresStorage {
    /// Commit units of work (with the notary that signs their chains'
    /// heads), batched with whatever else is queued: a batch is every unit
    /// of work queued with the same notary, up to [`MAX_ENTRIES`] audit
    /// entries, committed by [`commit_in`] as one transaction with the
    /// server's durability.
    pub(super) async fn commit_works(
        &self,
        works: Vec<Work>,
        notary: Arc<Notary>,
    ) -> Result<Committed> {
        let take = |q: &[Pending]| {
            let mut count = 0;
            for (i, (works, notary)) in q.iter().enumerate() {
                let n: usize = works.iter().map(|w| w.entries.len()).sum();
                if i > 0 && (count + n > MAX_ENTRIES || !Arc::ptr_eq(notary, &q[0].1)) {
                    return i;
                }
                count += n;
            }
            q.len()
        };
        let commit = |batch: Vec<Pending>| -> crate::BoxFuture<'_, Result<Vec<Committed>>> {
            Box::pin(async move {
                let notary = batch[0].1.clone();
                let sizes: Vec<usize> = batch.iter().map(|(w, _)| w.len()).collect();
                let works: Vec<Work> = batch.into_iter().flat_map(|(w, _)| w).collect();
                let answers = transact!(self, true, |tx| (
                    commit_in(&mut tx, &works, &notary).await?,
                    true
                ))?;
                let mut answers = answers.into_iter();
                Ok(sizes
                    .into_iter()
                    .map(|n| answers.by_ref().take(n).collect())
                    .collect())
            })
        };
        self.works.submit((works, notary), take, commit).await
    }

    /// Admit, batched with whatever else is queued: up to [`MAX_ADMITS`]
    /// admissions decided by [`admit_in`] in one transaction (committed
    /// without waiting for the WAL flush, see the module docs of
    /// [`super`]), so they share its round trips and its locks on the hot
    /// budget lines.
    pub(super) async fn admit(&self, a: Admit) -> Result<std::result::Result<(), Refused>> {
        type Answer = std::result::Result<(), Refused>;
        let take = |q: &[Admit]| q.len().min(MAX_ADMITS);
        let commit = |batch: Vec<Admit>| -> crate::BoxFuture<'_, Result<Vec<Answer>>> {
            Box::pin(async move {
                let mut taken = BTreeSet::new();
                loop {
                    let answer = transact!(self, false, |tx| {
                        let out = admit_in(&mut tx, &batch, &taken).await?;
                        let keep = matches!(out, Admitted::Answers(_));
                        (out, keep)
                    })?;
                    match answer {
                        Admitted::Answers(answers) => return Ok(answers),
                        // Ids found taken when their rows were inserted
                        // (never, with fresh ids): decide again without them.
                        Admitted::Taken(ids) if !ids.is_subset(&taken) => taken.extend(ids),
                        Admitted::Taken(_) => {
                            return Err(crate::Error::internal(
                                "an admission kept finding its invocation id taken",
                            ));
                        }
                    }
                }
            })
        };
        self.admits.submit(a, take, commit).await
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
    tenant: TenantId,
    /// `None`: a status no host writes (decided by no one).
    status: Option<ApprovalStatus>,
    expires_ms: i64,
    invocation_id: InvocationId,
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
    rows.iter().map(|r| head_row(r, 0)).collect()
}

/// A chain's head: (chain, seq, hash, signed statement, signature) from
/// column `at` on.
fn head_row(
    r: &sqlx::postgres::PgRow,
    at: usize,
) -> std::result::Result<(String, HeadRow), sqlx::Error> {
    let statement: Option<String> = r.try_get(at + 3)?;
    let signature: Option<String> = r.try_get(at + 4)?;
    Ok((
        r.try_get(at)?,
        HeadRow {
            seq: r.try_get(at + 1)?,
            hash: r.try_get(at + 2)?,
            signed: statement
                .zip(signature)
                .map(|(statement, signature)| Signed {
                    statement,
                    signature,
                }),
        },
    ))
}

/// An invocation row: (id, status, owner, lease_until, worst) from column
/// `at` on.
fn inv_row(
    r: &sqlx::postgres::PgRow,
    at: usize,
) -> std::result::Result<(InvocationId, Inv), sqlx::Error> {
    Ok((
        r.try_get(at)?,
        Inv {
            state: RowState {
                status: Status::parse(&r.try_get::<String, _>(at + 1)?),
                owner: r.try_get(at + 2)?,
                lease_until: r.try_get(at + 3)?,
            },
            worst: r.try_get(at + 4)?,
        },
    ))
}

/// The heads of `chains` and the invocation rows `ids`, locked in that
/// order (heads in chain order, then rows in id order, as every unit of work
/// locks them), in one round trip.
async fn lock_heads_and_rows(
    tx: &mut PgConnection,
    chains: &[String],
    ids: &[InvocationId],
) -> std::result::Result<(BTreeMap<String, HeadRow>, BTreeMap<InvocationId, Inv>), sqlx::Error> {
    // Each CTE locks its rows as its sort hands them out (key order); `i`
    // reads `h` to the end before it starts, so heads are locked first
    // however the append is run. A head fills columns 1-5, a row 6-10.
    let rows = sqlx::query(
        "WITH h AS (
           SELECT chain, seq, hash, signed_statement, signature FROM audit_heads
           WHERE chain = ANY($1) ORDER BY chain FOR UPDATE),
         i AS (
           SELECT id, status, owner, lease_until, worst FROM invocations
           WHERE id = ANY($2) AND (SELECT count(*) FROM h) >= 0
           ORDER BY id FOR UPDATE)
         SELECT 0 AS k, h.*, NULL, NULL, NULL, NULL::bigint, NULL FROM h
         UNION ALL
         SELECT 1, NULL, NULL::bigint, NULL, NULL, NULL, i.* FROM i",
    )
    .bind(chains)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let (mut heads, mut invs) = (BTreeMap::new(), BTreeMap::new());
    for r in &rows {
        if r.try_get::<i32, _>(0)? == 0 {
            let (chain, head) = head_row(r, 1)?;
            heads.insert(chain, head);
        } else {
            let (id, inv) = inv_row(r, 6)?;
            invs.insert(id, inv);
        }
    }
    Ok((heads, invs))
}

/// Commit units of work inside the caller's transaction (see the module
/// docs). Answers each work: its stored entries, or why it was left out.
pub(super) async fn commit_in(
    tx: &mut PgConnection,
    works: &[Work],
    notary: &Notary,
) -> std::result::Result<Committed, sqlx::Error> {
    // 1. The touched chains' heads there are, locked in chain order.
    let chains: Vec<String> = works
        .iter()
        .flat_map(|w| &w.entries)
        .map(|e| e.chain.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Without decisions, the rows to lock are known now: heads and rows in
    // one round trip. (A decision names its invocation only once its
    // approval is read.) Either way every batch locks in one order: the
    // heads there are, the invocation rows, the registry and new heads
    // (a new chain), the approvals.
    let ended: Vec<InvocationId> = works
        .iter()
        .filter_map(|w| w.end.as_ref().map(|e| e.record.id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let decides = works.iter().any(|w| w.decide.is_some());
    let mut locked_rows = None;
    let mut found = if !decides && !chains.is_empty() && !ended.is_empty() {
        let (heads, invs) = lock_heads_and_rows(tx, &chains, &ended).await?;
        locked_rows = Some(invs);
        heads
    } else if chains.is_empty() {
        BTreeMap::new()
    } else {
        read_heads(tx, &chains).await?
    };
    // 2. The approvals decided and the invocation rows moved, locked.
    let approval_ids: Vec<ApprovalId> = works
        .iter()
        .filter_map(|w| w.decide.as_ref().map(|d| d.approval_id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut approvals: BTreeMap<ApprovalId, Apr> = BTreeMap::new();
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
                    status: ApprovalStatus::parse(&r.try_get::<String, _>(2)?),
                    expires_ms: r.get(3),
                    invocation_id: r.get(4),
                },
            );
        }
    }
    let inv_ids: Vec<InvocationId> = ended
        .into_iter()
        .chain(approvals.values().map(|a| a.invocation_id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut invs: BTreeMap<InvocationId, Inv> = BTreeMap::new();
    if let Some(locked) = locked_rows {
        invs = locked;
    } else if !inv_ids.is_empty() {
        let rows = sqlx::query(
            "SELECT id, status, owner, lease_until, worst FROM invocations
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&inv_ids)
        .fetch_all(&mut *tx)
        .await?;
        invs = rows
            .iter()
            .map(|r| inv_row(r, 0))
            .collect::<std::result::Result<_, _>>()?;
    }
    // A new chain: the registry (chains are added one commit at a time),
    // then the heads of chains created by a commit that held it before us.
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
    let head_rows: BTreeMap<String, Option<HeadRow>> = chains
        .iter()
        .map(|c| (c.clone(), found.remove(c)))
        .collect();
    let (heads, bad) = vet(&head_rows, registry.as_ref(), notary);

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
            if let Some(a) = approvals.get_mut(&r.get::<ApprovalId, _>(0)) {
                a.status = ApprovalStatus::parse(&r.try_get::<String, _>(1)?);
            }
        }
    }

    // 3. Decide, in order, each work seeing the ones accepted before it.
    let mut taken: Vec<std::result::Result<(), crate::Error>> = Vec::with_capacity(works.len());
    let mut decisions: Vec<&Decision> = Vec::new();
    let mut records: BTreeMap<InvocationId, &End> = BTreeMap::new();
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
                    && a.status.is_some_and(|s| may_decide(d, s, a.expires_ms))
                    && (d.run.is_none()
                        || invs
                            .get(&a.invocation_id)
                            .is_some_and(|i| i.state.status == Some(Status::PendingApproval)))
            }),
            None => true,
        };
        if !decide_ok {
            taken.push(Err(conflict()));
            continue;
        }
        // The decision's effect on the row, as this work's end sees it.
        let mut after: Option<(InvocationId, Inv)> = None;
        if let Some(d) = &w.decide
            && let Some((owner, lease_until)) = &d.run
        {
            let id = approvals[&d.approval_id].invocation_id.clone();
            let mut inv = invs[&id].clone();
            inv.state = RowState {
                status: Some(Status::Running),
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
                a.status = Some(d.status);
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
                        status: Some(e.record.status),
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
    let entries: Vec<NewEntry> = works
        .iter()
        .zip(&taken)
        .filter(|(_, ok)| ok.is_ok())
        .flat_map(|(w, _)| w.entries.iter().cloned())
        .collect();
    let now = entries.last().map_or(0, |e| e.time_ms);
    let linked = link(&entries, &heads, registry.as_ref(), notary, now);
    write_batch(tx, &records, &release, &charge, &linked, now).await?;
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
    .bind(d.status)
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

/// A batch's common writes as one statement (one round trip, whatever the
/// batch holds): the records of the ends it accepted (one per row: the
/// last), the settlement of their budget lines (locked in line order), the
/// linked audit entries and the chains' new signed heads. Each part is a
/// no-op when its arrays are empty.
async fn write_batch(
    tx: &mut PgConnection,
    ends: &BTreeMap<InvocationId, &End>,
    release: &[Charge],
    charge: &[Charge],
    linked: &crate::audit::link::Linked,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    let lines = settlement(release, charge);
    let e = &linked.entries;
    let h = &linked.heads;
    if ends.is_empty() && lines.is_empty() && e.is_empty() && h.is_empty() {
        return Ok(());
    }
    let r: Vec<&crate::storage::InvocationRecord> = ends.values().map(|e| &e.record).collect();
    let s = |f: fn(&crate::storage::InvocationRecord) -> &str| -> Vec<String> {
        r.iter().map(|x| f(x).to_owned()).collect()
    };
    let o = |f: fn(&crate::storage::InvocationRecord) -> &Option<String>| -> Vec<Option<String>> {
        r.iter().map(|x| f(x).clone()).collect()
    };
    let mut k = Columns::default();
    let (mut used, mut released) = (Vec::new(), Vec::new());
    for ((scope, window, metric), (u, r)) in lines {
        k.push(scope, window, metric);
        used.push(u);
        released.push(-r);
    }
    sqlx::query(
        "WITH records AS (
           INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                    status, error_kind, created_ms, response, record_version)
           SELECT *, $13 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[])
           ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
             error_kind = excluded.error_kind, response = excluded.response,
             record_version = excluded.record_version, owner = NULL, lease_until = NULL, worst = NULL
         ), lines AS (
           INSERT INTO budget AS b (scope, win, metric, used, reserved)
           SELECT * FROM UNNEST($14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[])
             AS x(s, w, m, u, r)
           ORDER BY s COLLATE \"C\", w COLLATE \"C\", m COLLATE \"C\"
           ON CONFLICT (scope, win, metric) DO UPDATE
           SET used = b.used + excluded.used, reserved = greatest(0, b.reserved + excluded.reserved)
         ), entries AS (
           INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash)
           SELECT * FROM UNNEST($19::text[], $20::bigint[], $21::bigint[], $22::text[], $23::text[], $24::text[])
         )
         INSERT INTO audit_heads (chain, seq, hash, signed_seq, signed_hash, signed_time_ms, signature,
                                  signed_statement)
         SELECT c, s, h, s, h, $25, sig, st
         FROM UNNEST($26::text[], $27::bigint[], $28::text[], $29::text[], $30::text[]) AS x(c, s, h, sig, st)
         ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
           signed_seq = excluded.signed_seq, signed_hash = excluded.signed_hash,
           signed_time_ms = excluded.signed_time_ms, signature = excluded.signature,
           signed_statement = excluded.signed_statement",
    )
    .bind(s(|x| &x.id))
    .bind(s(|x| &x.tenant))
    .bind(s(|x| &x.tool))
    .bind(s(|x| &x.function))
    .bind(o(|x| &x.version))
    .bind(o(|x| &x.workflow))
    .bind(o(|x| &x.task_id))
    .bind(o(|x| &x.principal))
    .bind(r.iter().map(|x| x.status).collect::<Vec<_>>())
    .bind(o(|x| &x.error_kind))
    .bind(r.iter().map(|x| x.created_ms).collect::<Vec<_>>())
    .bind(s(|x| &x.response))
    .bind(i32::try_from(crate::record::RECORD_VERSION).unwrap_or(i32::MAX))
    .bind(k.scope)
    .bind(k.window)
    .bind(k.metric)
    .bind(used)
    .bind(released)
    .bind(e.iter().map(|x| x.chain.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.seq).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.time_ms).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.body.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.prev_hash.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.hash.as_str()).collect::<Vec<_>>())
    .bind(now)
    .bind(h.iter().map(|x| x.0.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.1.seq).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.1.hash.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.2.signature.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.2.statement.as_str()).collect::<Vec<_>>())
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
        .bind(a.status)
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

/// Release reservations and record usage: [`write_batch`] with nothing
/// else to write (lines locked in key order, so concurrent settlements lock
/// them in one order).
pub(super) async fn settle(
    tx: &mut PgConnection,
    release: &[Charge],
    charge: &[Charge],
) -> std::result::Result<(), sqlx::Error> {
    let linked = crate::audit::link::Linked::default();
    write_batch(tx, &BTreeMap::new(), release, charge, &linked, 0).await
}

/// What deciding a batch of admissions came to.
pub(super) enum Admitted {
    /// Each admission's answer, in order (commit).
    Answers(Vec<std::result::Result<(), Refused>>),
    /// These new rows' ids were found taken when inserted (roll back, and
    /// decide again with them refused).
    Taken(BTreeSet<InvocationId>),
}

/// A budget line's key.
type Line = (LedgerScope, Window, String);

/// Budget lines' keys as columns (bound as arrays, for `UNNEST`).
#[derive(Default)]
struct Columns<'a> {
    scope: Vec<&'a str>,
    window: Vec<&'a str>,
    metric: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, scope: &'a str, window: &'a str, metric: &'a str) {
        self.scope.push(scope);
        self.window.push(window);
        self.metric.push(metric);
    }
}

/// A batch of admissions in the caller's transaction, decided in order,
/// each seeing the reservations of those admitted before it:
///
/// 1. the rows written before admission (`existing`) locked `FOR UPDATE`
///    in id order (as a batch of units of work locks them): each must still
///    be this owner's unadmitted running row;
/// 2. every limited line any of them reserves locked in line order by one
///    upsert that creates the missing ones (empty) and returns the rest's
///    `used` and `reserved`;
/// 3. each admission decided in memory by the shared rules
///    ([`reservations`], [`exceeds`]): all of its lines fit, or it is
///    refused and reserves nothing;
/// 4. the lines' new reservations and the admitted rows written by one
///    statement.
///
/// Ids in `taken` are refused as [`Refused::Taken`] without a look.
pub(super) async fn admit_in(
    tx: &mut PgConnection,
    admits: &[Admit],
    taken: &BTreeSet<InvocationId>,
) -> std::result::Result<Admitted, sqlx::Error> {
    // 1. Rows written before admission.
    let existing: Vec<&str> = admits
        .iter()
        .filter(|a| a.existing)
        .map(|a| a.run.id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rows: BTreeMap<InvocationId, (String, Option<String>, bool)> = BTreeMap::new();
    if !existing.is_empty() {
        for r in sqlx::query(
            "SELECT id, status, owner, admitted FROM invocations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&existing)
        .fetch_all(&mut *tx)
        .await?
        {
            rows.insert(r.get(0), (r.get(1), r.get(2), r.get(3)));
        }
    }

    // 2. The lines, locked in line order (the order `settle` locks them).
    let wanted: Vec<Vec<Charge>> = admits.iter().map(|a| reservations(&a.worst)).collect();
    let mut limits: BTreeMap<Line, Option<i64>> = BTreeMap::new();
    for c in wanted.iter().flatten() {
        limits.insert(
            (
                c.scope.clone(),
                c.window.clone(),
                c.metric.as_str().to_string(),
            ),
            c.limit,
        );
    }
    let mut lines: BTreeMap<Line, (i64, i64)> = BTreeMap::new();
    if !limits.is_empty() {
        let mut k = Columns::default();
        for (scope, window, metric) in limits.keys() {
            k.push(scope, window, metric);
        }
        for r in sqlx::query(
            "INSERT INTO budget AS b (scope, win, metric, used, reserved, lim)
             SELECT s, w, m, 0, 0, l FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
               AS x(s, w, m, l)
             ORDER BY s COLLATE \"C\", w COLLATE \"C\", m COLLATE \"C\"
             ON CONFLICT (scope, win, metric) DO UPDATE SET lim = excluded.lim
             RETURNING scope, win, metric, used, reserved",
        )
        .bind(k.scope)
        .bind(k.window)
        .bind(k.metric)
        .bind(limits.values().copied().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        {
            lines.insert((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4)));
        }
    }
    let before = lines.clone();

    // 3. Decide, in order.
    let mut answers = Vec::with_capacity(admits.len());
    let mut fresh_ids: BTreeSet<&str> = BTreeSet::new();
    for (a, want) in admits.iter().zip(&wanted) {
        let mine = !taken.contains(&a.run.id)
            && (a.existing || fresh_ids.insert(&a.run.id))
            && (!a.existing
                || rows
                    .get(&a.run.id)
                    .is_some_and(|(status, owner, admitted)| {
                        status == "running" && !admitted && owner.as_deref() == Some(&a.run.owner)
                    }));
        if !mine {
            answers.push(Err(Refused::Taken));
            continue;
        }
        let refusal = want.iter().find_map(|c| {
            let key = (
                c.scope.clone(),
                c.window.clone(),
                c.metric.as_str().to_string(),
            );
            let (used, held) = lines.get(&key).copied().unwrap_or((0, 0));
            exceeds(c, used, held)
        });
        if let Some(e) = refusal {
            answers.push(Err(Refused::Exceeded(e)));
            continue;
        }
        for c in want {
            let line = lines
                .entry((
                    c.scope.clone(),
                    c.window.clone(),
                    c.metric.as_str().to_string(),
                ))
                .or_default();
            line.1 = line.1.saturating_add(c.amount);
        }
        if a.existing {
            // Admitted once: a second admission of the same row is not.
            if let Some(row) = rows.get_mut(&a.run.id) {
                row.2 = true;
            }
        }
        answers.push(Ok(()));
    }

    // 4. Write: the reservations, the new rows, the existing rows.
    let mut changed = Columns::default();
    let mut reserved_now = Vec::new();
    for (key, (_, reserved)) in &lines {
        if before.get(key).map(|b| b.1) != Some(*reserved) {
            changed.push(&key.0, &key.1, &key.2);
            reserved_now.push(*reserved);
        }
    }
    let admitted: Vec<&Admit> = admits
        .iter()
        .zip(&answers)
        .filter(|(_, ok)| ok.is_ok())
        .map(|(a, _)| a)
        .collect();
    let fresh: Vec<&Admit> = admitted.iter().copied().filter(|a| !a.existing).collect();
    let old: Vec<&Admit> = admitted.iter().copied().filter(|a| a.existing).collect();
    let worst = |a: &Admit| serde_json::to_string(&a.worst).unwrap_or_default();
    let s = |f: fn(&NewRun) -> &str, v: &[&Admit]| -> Vec<String> {
        v.iter().map(|a| f(&a.run).to_owned()).collect()
    };
    let o = |f: fn(&NewRun) -> &Option<String>, v: &[&Admit]| -> Vec<Option<String>> {
        v.iter().map(|a| f(&a.run).clone()).collect()
    };
    let inserted: Vec<InvocationId> = sqlx::query_scalar(
        "WITH lines AS (
           UPDATE budget b SET reserved = x.r
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(s, w, m, r)
           WHERE b.scope = x.s AND b.win = x.w AND b.metric = x.m
         ), old AS (
           UPDATE invocations i SET admitted = true, worst = x.w, lease_until = x.l
           FROM UNNEST($5::text[], $6::text[], $7::bigint[]) AS x(id, w, l)
           WHERE i.id = x.id
         )
         INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                  status, created_ms, response, owner, lease_until, admitted, worst,
                                  transport, idempotency_key, record_version)
         SELECT id, te, tl, f, v, wf, t, p, 'running', c, '{}', ow, l, true, w, tr, k, $22
         FROM UNNEST($8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                     $14::text[], $15::text[], $16::bigint[], $17::text[], $18::bigint[], $19::text[],
                     $20::text[], $21::text[])
           AS x(id, te, tl, f, v, wf, t, p, c, ow, l, w, tr, k)
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(changed.scope)
    .bind(changed.window)
    .bind(changed.metric)
    .bind(reserved_now)
    .bind(s(|r| &r.id, &old))
    .bind(old.iter().map(|a| worst(a)).collect::<Vec<_>>())
    .bind(old.iter().map(|a| a.run.lease_until).collect::<Vec<_>>())
    .bind(s(|r| &r.id, &fresh))
    .bind(s(|r| &r.tenant, &fresh))
    .bind(s(|r| &r.tool, &fresh))
    .bind(s(|r| &r.function, &fresh))
    .bind(o(|r| &r.version, &fresh))
    .bind(o(|r| &r.workflow, &fresh))
    .bind(o(|r| &r.task_id, &fresh))
    .bind(o(|r| &r.principal, &fresh))
    .bind(fresh.iter().map(|a| a.run.created_ms).collect::<Vec<_>>())
    .bind(s(|r| &r.owner, &fresh))
    .bind(fresh.iter().map(|a| a.run.lease_until).collect::<Vec<_>>())
    .bind(fresh.iter().map(|a| worst(a)).collect::<Vec<_>>())
    .bind(s(|r| &r.transport, &fresh))
    .bind(o(|r| &r.idempotency_key, &fresh))
    .bind(i32::try_from(crate::record::RECORD_VERSION).unwrap_or(i32::MAX))
    .fetch_all(&mut *tx)
    .await?;
    if inserted.len() < fresh.len() {
        let inserted: BTreeSet<&str> = inserted.iter().map(|i| i.as_str()).collect();
        return Ok(Admitted::Taken(
            fresh
                .iter()
                .filter(|a| !inserted.contains(a.run.id.as_str()))
                .map(|a| a.run.id.clone())
                .collect(),
        ));
    }
    Ok(Admitted::Answers(answers))
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
            return Err(sqlx::Error::InvalidArgument(format!(
                "invocation id {} exists",
                b.run.id
            )));
        }
    }
    Ok((Some(answer), true))
}

impl PostgresStorage {
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
