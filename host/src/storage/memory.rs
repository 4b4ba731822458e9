//! An in-memory backend: the [`Storage`] contract with no durability. For
//! tests, for measuring the gate without the durability wait, and as the
//! reference the SQL backends must agree with.

use super::{
    ApiKeyRecord, ApprovalRecord, ApprovalStore, AuditStore, Batch, BudgetStore, CacheStore,
    Charge, Checkpoint, Exceeded, IdempotencyBegin, IdempotencyDone, IdempotencyStore,
    InvocationFilter, InvocationRecord, InvocationStore, KeyStore, MetaStore, Notary, PolicyStore,
    Registered, RegistryStore, Signed, StoredEntry, StoredPolicy, ToolEntry, ToolVersion, Usage,
};
use crate::BoxFuture;
use crate::audit::link::{Head, link};
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
    budget: BTreeMap<(String, String, String), (i64, i64)>,
    meta: HashMap<String, String>,
    blobs: HashMap<String, Vec<u8>>,
    versions: BTreeMap<(String, String, String), ToolVersion>,
    tools: BTreeMap<(String, String), ToolEntry>,
    keys: BTreeMap<String, ApiKeyRecord>,
    /// By position.
    invocations: BTreeMap<i64, InvocationRecord>,
    /// Invocation id → position.
    invocation_pos: HashMap<String, i64>,
    policies: Vec<StoredPolicy>,
    /// (tenant, key) → (fingerprint, done answer, started, expires).
    idempotency: HashMap<(String, String), Idem>,
    approvals: BTreeMap<String, ApprovalRecord>,
    /// (tenant, key) → (result, expires).
    cache: HashMap<(String, String), (String, i64)>,
}

struct Idem {
    fingerprint: String,
    done: Option<(u16, String)>,
    started_ms: i64,
    expires_ms: i64,
}

