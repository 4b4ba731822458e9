//! An in-memory backend: the [`Storage`] contract with no durability. For
//! tests, for measuring the gate without the durability wait, and as the
//! reference the SQL backends must agree with.

use super::*;
use crate::BoxFuture;
use crate::audit::link::{HeadRow, link, refused, vet};
use crate::error::Result;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, BTreeMap<i64, StoredEntry>>,
    /// Current (unsigned) head of each chain.
    tips: HashMap<String, (i64, String)>,
    /// Last signed head of each chain.
    heads: HashMap<String, Checkpoint>,
    checkpoints: HashMap<String, Vec<Checkpoint>>,
    registry: Option<Signed>,
    budget: BTreeMap<(LedgerScope, Window, String), (i64, i64)>,
    meta: HashMap<String, String>,
    blobs: HashMap<String, Vec<u8>>,
    versions: BTreeMap<(TenantId, String, String), ToolVersion>,
    tools: BTreeMap<(TenantId, String), ToolEntry>,
    keys: BTreeMap<KeyId, ApiKeyRecord>,
    /// By position.
    invocations: BTreeMap<i64, Row>,
    /// Invocation id → position.
    invocation_pos: HashMap<InvocationId, i64>,
    policies: Vec<StoredPolicy>,
    /// (tenant, key) → the key.
    idempotency: HashMap<(TenantId, String), Idem>,
    /// By id: the message, when it is next due, and its claim.
    outbox: BTreeMap<i64, Queued>,
    approvals: BTreeMap<ApprovalId, ApprovalRecord>,
    /// (tenant, key) → (result, expires).
    cache: HashMap<(TenantId, String), (String, i64)>,
}

/// A message in the outbox: when it is next due, and who claimed it until
/// when.
type Queued = (OutboxMessage, i64, Option<(String, i64)>);

struct Idem {
    fingerprint: String,
    done: Option<String>,
    expires_ms: i64,
    invocation_id: InvocationId,
}

/// An invocation row: its record and its lifecycle.
#[derive(Clone)]
struct Row {
    record: InvocationRecord,
    owner: Option<String>,
    lease_until: Option<i64>,
    admitted: bool,
    worst: Option<Vec<Charge>>,
    transport: String,
    idempotency_key: Option<String>,
}

impl Row {
    fn state(&self) -> RowState {
        RowState {
            status: Some(self.record.status),
            owner: self.owner.clone(),
            lease_until: self.lease_until,
        }
    }
}

/// A running row as the reaper sees it.
fn lost_of(inner: &Inner, r: &Row) -> Option<Lost> {
    let rec = &r.record;
    let run = NewRun {
        id: rec.id.clone(),
        tenant: rec.tenant.clone(),
        tool: rec.tool.clone(),
        function: rec.function.clone(),
        version: rec.version.clone(),
        workflow: rec.workflow.clone(),
        task_id: rec.task_id.clone(),
        principal: rec.principal.clone(),
        transport: r.transport.clone(),
        idempotency_key: r.idempotency_key.clone(),
        created_ms: rec.created_ms,
        owner: r.owner.clone().unwrap_or_default(),
        lease_until: r.lease_until.unwrap_or(0),
    };
    let approval = inner.approvals.values().find(|a| a.invocation_id == run.id);
    Some(Lost {
        admitted: r.admitted,
        callback_url: approval.and_then(|a| a.callback_url.clone()),
        approval_id: approval.map(|a| a.id.clone()),
        run,
    })
}

fn finish(inner: &mut Inner, d: IdempotencyDone) {
    if let Some(e) = inner.idempotency.get_mut(&(d.tenant, d.key))
        && e.invocation_id == d.invocation_id
    {
        e.done = Some(d.response);
    }
}

fn running_record(run: &NewRun) -> InvocationRecord {
    InvocationRecord {
        id: run.id.clone(),
        tenant: run.tenant.clone(),
        tool: run.tool.clone(),
        function: run.function.clone(),
        version: run.version.clone(),
        workflow: run.workflow.clone(),
        task_id: run.task_id.clone(),
        principal: run.principal.clone(),
        status: crate::storage::Status::Running,
        error_kind: None,
        created_ms: run.created_ms,
        response: "{}".into(),
    }
}

