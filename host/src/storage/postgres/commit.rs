//! Units of work ([`PostgresStorage::commit_works`], group committed): the
//! hot write every invocation ends with. (Admissions are in
//! [`super::admit`], idempotency keys in [`super::keys`].)
//!
//! A batch whose hot rows this replica wrote last is first tried as one
//! guarded statement ([`super::seen`]); otherwise, or when the database
//! refuses it, it takes the locking path below.
//!
//! A batch of units of work is one transaction of a fixed number of
//! statements whatever its size: the touched chains' heads locked `FOR
//! UPDATE` in chain order, then the invocation rows they move (in the same
//! statement when no approval is decided), the registry and new heads when
//! a chain is new, the approvals decided; every batch takes its locks in
//! this one order. Every precondition is then decided in memory by the
//! shared rules ([`check`], [`may_decide`]) in order (each work seeing the
//! ones accepted before it), and all writes go out as multi-row statements.

use super::seen::{Guard, NotaryKey};
use super::{PostgresStorage, transact};
use crate::audit::link::{Head, HeadRow, link, refused, vet};
use crate::error::Result;
use crate::ids::{ApprovalId, InvocationId, TenantId};
use crate::storage::{ApprovalStatus, Status};
use crate::storage::{
    Charge, Decision, End, Expect, IdempotencyDone, NewEntry, Notary, RowState, Signed,
    StoredEntry, Work, check, end_charges, may_decide, settlement,
};
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
                let answers = match self.commit_seen(&works, &notary).await? {
                    Some(answers) => answers,
                    None => {
                        let w = transact!(self, true, |tx| (
                            commit_in(&mut tx, &works, &notary).await?,
                            true
                        ))?;
                        let key = notary_key(&notary);
                        self.seen.heads_committed(&key, Some(&w.read), &w.heads);
                        // Chains it could not continue are looked at
                        // under lock until they are continued again.
                        self.seen.contended(w.refused.iter(), std::iter::empty());
                        self.seen.ended(w.ended.iter());
                        w.answers
                    }
                };
                let mut answers = answers.into_iter();
                Ok(sizes
                    .into_iter()
                    .map(|n| answers.by_ref().take(n).collect())
                    .collect())
            })
        };
        self.works.submit((works, notary), take, commit).await
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

/// The chains of `heads` (each with its head's entry number, 0 for a new
/// chain) that have an entry past it, in one round trip.
async fn stray_entries(
    tx: &mut PgConnection,
    heads: &BTreeMap<String, Option<Head>>,
) -> std::result::Result<Vec<(String, i64)>, sqlx::Error> {
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    let chains: Vec<&str> = heads.keys().map(String::as_str).collect();
    let seqs: Vec<i64> = heads
        .values()
        .map(|h| h.as_ref().map_or(0, |h| h.seq))
        .collect();
    sqlx::query_as(
        "SELECT x.c, x.s FROM UNNEST($1::text[], $2::bigint[]) AS x(c, s)
         WHERE EXISTS (SELECT 1 FROM audit_entries e WHERE e.chain = x.c AND e.seq > x.s)",
    )
    .bind(chains)
    .bind(seqs)
    .fetch_all(&mut *tx)
    .await
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

/// What a batch sees before it decides.
struct View {
    /// Each touched chain's head as [`vet`] decided it (`None`: new).
    heads: BTreeMap<String, Option<Head>>,
    /// Chains that cannot be continued, and why.
    bad: BTreeMap<String, String>,
    registry: Option<Signed>,
    approvals: BTreeMap<ApprovalId, Apr>,
    invs: BTreeMap<InvocationId, Inv>,
}

/// What a batch decided.
struct Plan<'w> {
    /// Each work's answer: accepted, or why not.
    taken: Vec<std::result::Result<(), crate::Error>>,
    decisions: Vec<&'w Decision>,
    records: BTreeMap<InvocationId, &'w End>,
    release: Vec<Charge>,
    charge: Vec<Charge>,
}