fn finish(inner: &mut Inner, d: IdempotencyDone) {
    if let Some(e) = inner.idempotency.get_mut(&(d.tenant, d.key)) {
        e.done = Some((d.http_status, d.response));
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

fn key(c: &Charge) -> (String, String, String) {
    (c.scope.clone(), c.window.clone(), c.metric.clone())
}

fn settle(inner: &mut Inner, release: &[Charge], charge: &[Charge]) {
    for c in release {
        let line = inner.budget.entry(key(c)).or_default();
        line.1 = (line.1 - c.amount).max(0);
    }
    for c in charge {
        inner.budget.entry(key(c)).or_default().0 += c.amount;
    }
}

impl AuditStore for MemoryStorage {
    fn audit_append(
        &self,
        batch: Batch,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>> {
        Box::pin(async move {
            let mut inner = self.lock();
            let heads: BTreeMap<String, Option<Head>> = batch
                .entries
                .iter()
                .map(|e| {
                    let head = inner.tips.get(&e.chain).map(|(seq, hash)| Head {
                        seq: *seq,
                        hash: hash.clone(),
                    });
                    (e.chain.clone(), head)
                })
                .collect();
            let now = batch.entries.last().map_or(0, |e| e.time_ms);
            let linked = link(
                &batch.entries,
                &heads,
                inner.registry.as_ref(),
                &notary,
                now,
            );
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
            let stored = linked.entries;
            settle(&mut inner, &batch.release, &batch.charge);
            for r in batch.invocations {
                let next = inner.invocations.keys().next_back().map_or(1, |p| p + 1);
                let pos = *inner.invocation_pos.entry(r.id.clone()).or_insert(next);
                inner.invocations.insert(pos, r);
            }
            for a in batch.approvals {
                inner.approvals.insert(a.id.clone(), a);
            }
            for d in batch.idempotency {
                finish(&mut inner, d);
            }
            for c in batch.cache {
                inner
                    .cache
                    .insert((c.tenant, c.key), (c.result, c.expires_ms));
            }
            Ok(stored)
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
            .map(|r| r.tenant.clone())
            .chain(inner.approvals.values().map(|a| a.tenant.clone()))
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
    fn budget_reserve(
        &self,
        charges: Vec<Charge>,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Exceeded>>> {
        Box::pin(async move {
            let mut inner = self.lock();
            for c in &charges {
                let (used, reserved) = inner.budget.get(&key(c)).copied().unwrap_or((0, 0));
                if let Some(limit) = c.limit
                    && used.saturating_add(reserved).saturating_add(c.amount) > limit
                {
                    return Ok(Err(Exceeded {
                        scope: c.scope.clone(),
                        window: c.window.clone(),
                        metric: c.metric.clone(),
                        limit,
                        used,
                        reserved,
                        requested: c.amount,
                    }));
                }
            }
            for c in &charges {
                inner.budget.entry(key(c)).or_default().1 += c.amount;
            }
            Ok(Ok(()))
        })
    }
    fn budget_settle(&self, reserved: Vec<Charge>, used: Vec<Charge>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            settle(&mut self.lock(), &reserved, &used);
            Ok(())
        })
    }
    fn budget_usage(&self, scope: &str) -> BoxFuture<'_, Result<Vec<Usage>>> {
        let scope = scope.to_string();
        Box::pin(async move {
            Ok(self
                .lock()
                .budget
                .iter()
                .filter(|((s, _, _), _)| *s == scope)
                .map(|((s, w, m), (used, reserved))| Usage {
                    scope: s.clone(),
                    window: w.clone(),
                    metric: m.clone(),
                    used: *used,
                    reserved: *reserved,
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
        tenant: &str,
        name: &str,
        version: &str,
    ) -> BoxFuture<'_, Result<Option<ToolVersion>>> {
        let found = self
            .lock()
            .versions
            .get(&(tenant.to_string(), name.to_string(), version.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }
    fn tool_versions(&self, tenant: &str, name: &str) -> BoxFuture<'_, Result<Vec<ToolVersion>>> {
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
    fn tool_get(&self, tenant: &str, name: &str) -> BoxFuture<'_, Result<Option<ToolEntry>>> {
        let found = self
            .lock()
            .tools
            .get(&(tenant.to_string(), name.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }
    fn tool_list(&self, tenant: &str) -> BoxFuture<'_, Result<Vec<ToolEntry>>> {
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
        tenant: &str,
        name: &str,
        version: Option<&str>,
        disabled: Option<bool>,
    ) -> BoxFuture<'_, Result<bool>> {
        let mut inner = self.lock();
        let key = (tenant.to_string(), name.to_string());
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
        tenant: &str,
        name: &str,
        version: &str,
        artifact: &str,
        engine: &str,
    ) -> BoxFuture<'_, Result<()>> {
        if let Some(v) = self.lock().versions.get_mut(&(
            tenant.to_string(),
            name.to_string(),
            version.to_string(),
        )) {
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
    fn key_get(&self, id: &str) -> BoxFuture<'_, Result<Option<ApiKeyRecord>>> {
        let found = self.lock().keys.get(id).cloned();
        Box::pin(async move { Ok(found) })
    }
    fn key_list(&self, tenant: Option<&str>) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>>> {
        let found = self
            .lock()
            .keys
            .values()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .cloned()
            .collect();
        Box::pin(async move { Ok(found) })
    }
    fn key_revoke(&self, id: &str, time_ms: i64) -> BoxFuture<'_, Result<bool>> {
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
        tenant: &str,
        id: &str,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>> {
        let inner = self.lock();
        let found = inner
            .invocation_pos
            .get(id)
            .and_then(|p| inner.invocations.get(p))
            .filter(|r| r.tenant == tenant)
            .cloned();
        drop(inner);
        Box::pin(async move { Ok(found) })
    }
    fn invocation_list(
        &self,
        tenant: &str,
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
            .filter(|(_, r)| {
                r.tenant == tenant
                    && f.tool.as_ref().is_none_or(|t| &r.tool == t)
                    && f.status.as_ref().is_none_or(|s| &r.status == s)
                    && eq(&f.workflow, &r.workflow)
                    && eq(&f.task_id, &r.task_id)
            })
            .take(usize::try_from(f.limit).unwrap_or(0))
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        Box::pin(async move { Ok(found) })
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
    fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expires_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'_, Result<IdempotencyBegin>> {
        let mut inner = self.lock();
        inner.idempotency.retain(|_, e| e.expires_ms > now_ms);
        let k = (tenant.to_string(), key.to_string());
        let answer = match inner.idempotency.get(&k) {
            Some(e) if e.fingerprint != fingerprint => Some(IdempotencyBegin::Mismatch),
            Some(Idem {
                done: Some((status, response)),
                ..
            }) => Some(IdempotencyBegin::Replay {
                http_status: *status,
                response: response.clone(),
            }),
            Some(e) if e.started_ms > stale_before_ms => Some(IdempotencyBegin::InProgress),
            _ => None,
        };
        let answer = answer.unwrap_or_else(|| {
            inner.idempotency.insert(
                k,
                Idem {
                    fingerprint: fingerprint.to_string(),
                    done: None,
                    started_ms: now_ms,
                    expires_ms,
                },
            );
            IdempotencyBegin::Started
        });
        Box::pin(async move { Ok(answer) })
    }
    fn idempotency_abandon(&self, tenant: &str, key: &str) -> BoxFuture<'_, Result<()>> {
        let mut inner = self.lock();
        let k = (tenant.to_string(), key.to_string());
        if inner.idempotency.get(&k).is_some_and(|e| e.done.is_none()) {
            inner.idempotency.remove(&k);
        }
        Box::pin(async move { Ok(()) })
    }
    fn idempotency_finish(&self, done: IdempotencyDone) -> BoxFuture<'_, Result<()>> {
        finish(&mut self.lock(), done);
        Box::pin(async move { Ok(()) })
    }
}

impl ApprovalStore for MemoryStorage {
    fn approval_get(
        &self,
        tenant: &str,
        id: &str,
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
        tenant: &str,
        status: Option<&str>,
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
                    && status.is_none_or(|s| crate::approvals::effective_status(a, now_ms) == s)
                    && before
                        .as_ref()
                        .is_none_or(|(ms, id)| (a.created_ms, &a.id) < (*ms, id))
            })
            .cloned()
            .collect();
        found.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        found.truncate(usize::try_from(limit).unwrap_or(0));
        Box::pin(async move { Ok(found) })
    }
    fn approval_decide(
        &self,
        tenant: &str,
        id: &str,
        status: &str,
        decided_by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>> {
        let decided = match self.lock().approvals.get_mut(id) {
            Some(a) if a.tenant == tenant && a.status == "pending" && now_ms < a.expires_ms => {
                a.status = status.to_string();
                a.decided_by = Some(decided_by.to_string());
                a.decided_ms = Some(now_ms);
                a.reason = reason.map(str::to_string);
                a.args.clear();
                Some(a.clone())
            }
            _ => None,
        };
        Box::pin(async move { Ok(decided) })
    }
}

impl CacheStore for MemoryStorage {
    fn cache_get(
        &self,
        tenant: &str,
        key: &str,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<String>>> {
        let found = self
            .lock()
            .cache
            .get(&(tenant.to_string(), key.to_string()))
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(r, _)| r.clone());
        Box::pin(async move { Ok(found) })
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