impl Inner {
    fn row(&self, id: &str) -> Option<&Row> {
        self.invocation_pos
            .get(id)
            .and_then(|p| self.invocations.get(p))
    }

    fn row_mut(&mut self, id: &str) -> Option<&mut Row> {
        let pos = *self.invocation_pos.get(id)?;
        self.invocations.get_mut(&pos)
    }

    /// Insert a row, or replace the one with its id (keeping its position).
    fn put_row(&mut self, row: Row) {
        let next = self.invocations.keys().next_back().map_or(1, |p| p + 1);
        let pos = *self
            .invocation_pos
            .entry(row.record.id.clone())
            .or_insert(next);
        self.invocations.insert(pos, row);
    }

    fn new_running(&mut self, run: &NewRun) {
        self.put_row(Row {
            record: running_record(run),
            owner: Some(run.owner.clone()),
            lease_until: Some(run.lease_until),
            admitted: false,
            worst: None,
            transport: run.transport.clone(),
            idempotency_key: run.idempotency_key.clone(),
        });
    }

    /// Whether a decision may be applied now.
    fn may_decide(&self, d: &Decision) -> bool {
        let Some(a) = self.approvals.get(&d.approval_id) else {
            return false;
        };
        a.tenant == d.tenant
            && may_decide(d, a.status, a.expires_ms)
            && (d.run.is_none()
                || self
                    .row(&a.invocation_id)
                    .is_some_and(|r| r.record.status == crate::storage::Status::PendingApproval))
    }

    /// Apply a decision [`Inner::may_decide`] allowed.
    fn decide(&mut self, d: &Decision) {
        let Some(invocation_id) = self
            .approvals
            .get(&d.approval_id)
            .map(|a| a.invocation_id.clone())
        else {
            return;
        };
        if let Some((owner, lease_until)) = &d.run
            && let Some(row) = self.row_mut(&invocation_id)
        {
            row.record.status = Status::Running;
            row.owner = Some(owner.clone());
            row.lease_until = Some(*lease_until);
            row.admitted = false;
        }
        let a = self
            .approvals
            .get_mut(&d.approval_id)
            .expect("checked above");
        a.status = d.status;
        a.decided_by = d.decided_by.clone();
        a.decided_ms = Some(d.now_ms);
        a.reason = d.reason.clone();
        a.args.clear();
    }

    /// Whether an end may be applied now.
    fn may_end(&self, end: &End) -> bool {
        check(
            &end.expect,
            self.row(&end.record.id).map(Row::state).as_ref(),
        )
    }

    /// Apply an end [`Inner::may_end`] allowed.
    fn end(&mut self, end: &End) {
        let existing = self.row(&end.record.id).cloned();
        if let Some(worst) = existing.as_ref().and_then(|r| r.worst.as_ref()) {
            let (release, charge) = end_charges(worst, end.used.as_deref());
            settle(self, &release, &charge);
        } else if let Some(used) = &end.used {
            settle(self, &[], used);
        }
        let mut record = end.record.clone();
        if let Some(old) = &existing {
            record.created_ms = old.record.created_ms;
        }
        self.put_row(Row {
            record,
            owner: None,
            lease_until: None,
            admitted: existing.as_ref().is_some_and(|r| r.admitted),
            worst: None,
            transport: existing
                .as_ref()
                .map_or_else(|| "http".into(), |r| r.transport.clone()),
            idempotency_key: existing.and_then(|r| r.idempotency_key),
        });
    }
}