/// A batch written.
pub(super) struct Written {
    pub answers: Committed,
    /// The heads its locks found.
    pub read: BTreeMap<String, Option<Head>>,
    /// The chains' new heads.
    pub heads: Vec<(String, Head, Signed)>,
    /// The chains it could not continue (their works were refused).
    pub refused: Vec<String>,
    /// The rows its works ended or found moved.
    pub ended: Vec<InvocationId>,
}

/// The chains a batch appends to, in chain order.
fn chains_of(works: &[Work]) -> Vec<String> {
    works
        .iter()
        .flat_map(|w| &w.entries)
        .map(|e| e.chain.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The rows a batch's works end, in id order.
fn ended_of(works: &[Work]) -> Vec<InvocationId> {
    works
        .iter()
        .filter_map(|w| w.end.as_ref().map(|e| e.record.id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Who signs a batch's heads, as [`Seen`](super::seen::Seen) tells them
/// apart.
fn notary_key(notary: &Notary) -> NotaryKey {
    notary.public_key().to_bytes()
}

impl PostgresStorage {
    /// Commit a batch as one statement when every hot row it touches is as
    /// this replica last saw it (see [`super::seen`]): `None` when it
    /// cannot be (it needs the locking path), or the database refused it
    /// (nothing was written).
    async fn commit_seen(&self, works: &[Work], notary: &Arc<Notary>) -> Result<Option<Committed>> {
        // Decisions, approvals, cached results and callbacks: the locking
        // path (rare, and they read rows this replica does not keep).
        let plain = works.iter().all(|w| {
            w.decide.is_none()
                && w.approvals.is_empty()
                && w.cache.is_empty()
                && w.outbox.is_empty()
                && w.end
                    .as_ref()
                    .is_none_or(|e| matches!(e.expect, Expect::Mine { .. }))
        });
        if !plain {
            return Ok(None);
        }
        let chains = chains_of(works);
        let ids = ended_of(works);
        let key = notary_key(notary);
        let (Some(heads), Some(rows)) = (self.seen.heads(&chains, &key), self.seen.rows(&ids))
        else {
            tracing::trace!("a batch takes the locking path: a head or a row is not seen alone");
            return Ok(None);
        };
        let guard = Guard {
            heads: heads
                .iter()
                .map(|(c, (h, s))| (c.clone(), h.clone(), s.clone()))
                .collect(),
            rows: ids
                .iter()
                .zip(&rows)
                .map(|(id, r)| (id.clone(), r.owner.clone(), r.worst.clone()))
                .collect(),
        };
        let mut view = View {
            heads: heads.into_iter().map(|(c, (h, _))| (c, Some(h))).collect(),
            bad: BTreeMap::new(),
            registry: None,
            approvals: BTreeMap::new(),
            invs: ids
                .iter()
                .cloned()
                .zip(rows)
                .map(|(id, r)| {
                    let inv = Inv {
                        state: RowState {
                            status: Some(Status::Running),
                            owner: Some(r.owner),
                            lease_until: None,
                        },
                        worst: Some(r.worst),
                    };
                    (id, inv)
                })
                .collect(),
        };
        let plan = plan(works, &mut view);
        let Some(mut conn) = self.seen_connection().await else {
            return Ok(None);
        };
        let written = write(&mut conn, works, plan, view, notary, &guard).await;
        let contended = || self.seen.contended(chains.iter(), std::iter::empty());
        let Some(w) = self.seen_outcome(written, "commit", contended)? else {
            return Ok(None);
        };
        self.seen.heads_committed(&key, None, &w.heads);
        self.seen.ended(w.ended.iter());
        Ok(Some(w.answers))
    }

    /// What a write on what this replica saw came to, counted: written
    /// (`Some`); refused by its guard or failed as a statement (`None`:
    /// nothing was written, `contended` marks what it relied on); or an
    /// error after which it may have committed (never written again).
    pub(super) fn seen_outcome<T>(
        &self,
        written: std::result::Result<Option<T>, sqlx::Error>,
        what: &str,
        contended: impl FnOnce(),
    ) -> Result<Option<T>> {
        self.seen.count(!matches!(written, Ok(Some(_))));
        match written {
            Ok(Some(w)) => Ok(Some(w)),
            Ok(None) => {
                tracing::debug!("a {what} written as seen was refused: a row it saw had moved");
                contended();
                Ok(None)
            }
            Err(e @ sqlx::Error::Database(_)) if !super::lost(&e) => {
                tracing::debug!("a {what} written as seen failed, taking the locking path: {e}");
                contended();
                Ok(None)
            }
            Err(e) => Err(super::db(e)),
        }
    }
}

/// Commit units of work inside the caller's transaction (see the module
/// docs). Answers each work: its stored entries, or why it was left out.
pub(super) async fn commit_in(
    tx: &mut PgConnection,
    works: &[Work],
    notary: &Arc<Notary>,
) -> std::result::Result<Written, sqlx::Error> {
    let view = gather(tx, works, notary).await?;
    let mut view = view;
    let plan = plan(works, &mut view);
    let written = write(tx, works, plan, view, notary, &Guard::default()).await?;
    written.ok_or_else(|| sqlx::Error::Protocol("an unguarded batch was refused".into()))
}

/// Read and lock what a batch moves, in the one lock order (see the module
/// docs), and vet its chains' heads.
async fn gather(
    tx: &mut PgConnection,
    works: &[Work],
    notary: &Notary,
) -> std::result::Result<View, sqlx::Error> {
    // 1. The touched chains' heads there are, locked in chain order.
    let chains = chains_of(works);
    // Without decisions, the rows to lock are known now: heads and rows in
    // one round trip. (A decision names its invocation only once its
    // approval is read.) Either way every batch locks in one order: the
    // heads there are, the invocation rows, the registry and new heads
    // (a new chain), the approvals.
    let ended = ended_of(works);
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
                r.try_get(0)?,
                Apr {
                    tenant: r.try_get(1)?,
                    status: ApprovalStatus::parse(&r.try_get::<String, _>(2)?),
                    expires_ms: r.try_get(3)?,
                    invocation_id: r.try_get(4)?,
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
    let (heads, mut bad) = vet(&head_rows, registry.as_ref(), notary);
    // Entries past a chain's head were not written by a host (every commit
    // moves the head with its entries): appending would collide with them
    // and fail the whole batch, other tenants' works with it. That chain
    // alone is refused, as on SQLite.
    for (chain, after) in stray_entries(tx, &heads).await? {
        bad.insert(
            chain,
            format!(
                "it has entries past its signed head at entry {after} (inserted outside Toolhost)"
            ),
        );
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
            if let Some(a) = approvals.get_mut(&r.try_get::<ApprovalId, _>(0)?) {
                a.status = ApprovalStatus::parse(&r.try_get::<String, _>(1)?);
            }
        }
    }
    Ok(View {
        heads,
        bad,
        registry,
        approvals,
        invs,
    })
}

/// Decide, in order, each work seeing the ones accepted before it.
fn plan<'w>(works: &'w [Work], view: &mut View) -> Plan<'w> {
    let View {
        bad,
        approvals,
        invs,
        ..
    } = view;
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
    Plan {
        taken,
        decisions,
        records,
        release,
        charge,
    }
}

/// Write what [`plan`] accepted. `None`: `guard` did not hold (nothing
/// was written; only a speculative batch has a guard).
async fn write(
    tx: &mut PgConnection,
    works: &[Work],
    plan: Plan<'_>,
    view: View,
    notary: &Notary,
    guard: &Guard,
) -> std::result::Result<Option<Written>, sqlx::Error> {
    let Plan {
        taken,
        decisions,
        records,
        release,
        charge,
    } = plan;
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
    let linked = link(&entries, &view.heads, view.registry.as_ref(), notary, now);
    let done_keys: Vec<&IdempotencyDone> = works
        .iter()
        .zip(&taken)
        .filter(|(_, ok)| ok.is_ok())
        .flat_map(|(w, _)| &w.idempotency)
        .collect();
    let batch = Batch {
        ends: &records,
        release: &release,
        charge: &charge,
        linked: &linked,
        keys: &done_keys,
        now,
    };
    if !write_batch(tx, &batch, guard).await? {
        return Ok(None);
    }
    if let Some(r) = &linked.registry {
        registry_put(tx, r).await?;
    }
    let heads = linked.heads;
    let refused = view.bad.keys().cloned().collect();
    let mut stored = linked.entries.into_iter();
    let mut answers = Vec::with_capacity(works.len());
    for (w, ok) in works.iter().zip(taken) {
        if let Err(e) = ok {
            answers.push(Err(e));
            continue;
        }
        for a in &w.approvals {
            insert_approval(tx, a).await?;
        }
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
    Ok(Some(Written {
        answers,
        read: view.heads,
        heads,
        refused,
        ended: ended_of(works),
    }))
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

/// What a batch writes in [`write_batch`].
struct Batch<'a> {
    /// The records of the ends it accepted (one per row: the last).
    ends: &'a BTreeMap<InvocationId, &'a End>,
    release: &'a [Charge],
    charge: &'a [Charge],
    linked: &'a crate::audit::link::Linked,
    /// Idempotency keys whose answer is now final.
    keys: &'a [&'a IdempotencyDone],
    now: i64,
}

/// A batch's writes as one statement (one round trip, whatever the batch
/// holds): the records of the ends it accepted, the settlement of their
/// budget lines (locked in line order), the linked audit entries, the
/// chains' new signed heads and checkpoints, the idempotency answers. Each
/// part is a no-op when its arrays are empty.
///
/// With a non-empty `guard` (a speculative batch, outside any transaction)
/// the statement first locks the guarded heads, then rows, as every batch
/// does, and writes only if each is as the guard says; it answers whether
/// it wrote.
async fn write_batch(
    tx: &mut PgConnection,
    b: &Batch<'_>,
    guard: &Guard,
) -> std::result::Result<bool, sqlx::Error> {
    let lines = settlement(b.release, b.charge);
    let e = &b.linked.entries;
    let h = &b.linked.heads;
    let c = &b.linked.checkpoints;
    if b.ends.is_empty()
        && lines.is_empty()
        && e.is_empty()
        && h.is_empty()
        && c.is_empty()
        && b.keys.is_empty()
        && guard.heads.is_empty()
        && guard.rows.is_empty()
    {
        return Ok(true);
    }
    let r: Vec<&crate::storage::InvocationRecord> = b.ends.values().map(|e| &e.record).collect();
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
        released.push(r.saturating_neg());
    }
    let keys = b.keys;
    // `h` locks the guarded heads in chain order; `i` reads `h` to the end
    // before it locks the guarded rows in id order; every write waits for
    // `ok`, which reads both, so the lines are locked after them.
    sqlx::query_scalar(
        "WITH h AS (
           SELECT chain, seq, hash, signed_statement, signature FROM audit_heads
           WHERE chain = ANY($31) ORDER BY chain FOR UPDATE
         ), i AS (
           SELECT id, status, owner, worst FROM invocations
           WHERE id = ANY($34) AND (SELECT count(*) FROM h) >= 0 ORDER BY id FOR UPDATE
         ), ok AS MATERIALIZED (
           SELECT (SELECT count(*) FROM h
                   JOIN UNNEST($31::text[], $32::bigint[], $33::text[], $48::text[], $49::text[])
                     AS x(c, s, hh, st, sig)
                     ON h.chain = x.c AND h.seq = x.s AND h.hash = x.hh
                        AND h.signed_statement = x.st AND h.signature = x.sig)
                  = cardinality($31::text[])
              AND (SELECT count(*) FROM i
                   JOIN UNNEST($34::text[], $35::text[], $36::text[]) AS x(id, o, w)
                     ON i.id = x.id AND i.status = 'running' AND i.owner = x.o
                        AND i.worst IS NOT DISTINCT FROM x.w) = cardinality($34::text[]) AS ok
         ), records AS (
           INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                    status, error_kind, created_ms, response, record_version)
           SELECT *, $13 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[])
           WHERE (SELECT ok FROM ok)
           ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
             error_kind = excluded.error_kind, response = excluded.response,
             record_version = excluded.record_version, owner = NULL, lease_until = NULL, worst = NULL
         ), lines AS (
           INSERT INTO budget AS b (scope, win, metric, used, reserved)
           SELECT * FROM UNNEST($14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[])
             AS x(s, w, m, u, r)
           WHERE (SELECT ok FROM ok)
           ORDER BY s COLLATE \"C\", w COLLATE \"C\", m COLLATE \"C\"
           ON CONFLICT (scope, win, metric) DO UPDATE
           SET used = LEAST(b.used::numeric + excluded.used, 9223372036854775807)::bigint,
               reserved = GREATEST(0, LEAST(b.reserved::numeric + excluded.reserved,
                                            9223372036854775807))::bigint
         ), entries AS (
           INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash)
           SELECT * FROM UNNEST($19::text[], $20::bigint[], $21::bigint[], $22::text[], $23::text[], $24::text[])
           WHERE (SELECT ok FROM ok)
         ), heads AS (
           INSERT INTO audit_heads (chain, seq, hash, signed_seq, signed_hash, signed_time_ms, signature,
                                    signed_statement)
           SELECT c, s, h, s, h, $25, sig, st
           FROM UNNEST($26::text[], $27::bigint[], $28::text[], $29::text[], $30::text[]) AS x(c, s, h, sig, st)
           WHERE (SELECT ok FROM ok)
           ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
             signed_seq = excluded.signed_seq, signed_hash = excluded.signed_hash,
             signed_time_ms = excluded.signed_time_ms, signature = excluded.signature,
             signed_statement = excluded.signed_statement
         ), checkpoints AS (
           INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind, statement)
           SELECT * FROM UNNEST($37::text[], $38::bigint[], $39::text[], $40::bigint[], $41::text[],
                                $42::text[], $43::text[])
           WHERE (SELECT ok FROM ok)
         ), keys AS (
           UPDATE idempotency k SET state = 'done', response = x.r
           FROM UNNEST($44::text[], $45::text[], $46::text[], $47::text[]) AS x(t, k, i, r)
           WHERE (SELECT ok FROM ok) AND k.tenant = x.t AND k.key = x.k AND k.invocation_id = x.i
         )
         SELECT ok FROM ok",
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
    .bind(b.now)
    .bind(h.iter().map(|x| x.0.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.1.seq).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.1.hash.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.2.signature.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.2.statement.as_str()).collect::<Vec<_>>())
    .bind(guard.heads.iter().map(|x| x.0.as_str()).collect::<Vec<_>>())
    .bind(guard.heads.iter().map(|x| x.1.seq).collect::<Vec<_>>())
    .bind(guard.heads.iter().map(|x| x.1.hash.as_str()).collect::<Vec<_>>())
    .bind(guard.rows.iter().map(|x| x.0.as_str()).collect::<Vec<_>>())
    .bind(guard.rows.iter().map(|x| x.1.as_str()).collect::<Vec<_>>())
    .bind(guard.rows.iter().map(|x| x.2.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.chain.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.seq).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.hash.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.time_ms).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.signature.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.kind.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|x| x.statement.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|x| x.tenant.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|x| x.key.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|x| x.invocation_id.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|x| x.response.as_str()).collect::<Vec<_>>())
    .bind(guard.heads.iter().map(|x| x.2.statement.as_str()).collect::<Vec<_>>())
    .bind(guard.heads.iter().map(|x| x.2.signature.as_str()).collect::<Vec<_>>())
    .fetch_one(&mut *tx)
    .await
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
    let batch = Batch {
        ends: &BTreeMap::new(),
        release,
        charge,
        linked: &linked,
        keys: &[],
        now: 0,
    };
    write_batch(tx, &batch, &Guard::default()).await.map(|_| ())
}

/// Budget lines' keys as columns (bound as arrays, for `UNNEST`).
#[derive(Default)]
pub(super) struct Columns<'a> {
    pub scope: Vec<&'a str>,
    pub window: Vec<&'a str>,
    pub metric: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    pub fn push(&mut self, scope: &'a str, window: &'a str, metric: &'a str) {
        self.scope.push(scope);
        self.window.push(window);
        self.metric.push(metric);
    }
}