/// Storage that forgets everything when dropped.
#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries of `chain` with `after < seq <= upto`, at most `limit`.
    fn entries(&self, chain: &str, after: i64, upto: i64, limit: i64) -> Vec<StoredEntry> {
        if upto <= after {
            return Vec::new();
        }
        self.lock()
            .entries
            .get(chain)
            .map(|m| {
                m.range(after.saturating_add(1)..=upto)
                    .take(usize::try_from(limit).unwrap_or(0))
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn key(c: &Charge) -> (LedgerScope, Window, String) {
    (
        c.scope.clone(),
        c.window.clone(),
        c.metric.as_str().to_string(),
    )
}

fn settle(inner: &mut Inner, release: &[Charge], charge: &[Charge]) {
    // (the net of both, as the SQL backends apply it)
    for c in release {
        let line = inner.budget.entry(key(c)).or_default();
        line.1 = line.1.saturating_sub(c.amount).max(0);
    }
    for c in charge {
        let line = inner.budget.entry(key(c)).or_default();
        line.0 = line.0.saturating_add(c.amount);
    }
}

impl AuditStore for MemoryStorage {
    fn audit_commit(
        &self,
        works: Vec<Work>,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<Result<Vec<StoredEntry>>>>> {
        Box::pin(async move {
            let mut inner = self.lock();
            // The touched chains' heads, as their signatures say.
            let rows: BTreeMap<String, Option<HeadRow>> = works
                .iter()
                .flat_map(|w| &w.entries)
                .map(|e| {
                    let row = inner.tips.get(&e.chain).map(|(seq, hash)| HeadRow {
                        seq: *seq,
                        hash: hash.clone(),
                        signed: inner.heads.get(&e.chain).map(Checkpoint::signed),
                    });
                    (e.chain.clone(), row)
                })
                .collect();
            let (heads, bad) = vet(&rows, inner.registry.as_ref(), &notary);
            // Preconditions next, in order: a work that fails is left out.
            let mut taken = Vec::with_capacity(works.len());
            for w in &works {
                if let Some(e) = w.entries.iter().find(|e| bad.contains_key(&e.chain)) {
                    taken.push(Err(refused(&e.chain, &bad[&e.chain])));
                    continue;
                }
                let ok = w.decide.as_ref().is_none_or(|d| inner.may_decide(d))
                    && w.end.as_ref().is_none_or(|e| inner.may_end(e));
                if ok {
                    if let Some(d) = &w.decide {
                        inner.decide(d);
                    }
                    if let Some(e) = &w.end {
                        inner.end(e);
                    }
                }
                taken.push(if ok { Ok(()) } else { Err(conflict()) });
            }
            let entries: Vec<NewEntry> = works
                .iter()
                .zip(&taken)
                .filter(|(_, ok)| ok.is_ok())
                .flat_map(|(w, _)| w.entries.iter().cloned())
                .collect();
            let now = entries.last().map_or(0, |e| e.time_ms);
            let linked = link(&entries, &heads, inner.registry.as_ref(), &notary, now);
            for e in &linked.entries {
                inner
                    .entries
                    .entry(e.chain.clone())
                    .or_default()
                    .insert(e.seq, e.clone());
            }
            for c in linked.checkpoints {
                inner
                    .checkpoints
                    .entry(c.chain.clone())
                    .or_default()
                    .push(c);
            }
            for (chain, head, signed) in linked.heads {
                inner
                    .tips
                    .insert(chain.clone(), (head.seq, head.hash.clone()));
                inner.heads.insert(
                    chain.clone(),
                    Checkpoint {
                        chain,
                        seq: head.seq,
                        hash: head.hash,
                        time_ms: now,
                        signature: signed.signature,
                        kind: "head".into(),
                        statement: signed.statement,
                    },
                );
            }
            if let Some(r) = linked.registry {
                inner.registry = Some(r);
            }
            let mut stored = linked.entries.into_iter();
            let mut answers = Vec::with_capacity(works.len());
            for (w, ok) in works.into_iter().zip(taken) {
                if let Err(e) = ok {
                    answers.push(Err(e));
                    continue;
                }
                settle(&mut inner, &[], &w.charge);
                for a in w.approvals {
                    inner.approvals.insert(a.id.clone(), a);
                }
                for d in w.idempotency {
                    finish(&mut inner, d);
                }
                for c in w.cache {
                    inner
                        .cache
                        .insert((c.tenant, c.key), (c.result, c.expires_ms));
                }
                for mut m in w.outbox {
                    let id = inner.outbox.keys().next_back().map_or(1, |i| i + 1);
                    m.id = id;
                    let due = m.created_ms;
                    inner.outbox.insert(id, (m, due, None));
                }
                answers.push(Ok(stored.by_ref().take(w.entries.len()).collect()));
            }
            Ok(answers)
        })
    }

    fn audit_registry(&self) -> BoxFuture<'_, Result<Option<Signed>>> {
        let r = self.lock().registry.clone();
        Box::pin(async move { Ok(r) })
    }
    fn audit_registry_put(&self, registry: Signed) -> BoxFuture<'_, Result<()>> {
        self.lock().registry = Some(registry);
        Box::pin(async { Ok(()) })
    }
    fn audit_resign(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<()>> {
        let mut inner = self.lock();
        for c in checkpoints {
            if c.kind == "head" {
                inner.heads.insert(c.chain.clone(), c);
                continue;
            }
            if let Some(row) = inner.checkpoints.get_mut(&c.chain).and_then(|rows| {
                rows.iter_mut()
                    .find(|r| r.seq == c.seq && r.kind == c.kind && r.statement.is_empty())
            }) {
                *row = c;
            }
        }
        Box::pin(async { Ok(()) })
    }
    fn audited_tenants(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        let inner = self.lock();
        let mut tenants: Vec<String> = inner
            .invocations
            .values()
            .map(|r| r.record.tenant.to_string())
            .chain(inner.approvals.values().map(|a| a.tenant.to_string()))
            .collect();
        tenants.sort();
        tenants.dedup();
        Box::pin(async move { Ok(tenants) })
    }
    fn audit_read(
        &self,
        chain: &str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>> {
        let entries = self.entries(chain, after, i64::MAX, limit);
        Box::pin(async move { Ok(entries) })
    }
    fn audit_range(
        &self,
        chain: &str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>> {
        let entries = self.entries(chain, after, upto, i64::MAX);
        Box::pin(async move { Ok(entries) })
    }
    fn audit_chains(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let inner = self.lock();
            let mut chains: Vec<String> = inner
                .entries
                .keys()
                .cloned()
                .chain(inner.tips.keys().cloned())
                .collect();
            chains.sort();
            chains.dedup();
            Ok(chains)
        })
    }
    fn checkpoints(&self, chain: &str) -> BoxFuture<'_, Result<Vec<Checkpoint>>> {
        let chain = chain.to_string();
        Box::pin(async move {
            let inner = self.lock();
            let mut out = inner.checkpoints.get(&chain).cloned().unwrap_or_default();
            out.sort_by_key(|c| c.seq);
            out.extend(inner.tips.get(&chain).map(|(seq, hash)| Checkpoint {
                chain: chain.clone(),
                seq: *seq,
                hash: hash.clone(),
                time_ms: 0,
                signature: String::new(),
                kind: "tip".into(),
                statement: String::new(),
            }));
            out.extend(inner.heads.get(&chain).cloned());
            Ok(out)
        })
    }
    fn audit_prune(&self, anchor: Checkpoint) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut inner = self.lock();
            let (chain, upto) = (anchor.chain.clone(), anchor.seq);
            let mut n = 0;
            if let Some(m) = inner.entries.get_mut(&chain) {
                let keep = m.split_off(&(upto + 1));
                n = m.len() as u64;
                *m = keep;
            }
            let rows = inner.checkpoints.entry(chain).or_default();
            rows.retain(|c| c.kind != "periodic" || c.seq >= upto);
            rows.push(anchor);
            Ok(n)
        })
    }
}

impl BudgetStore for MemoryStorage {
    fn budget_charge(&self, used: Vec<Charge>) -> BoxFuture<'_, Result<()>> {
        settle(&mut self.lock(), &[], &used);
        Box::pin(async { Ok(()) })
    }

    fn budget_usage(&self, scope: &LedgerScope) -> BoxFuture<'_, Result<Vec<Usage>>> {
        let scope = scope.to_string();
        Box::pin(async move {
            Ok(self
                .lock()
                .budget
                .iter()
                .filter(|((s, _, _), _)| *s == scope)
                .filter_map(|((s, w, m), (used, reserved))| {
                    usage_line(s.clone(), w.clone(), m, *used, *reserved)
                })
                .collect())
        })
    }
}

impl RegistryStore for MemoryStorage {
    fn blob_put<'a>(&'a self, digest: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.lock()
                .blobs
                .entry(digest.to_string())
                .or_insert_with(|| bytes.to_vec());
            Ok(())
        })
    }
    fn blob_get(&self, digest: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>>> {
        let found = self.lock().blobs.get(digest).cloned();
        Box::pin(async move { Ok(found) })
    }
    fn tool_register(&self, v: ToolVersion, deploy: bool) -> BoxFuture<'_, Result<Registered>> {
        Box::pin(async move {
            let mut inner = self.lock();
            let key = (v.tenant.clone(), v.name.clone(), v.version.clone());
            let outcome = match inner.versions.get(&key) {
                Some(e) if e.digest == v.digest => Registered::Exists,
                Some(e) => {
                    return Ok(Registered::Conflict {
                        digest: e.digest.clone(),
                    });
                }
                None => Registered::Created,
            };
            if outcome == Registered::Created {
                inner.versions.insert(key, v.clone());
            }
            if deploy {
                let entry = inner
                    .tools
                    .entry((v.tenant.clone(), v.name.clone()))
                    .or_insert_with(|| ToolEntry {
                        tenant: v.tenant.clone(),
                        name: v.name.clone(),
                        current: v.version.clone(),
                        disabled: false,
                        updated_ms: v.created_ms,
                    });
                entry.current = v.version.clone();
                entry.updated_ms = v.created_ms;
            }
            Ok(outcome)
        })
    }
    fn tool_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> BoxFuture<'_, Result<Option<ToolVersion>>> {
        let found = self
            .lock()
            .versions
            .get(&(tenant.clone(), name.to_string(), version.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }
    fn tool_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> BoxFuture<'_, Result<Vec<ToolVersion>>> {
        let mut found: Vec<ToolVersion> = self
            .lock()
            .versions
            .values()
            .filter(|v| v.tenant == tenant && v.name == name)
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.created_ms, &a.version).cmp(&(b.created_ms, &b.version)));
        Box::pin(async move { Ok(found) })
    }
    fn tool_get(&self, tenant: &TenantId, name: &str) -> BoxFuture<'_, Result<Option<ToolEntry>>> {
        let found = self
            .lock()
            .tools
            .get(&(tenant.clone(), name.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }
    fn tool_list(&self, tenant: &TenantId) -> BoxFuture<'_, Result<Vec<ToolEntry>>> {
        let found = self
            .lock()
            .tools
            .values()
            .filter(|t| t.tenant == tenant)
            .cloned()
            .collect();
        Box::pin(async move { Ok(found) })
    }
    fn tool_update(
        &self,
        tenant: &TenantId,
        name: &str,
        version: Option<&str>,
        disabled: Option<bool>,
    ) -> BoxFuture<'_, Result<bool>> {
        let mut inner = self.lock();
        let key = (tenant.clone(), name.to_string());
        let ok = version.is_none_or(|v| {
            inner
                .versions
                .contains_key(&(key.0.clone(), key.1.clone(), v.to_string()))
        });
        let updated = ok
            && match inner.tools.get_mut(&key) {
                Some(t) => {
                    if let Some(v) = version {
                        t.current = v.to_string();
                    }
                    if let Some(d) = disabled {
                        t.disabled = d;
                    }
                    t.updated_ms = crate::clock::now_ms();
                    true
                }
                None => false,
            };
        Box::pin(async move { Ok(updated) })
    }
    fn tool_set_artifact(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
        artifact: &str,
        engine: &str,
    ) -> BoxFuture<'_, Result<()>> {
        if let Some(v) =
            self.lock()
                .versions
                .get_mut(&(tenant.clone(), name.to_string(), version.to_string()))
        {
            v.artifact = Some(artifact.to_string());
            v.engine = Some(engine.to_string());
        }
        Box::pin(async move { Ok(()) })
    }
}

impl KeyStore for MemoryStorage {
    fn key_put(&self, key: ApiKeyRecord) -> BoxFuture<'_, Result<()>> {
        let mut inner = self.lock();
        let result = if inner.keys.contains_key(&key.id) {
            Err(crate::Error::internal(format!("key id {} exists", key.id)))
        } else {
            inner.keys.insert(key.id.clone(), key);
            Ok(())
        };
        Box::pin(async move { result })
    }
    fn key_get(&self, id: &KeyId) -> BoxFuture<'_, Result<Option<ApiKeyRecord>>> {
        let found = self.lock().keys.get(id).cloned();
        Box::pin(async move { Ok(found) })
    }
    fn key_list(&self, tenant: Option<&TenantId>) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>>> {
        let found = self
            .lock()
            .keys
            .values()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .cloned()
            .collect();
        Box::pin(async move { Ok(found) })
    }
    fn key_revoke(&self, id: &KeyId, time_ms: i64) -> BoxFuture<'_, Result<bool>> {
        let revoked = match self.lock().keys.get_mut(id) {
            Some(k) if k.revoked_ms.is_none() => {
                k.revoked_ms = Some(time_ms);
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(revoked) })
    }
}

impl InvocationStore for MemoryStorage {
    fn invocation_get(
        &self,
        tenant: &TenantId,
        id: &InvocationId,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>> {
        let found = self
            .lock()
            .row(id)
            .map(|r| r.record.clone())
            .filter(|r| r.tenant == tenant);
        Box::pin(async move { Ok(found) })
    }

    fn invocation_list(
        &self,
        tenant: &TenantId,
        f: InvocationFilter,
    ) -> BoxFuture<'_, Result<Vec<(i64, InvocationRecord)>>> {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let found = self
            .lock()
            .invocations
            .range(..f.before.unwrap_or(i64::MAX))
            .rev()
            .map(|(p, r)| (p, &r.record))
            .filter(|(_, r)| {
                r.tenant == tenant
                    && f.tool.as_ref().is_none_or(|t| &r.tool == t)
                    && f.status.as_ref().is_none_or(|s| &r.status == s)
                    && eq(&f.workflow, &r.workflow)
                    && eq(&f.task_id, &r.task_id)
                    && eq(&f.error_kind, &r.error_kind)
                    && f.since_ms.is_none_or(|s| r.created_ms >= s)
                    && f.until_ms.is_none_or(|u| r.created_ms < u)
            })
            .take(usize::try_from(f.limit).unwrap_or(0))
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn invocation_samples(
        &self,
        tenant: &TenantId,
        f: SampleFilter,
    ) -> BoxFuture<'_, Result<Vec<InvocationSample>>> {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        let inner = self.lock();
        let mut found: Vec<(i64, i64, &InvocationRecord)> = inner
            .invocations
            .iter()
            .map(|(p, r)| (*p, &r.record))
            .filter(|(_, r)| {
                r.tenant == tenant
                    && r.created_ms >= f.since_ms
                    && r.created_ms < f.until_ms
                    && eq(&f.tool, Some(&r.tool))
                    && eq(&f.function, Some(&r.function))
                    && eq(&f.workflow, r.workflow.as_ref())
            })
            .map(|(p, r)| (r.created_ms, p, r))
            .collect();
        found.sort_by_key(|s| std::cmp::Reverse((s.0, s.1)));
        let samples = found
            .into_iter()
            .take(usize::try_from(f.limit).unwrap_or(0))
            .map(|(_, _, r)| sample_of(r))
            .collect();
        Box::pin(async move { Ok(samples) })
    }

    fn invocation_admit(
        &self,
        admit: Admit,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Refused>>> {
        let mut inner = self.lock();
        let answer = (|| {
            match inner.row(&admit.run.id) {
                None if admit.existing => return Err(Refused::Taken),
                None => {}
                Some(r)
                    if r.record.status == crate::storage::Status::Running
                        && !r.admitted
                        && r.owner.as_deref() == Some(admit.run.owner.as_str()) => {}
                Some(_) => return Err(Refused::Taken),
            }
            let lines = reservations(&admit.worst);
            for c in &lines {
                let (used, reserved) = inner.budget.get(&key(c)).copied().unwrap_or((0, 0));
                if let Some(e) = exceeds(c, used, reserved) {
                    return Err(Refused::Exceeded(e));
                }
            }
            for c in &lines {
                let line = inner.budget.entry(key(c)).or_default();
                line.1 = line.1.saturating_add(c.amount);
            }
            if inner.row(&admit.run.id).is_none() {
                inner.new_running(&admit.run);
            }
            let row = inner.row_mut(&admit.run.id).expect("written above");
            row.admitted = true;
            row.lease_until = Some(admit.run.lease_until);
            row.worst = Some(admit.worst.clone());
            Ok(())
        })();
        Box::pin(async move { Ok(answer) })
    }

    fn invocation_renew(
        &self,
        owner: &str,
        ids: Vec<InvocationId>,
        lease_until: i64,
    ) -> BoxFuture<'_, Result<u64>> {
        let mut inner = self.lock();
        let mut n = 0;
        for id in ids {
            if let Some(row) = inner.row_mut(&id)
                && row.record.status == crate::storage::Status::Running
                && row.owner.as_deref() == Some(owner)
            {
                row.lease_until = Some(lease_until);
                n += 1;
            }
        }
        Box::pin(async move { Ok(n) })
    }

    fn invocation_expired(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<Lost>>> {
        let inner = self.lock();
        let found = inner
            .invocations
            .values()
            .filter(|r| {
                r.record.status == crate::storage::Status::Running
                    && r.lease_until.is_some_and(|l| l < now_ms)
            })
            .take(usize::try_from(limit).unwrap_or(0))
            .filter_map(|r| lost_of(&inner, r))
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn invocation_running(&self, id: &InvocationId) -> BoxFuture<'_, Result<Option<Lost>>> {
        let inner = self.lock();
        let found = inner
            .row(id)
            .filter(|r| r.record.status == crate::storage::Status::Running)
            .and_then(|r| lost_of(&inner, r));
        Box::pin(async move { Ok(found) })
    }

    fn invocation_forget(&self, id: &InvocationId, expect: Expect) -> BoxFuture<'_, Result<bool>> {
        let mut inner = self.lock();
        let forgotten = match inner.row(id).cloned() {
            Some(row) if !row.admitted && check(&expect, Some(&row.state())) => {
                if let Some(pos) = inner.invocation_pos.remove(id) {
                    inner.invocations.remove(&pos);
                }
                if let Some(key) = row.idempotency_key.clone() {
                    inner.idempotency.remove(&(row.record.tenant.clone(), key));
                }
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(forgotten) })
    }
}

impl PolicyStore for MemoryStorage {
    fn policy_put(&self, name: &str, text: &str, time_ms: i64) -> BoxFuture<'_, Result<i64>> {
        let mut inner = self.lock();
        let version = inner.policies.len() as i64 + 1;
        inner.policies.push(StoredPolicy {
            version,
            name: name.to_string(),
            text: text.to_string(),
            created_ms: time_ms,
        });
        Box::pin(async move { Ok(version) })
    }
    fn policy_current(&self) -> BoxFuture<'_, Result<Option<StoredPolicy>>> {
        let found = self.lock().policies.last().cloned();
        Box::pin(async move { Ok(found) })
    }
}

impl IdempotencyStore for MemoryStorage {
    fn idempotency_begin(&self, begin: KeyBegin) -> BoxFuture<'_, Result<IdempotencyBegin>> {
        let mut inner = self.lock();
        let now = begin.now_ms;
        inner.idempotency.retain(|_, e| e.expires_ms > now);
        let k = (begin.tenant.clone(), begin.key.clone());
        let stored = inner.idempotency.get(&k).map(|e| KeyRow {
            fingerprint: e.fingerprint.clone(),
            expires_ms: e.expires_ms,
            answer: e.done.clone(),
            invocation: inner
                .row(&e.invocation_id)
                .map(|r| r.record.status.as_str().to_string()),
        });
        let answer = decide(stored.as_ref(), &begin.fingerprint, now);
        if answer == IdempotencyBegin::Started {
            inner.idempotency.insert(
                k,
                Idem {
                    fingerprint: begin.fingerprint.clone(),
                    done: None,
                    expires_ms: begin.expires_ms,
                    invocation_id: begin.run.id.clone(),
                },
            );
            inner.new_running(&begin.run);
        }
        Box::pin(async move { Ok(answer) })
    }
}

impl ApprovalStore for MemoryStorage {
    fn approval_get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>> {
        let found = self
            .lock()
            .approvals
            .get(id)
            .filter(|a| a.tenant == tenant)
            .cloned();
        Box::pin(async move { Ok(found) })
    }
    fn approval_list(
        &self,
        tenant: &TenantId,
        status: Option<ApprovalStatus>,
        now_ms: i64,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>> {
        let mut found: Vec<ApprovalRecord> = self
            .lock()
            .approvals
            .values()
            .filter(|a| {
                a.tenant == tenant
                    && status.is_none_or(|s| effective_status(a, now_ms) == s)
                    && before
                        .as_ref()
                        .is_none_or(|(ms, id)| (a.created_ms, a.id.as_str()) < (*ms, id.as_str()))
            })
            .cloned()
            .collect();
        found.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        found.truncate(usize::try_from(limit).unwrap_or(0));
        Box::pin(async move { Ok(found) })
    }

    fn approvals_due(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>> {
        let mut found: Vec<ApprovalRecord> = self
            .lock()
            .approvals
            .values()
            .filter(|a| {
                a.status == crate::storage::ApprovalStatus::Pending && a.expires_ms <= now_ms
            })
            .cloned()
            .collect();
        found.sort_by_key(|a| a.expires_ms);
        found.truncate(usize::try_from(limit).unwrap_or(0));
        Box::pin(async move { Ok(found) })
    }
}

impl CacheStore for MemoryStorage {
    fn cache_get(
        &self,
        tenant: &TenantId,
        key: &str,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<String>>> {
        let found = self
            .lock()
            .cache
            .get(&(tenant.clone(), key.to_string()))
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(r, _)| r.clone());
        Box::pin(async move { Ok(found) })
    }

    fn cache_sweep(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>> {
        let mut inner = self.lock();
        let before = inner.cache.len();
        inner.cache.retain(|_, (_, expires)| *expires > now_ms);
        let n = (before - inner.cache.len()) as u64;
        Box::pin(async move { Ok(n) })
    }
}

impl MetaStore for MemoryStorage {
    fn meta_get(&self, key: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move { Ok(self.lock().meta.get(&key).cloned()) })
    }
    fn meta_init(&self, key: &str, value: &str) -> BoxFuture<'_, Result<String>> {
        let (key, value) = (key.to_string(), value.to_string());
        Box::pin(async move { Ok(self.lock().meta.entry(key).or_insert(value).clone()) })
    }
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl OutboxStore for MemoryStorage {
    fn outbox_claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>> {
        let mut inner = self.lock();
        let mut claimed = Vec::new();
        for (m, due, claim) in inner.outbox.values_mut() {
            if claimed.len() as i64 >= limit {
                break;
            }
            if m.state == "pending" && *due <= now_ms && claim.as_ref().is_none_or(|c| c.1 < now_ms)
            {
                *claim = Some((owner.to_string(), lease_until));
                claimed.push(m.clone());
            }
        }
        Box::pin(async move { Ok(claimed) })
    }

    fn outbox_attempt(
        &self,
        id: i64,
        owner: &str,
        now_ms: i64,
        attempt: Attempt,
    ) -> BoxFuture<'_, Result<()>> {
        let mut inner = self.lock();
        if let Some((m, due, claim)) = inner.outbox.get_mut(&id)
            && claim.as_ref().is_some_and(|c| c.0 == owner)
            && m.state == "pending"
        {
            m.attempts += 1;
            *claim = None;
            match attempt {
                Attempt::Delivered { .. } => {
                    m.state = "delivered".into();
                    m.delivered_ms = Some(now_ms);
                }
                Attempt::Retry { next_ms, error } => {
                    *due = next_ms;
                    m.last_error = Some(error);
                }
                Attempt::Failed { error } => {
                    m.state = "failed".into();
                    m.last_error = Some(error);
                }
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn outbox_sweep(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        let mut inner = self.lock();
        let before = inner.outbox.len();
        inner
            .outbox
            .retain(|_, (m, _, _)| m.state == "pending" || m.created_ms >= before_ms);
        let n = (before - inner.outbox.len()) as u64;
        Box::pin(async move { Ok(n) })
    }

    fn outbox_for(
        &self,
        tenant: &str,
        invocation_id: &str,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>> {
        let found = self
            .lock()
            .outbox
            .values()
            .map(|(m, _, _)| m)
            .filter(|m| m.tenant == tenant && m.invocation_id == invocation_id)
            .cloned()
            .collect();
        Box::pin(async move { Ok(found) })
    }
}

fn conflict() -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Conflict,
        "the invocation or approval is no longer in the state this work expected (another host or the reaper moved it)",
    )
}
