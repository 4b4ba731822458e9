//! The governed gate: policy (Cedar), then budget (reserve/settle), then
//! audit (durable, tamper-evident), for every invocation; policy grants and
//! per-invocation limits for every outbound call.

use super::{
    Admission, BoxFuture, Gate, Grants, HttpPermit, InvocationReport, InvocationRequest,
    OutboundCall, Preopen, Verdict,
};
use crate::audit::{AuditLog, canonical};
use crate::budget::{Ledger, Scope, Spend, charges};
use crate::error::{Error, ErrorKind, Result};
use crate::lease::Instance;
use crate::limits::Limits;
use crate::observe;
use crate::policy::file::{Document, FileMode, ToolSettings};
use crate::policy::{Effect, Policy, Subject, tool_settings};
use crate::secrets::{Secret, SecretSource, expand, referenced};
use crate::storage::{
    Admit, ApprovalRecord, CacheEntry, End, Expect, IdempotencyDone, InvocationRecord, NewRun,
    OutboxMessage, Work,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Default cap on outbound calls per invocation when a tool has grants.
pub const DEFAULT_MAX_OUTBOUND: u32 = 16;
/// Default cap on one HTTP response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 << 20;

/// How long an approval request waits for a decision, by default.
pub const DEFAULT_APPROVAL_TTL_MS: i64 = 24 * 3600 * 1000;

/// The gate with a policy file, budget ledgers and the audit trail.
pub struct Governed {
    /// How long approval requests wait for a decision.
    approval_ttl_ms: std::sync::atomic::AtomicI64,
    /// Swapped whole by [`Governed::set_policy`]; each decision reads one
    /// snapshot.
    policy: std::sync::RwLock<Arc<Policy>>,
    ledger: Ledger,
    audit: Arc<AuditLog>,
    secrets: Arc<dyn SecretSource>,
    /// This host instance: the owner of the invocations it admits.
    instance: Arc<Instance>,
}

/// What the gate keeps about one admitted invocation.
struct State {
    workflow: String,
    settings: Arc<ToolSettings>,
    scope: Scope,
    admitted_ms: i64,
    document: Arc<Document>,
    outbound: AtomicU32,
    max_outbound: u32,
    /// The cache key, when the function is cacheable.
    cache_key: Option<String>,
    /// The sha256 of the registered component that runs (none for a tool
    /// not from the registry): the audit names the code, not only its
    /// version, which a database writer could re-point.
    digest: Option<String>,
    /// Whether the result came from the cache.
    cache_hit: bool,
    /// The prefix of the Idempotency-Key derived for outbound requests.
    outbound_key: Option<String>,
}

/// The marker in an approval refusal's message before the deciding rule.
const APPROVAL_PREFIX: &str = "a human must approve this call: ";

/// The cache key of a call: tool version digest, function, canonical
/// arguments, and the workflow whose document granted what it ran with (two
/// workflows may grant one tool different capabilities, so results of one
/// are not answers for the other); the tenant scopes the entry.
fn cache_key(digest: &str, function: &str, args: &Value, workflow: Option<&str>) -> String {
    canonical::fingerprint(
        &json!({"digest": digest, "function": function, "args": args, "workflow": workflow}),
    )
}

/// The Idempotency-Key prefix sent on a keyed invocation's outbound HTTP
/// requests (`<prefix>-<n>` for its n-th request): derived from the tenant
/// and the caller's key, so that two tenants' keys never collide downstream.
pub fn outbound_key_prefix(tenant: &str, key: &str) -> String {
    canonical::sha256_hex(format!("toolhost-idempotency/v1\n{tenant}\n{key}").as_bytes())[..32]
        .to_string()
}

pub use crate::clock::now_ms;

impl Governed {
    pub fn new(
        policy: Arc<Policy>,
        ledger: Ledger,
        audit: Arc<AuditLog>,
        secrets: Arc<dyn SecretSource>,
    ) -> Governed {
        Governed {
            approval_ttl_ms: std::sync::atomic::AtomicI64::new(DEFAULT_APPROVAL_TTL_MS),
            policy: std::sync::RwLock::new(policy),
            ledger,
            audit,
            secrets,
            instance: Instance::system(),
        }
    }

    /// The gate, admitting invocations as owned by `instance` (its clock and
    /// lease).
    pub fn with_instance(mut self, instance: Arc<Instance>) -> Governed {
        self.instance = instance;
        self
    }

    /// The host instance that owns what this gate admits.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// How long approval requests created from now on wait for a decision.
    pub fn set_approval_ttl(&self, ttl: std::time::Duration) {
        self.approval_ttl_ms.store(
            i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Put a new policy in force. Invocations already admitted finish under
    /// the policy that admitted them.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Put newly stored policies in force (`host policy set`, the console,
    /// another replica): every `every`, the stored policy is read, and a
    /// version newer than `version` (the one in force) replaces the policy.
    /// A stored version that does not parse is logged and skipped (the
    /// policy in force stays). Runs until dropped.
    pub async fn follow_stored_policy(&self, mut version: i64, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            let stored = match self.audit.storage().policy_current().await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("reading the stored policy: {}", e.message);
                    continue;
                }
            };
            if stored.version <= version {
                continue;
            }
            // Either way this version is done: not retried.
            version = stored.version;
            match Policy::parse(&stored.name, &stored.text) {
                Ok(policy) => {
                    self.set_policy(Arc::new(policy));
                    tracing::info!(version = stored.version, name = %stored.name, "policy updated");
                }
                Err(e) => tracing::error!(
                    version = stored.version,
                    "the stored policy does not load: {}",
                    e.message
                ),
            }
        }
    }

    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Record model tokens used by a task; returns the token limits now
    /// exceeded.
    pub async fn report_tokens(
        &self,
        context: &super::CallContext,
        input: i64,
        output: i64,
    ) -> Result<Vec<Error>> {
        let policy = self.policy();
        let workflow = workflow_in(&policy, context.workflow.as_deref());
        let doc = policy
            .document(Some(context.tenant.as_str()), workflow.as_deref())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::PolicyDenied,
                    "no policy document governs this task's workflow",
                )
            })?;
        let exceeded = self
            .ledger
            .report_tokens(
                &doc.budget,
                &scope_of(context, workflow.as_deref()),
                now_ms(),
                input,
                output,
            )
            .await?;
        observe::metrics::tokens(
            context.tenant.as_str(),
            workflow.as_deref().unwrap_or("*"),
            input,
            output,
        );
        Ok(exceeded)
    }

    fn grants(&self, settings: &ToolSettings) -> Result<Grants> {
        let mut env = Vec::new();
        for (k, v) in &settings.env {
            let value = expand(v, self.secrets.as_ref()).map_err(|e| {
                Error::new(
                    ErrorKind::CapabilityDenied,
                    format!("environment variable {k}: {e}"),
                )
            })?;
            env.push((k.clone(), value));
        }
        let preopens = settings
            .files
            .iter()
            .map(|f| Preopen {
                host_path: f.host.clone(),
                guest_path: f.guest.clone(),
                writable: f.mode == FileMode::Rw,
            })
            .collect();
        Ok(Grants {
            env,
            preopens,
            ip_name_lookup: settings.dns,
        })
    }

    /// Every secret value the host may inject into an invocation of a tool
    /// with `settings`: the secrets its environment and header templates
    /// name (and those values expanded), and the secrets it may substitute
    /// into its own headers. The host scrubs them from what the invocation
    /// produces.
    fn injected(&self, settings: &ToolSettings) -> Vec<Secret> {
        let source = self.secrets.as_ref();
        let mut out = Vec::new();
        let templates = settings
            .env
            .values()
            .chain(settings.http.iter().flat_map(|g| g.headers.values()));
        for template in templates {
            let named = referenced(template, source);
            if !named.is_empty() {
                out.extend(named);
                out.extend(expand(template, source).ok());
            }
        }
        for g in &settings.http {
            out.extend(g.secrets.iter().filter_map(|name| source.get(name)));
        }
        out
    }
}

fn effective_limits(requested: &Limits, settings: &ToolSettings) -> Limits {
    let l = &settings.limits;
    Limits {
        fuel: l.fuel.map(Some).unwrap_or(requested.fuel),
        memory_bytes: l
            .memory
            .unwrap_or(requested.memory_bytes)
            .min(Limits::MAX_MEMORY),
        timeout: l.timeout.unwrap_or(requested.timeout),
        max_output_bytes: l
            .max_output
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
            .unwrap_or(requested.max_output_bytes),
        ..requested.clone()
    }
}

impl Gate for Governed {
    fn admit<'a>(&'a self, r: &'a InvocationRequest<'a>) -> BoxFuture<'a, Result<Admission>> {
        Box::pin(async move {
            let policy = self.policy();
            let workflow = workflow_in(&policy, r.context.workflow.as_deref());
            let decision = policy.decide(&Subject {
                tenant: Some(r.context.tenant.as_str()),
                workflow: workflow.as_deref(),
                task_id: r.context.task_id.as_deref(),
                principal: r.context.principal.as_deref().unwrap_or("anonymous"),
                tool: r.tool,
                function: r.function,
                args: r.args,
                approved: r.context.approval.is_some(),
            });
            match decision.effect {
                Effect::Allow => {}
                Effect::Deny => {
                    return Err(Error::new(
                        ErrorKind::PolicyDenied,
                        format!("denied by {}", decision.rule),
                    ));
                }
                Effect::NeedsApproval => {
                    return Err(Error::new(
                        ErrorKind::ApprovalRequired,
                        format!("{APPROVAL_PREFIX}{}", decision.rule),
                    ));
                }
            }
            let document = policy
                .document(Some(r.context.tenant.as_str()), workflow.as_deref())
                .cloned()
                .ok_or_else(|| Error::internal("an allowed call has no governing document"))?;
            let settings = tool_settings(&document, r.tool, r.function)
                .cloned()
                .unwrap_or_default();
            let grants = self.grants(&settings)?;
            let limits = effective_limits(r.limits, &settings);
            let has_outbound = !settings.http.is_empty() || !settings.sockets.is_empty();
            let max_outbound = settings
                .limits
                .max_outbound_calls
                .unwrap_or(if has_outbound {
                    DEFAULT_MAX_OUTBOUND
                } else {
                    0
                });

            let tenant = r.context.tenant.clone();
            let cache_key = match (&settings.cache, r.digest) {
                (Some(_), Some(digest)) => Some(cache_key(
                    digest,
                    &r.function.name,
                    r.args,
                    workflow.as_deref(),
                )),
                _ => None,
            };
            let cached = match &cache_key {
                Some(key) => self
                    .audit
                    .storage()
                    .cache_get(&tenant, key, now_ms())
                    .await?
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok()),
                None => None,
            };
            // Reserve the worst case: this call, all its fuel, its whole
            // deadline, every outbound call it may make, and their price (a
            // cache hit: its hit cost).
            let scope = scope_of(r.context, workflow.as_deref());
            let worst = if cached.is_some() {
                hit_spend(&settings)
            } else {
                Spend {
                    tool_calls: 1,
                    outbound_calls: i64::from(max_outbound),
                    fuel: limits
                        .fuel
                        .map_or(i64::MAX, |f| i64::try_from(f).unwrap_or(i64::MAX)),
                    wall_ms: limits.timeout.as_millis() as i64,
                    ..Spend::default()
                }
                .priced(&settings.price)
            };
            // The limited lines are reserved, all are charged if it is lost;
            // the clock is fixed at admission so that settling hits the same
            // windows. The running row is written with the reservation.
            let admitted_ms = self.instance.now_ms();
            // The reservation is part of the `admit` span (its attributes),
            // not a span of its own: a span costs more than the facts.
            let admit_span = observe::trace::current();
            if admit_span.is_on() {
                use observe::trace::attr;
                admit_span.set_all([
                    attr("toolhost.budget.tool_calls", worst.tool_calls),
                    attr("toolhost.budget.outbound_calls", worst.outbound_calls),
                    attr("toolhost.budget.cost_micro_usd", worst.cost_micro_usd),
                ]);
            }
            let worst = charges(&document.budget, &scope, admitted_ms, &worst);
            let reserved = self
                .ledger
                .admit(Admit {
                    run: NewRun {
                        id: r.invocation_id.clone(),
                        tenant: tenant.clone(),
                        tool: r.tool.to_string(),
                        function: r.function.name.clone(),
                        version: r.version.map(str::to_string),
                        workflow: workflow.clone(),
                        task_id: r.context.task_id.clone(),
                        principal: r.context.principal.clone(),
                        transport: r.context.transport().to_string(),
                        idempotency_key: r.context.idempotency_key.clone(),
                        created_ms: admitted_ms,
                        owner: self.instance.id.clone(),
                        lease_until: self.instance.lease_until(),
                    },
                    worst,
                    existing: r.context.idempotency_key.is_some() || r.context.approval.is_some(),
                })
                .await;
            if let Err(e) = &reserved {
                admit_span.set("toolhost.budget.error_kind", e.kind.as_str());
            }
            reserved?;

            let injected = self.injected(&settings);
            let state = State {
                admitted_ms,
                workflow: workflow.unwrap_or_else(|| "*".into()),
                settings,
                scope,
                document,
                outbound: AtomicU32::new(0),
                max_outbound,
                cache_hit: cached.is_some(),
                cache_key,
                digest: r.digest.map(str::to_string),
                outbound_key: r
                    .context
                    .idempotency_key
                    .as_deref()
                    .map(|k| outbound_key_prefix(&tenant, k)),
            };
            Ok(Admission {
                grants,
                injected,
                rule: decision.rule,
                limits: Some(limits),
                state: Some(Arc::new(state)),
                cached,
            })
        })
    }

    fn outbound(&self, admission: &Admission, call: &OutboundCall) -> Verdict {
        let Some(state) = admission
            .state
            .as_ref()
            .and_then(|s| s.downcast_ref::<State>())
        else {
            return Verdict::deny("no admission state: deny");
        };
        let settings = &state.settings;
        // The call's 1-based sequence number; `None` past the cap.
        let count = |state: &State| -> Option<u32> {
            let n = state.outbound.fetch_add(1, Ordering::SeqCst);
            (n < state.max_outbound).then_some(n + 1)
        };
        let over_cap = |state: &State| {
            Verdict::deny(format!(
                "limit: at most {} outbound calls per invocation",
                state.max_outbound
            ))
        };
        match call {
            OutboundCall::Http {
                method,
                scheme,
                host,
                port,
                ..
            } => {
                let Some((i, grant)) = settings.http.iter().enumerate().find(|(_, g)| {
                    g.url.matches(scheme, host, *port)
                        && g.methods
                            .as_ref()
                            .is_none_or(|m| m.iter().any(|m| m.eq_ignore_ascii_case(method)))
                }) else {
                    return Verdict::deny(format!(
                        "default deny: no http grant of this tool covers {method} {scheme}://{host}:{port}"
                    ));
                };
                let Some(seq) = count(state) else {
                    return over_cap(state);
                };
                let mut headers = Vec::new();
                let mut injected = Vec::new();
                for (name, template) in &grant.headers {
                    match expand(template, self.secrets.as_ref()) {
                        Ok(v) => {
                            let named = referenced(template, self.secrets.as_ref());
                            if !named.is_empty() {
                                injected.extend(named);
                                injected.push(v.clone());
                            }
                            headers.push((name.clone(), v));
                        }
                        Err(e) => return Verdict::deny(format!("http[{i}] header {name}: {e}")),
                    }
                }
                let mut secrets = Vec::new();
                for name in &grant.secrets {
                    match self.secrets.get(name) {
                        Some(v) => {
                            injected.push(v.clone());
                            secrets.push((name.clone(), v));
                        }
                        None => {
                            return Verdict::deny(format!("http[{i}] secret `{name}` is not set"));
                        }
                    }
                }
                Verdict {
                    allowed: true,
                    rule: format!("http[{i}] {}", grant.url.as_str()),
                    http: Some(HttpPermit {
                        headers,
                        secrets,
                        max_response_bytes: grant
                            .max_response_bytes
                            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
                        timeout: grant.timeout,
                        allow_cidrs: settings.allow_cidrs.iter().map(|c| c.0).collect(),
                        idempotency_key: state
                            .outbound_key
                            .as_ref()
                            .map(|prefix| format!("{prefix}-{seq}")),
                        injected,
                    }),
                }
            }
            OutboundCall::Socket { addr, operation } => {
                let implicit_bind = matches!(*operation, "tcp-bind" | "udp-bind")
                    && addr.ip().is_unspecified()
                    && addr.port() == 0;
                if implicit_bind && !settings.sockets.is_empty() {
                    return Verdict {
                        allowed: true,
                        rule: "sockets: ephemeral bind for a granted address".into(),
                        http: None,
                    };
                }
                let Some((i, grant)) = settings
                    .sockets
                    .iter()
                    .enumerate()
                    .find(|(_, g)| g.matches(addr))
                else {
                    return Verdict::deny(format!(
                        "default deny: no socket grant of this tool covers {operation} {addr}"
                    ));
                };
                if count(state).is_none() {
                    return over_cap(state);
                }
                Verdict {
                    allowed: true,
                    rule: format!("sockets[{i}] {}", grant.as_str()),
                    http: None,
                }
            }
        }
    }

    fn complete<'a>(
        &'a self,
        admission: Option<&'a Admission>,
        report: &'a InvocationReport<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let state = admission
                .and_then(|a| a.state.as_ref())
                .and_then(|s| s.downcast_ref::<State>());
            let time_ms = self.instance.now_ms();
            let ctx = report.context;
            let response = report.response;
            let workflow = match state {
                Some(s) => Some(s.workflow.clone()),
                None => workflow_in(&self.policy(), ctx.workflow.as_deref()),
            };
            let document = match state {
                Some(s) => Some(s.document.clone()),
                None => self
                    .policy()
                    .document(Some(ctx.tenant.as_str()), workflow.as_deref())
                    .cloned(),
            };
            let redact: &[String] = document.as_ref().map_or(&[], |d| &d.logging.redact_fields);

            // Settle: release the reservation, charge what was used — in the
            // same transaction as the audit records.
            let mut charged = None;
            let mut used_lines = None;
            if let Some(s) = state {
                let used = if s.cache_hit {
                    hit_spend(&s.settings)
                } else {
                    let allowed_outbound =
                        report.outbound.iter().filter(|e| e.allowed).count() as i64;
                    Spend {
                        tool_calls: 1,
                        outbound_calls: allowed_outbound,
                        fuel: i64::try_from(response.usage.fuel).unwrap_or(i64::MAX),
                        wall_ms: response.usage.wall_ms as i64,
                        ..Spend::default()
                    }
                    .priced(&s.settings.price)
                };
                used_lines = Some(charges(&s.document.budget, &s.scope, s.admitted_ms, &used));
                charged = Some(used);
            }

            let error = response.error.as_ref();
            let decision = match (admission, error) {
                (Some(a), _) => json!({"effect": "allow", "rule": a.rule}),
                (None, Some(e)) => json!({"effect": e.kind, "rule": e.message}),
                (None, None) => json!({"effect": "allow", "rule": ""}),
            };
            let chain = ctx.tenant.clone();
            let args_redacted = canonical::redact(report.args, redact);
            let args_sha256 = canonical::fingerprint(report.args);
            let mut records = vec![(
                chain.to_string(),
                time_ms,
                json!({
                    "type": "invocation",
                    "invocation_id": response.invocation_id,
                    "time_ms": time_ms,
                    "tenant": ctx.tenant,
                    "workflow": workflow,
                    "task_id": ctx.task_id,
                    "principal": ctx.principal,
                    "tool": response.tool,
                    "version": response.version,
                    "digest": state.and_then(|s| s.digest.as_deref()),
                    "function": response.function,
                    "args_sha256": args_sha256,
                    "args": args_redacted,
                    "decision": decision,
                    "charged": charged,
                    "outcome": {
                        "ok": error.is_none(),
                        "status": response.status,
                        "error_kind": error.map(|e| e.kind),
                        "error": error.map(|e| &e.message),
                    },
                    "result_sha256": response.result.as_ref().map(canonical::fingerprint),
                    "result": response.result.as_ref().map(|r| canonical::redact(r, redact)),
                    "usage": response.usage,
                    "outbound_calls": report.outbound.len(),
                    "cache": state.and_then(|s| s.cache_key.as_ref().map(|_| if s.cache_hit { "hit" } else { "miss" })),
                    "approval_id": response.approval_id.as_ref().or(ctx.approval.as_ref()),
                    "idempotency_key_sha256": ctx.idempotency_key.as_ref().map(|k| canonical::sha256_hex(k.as_bytes())),
                }),
            )];
            for (i, e) in report.outbound.iter().enumerate() {
                let mut record = serde_json::to_value(e).unwrap_or_default();
                if let Some(obj) = record.as_object_mut() {
                    obj.insert("type".into(), json!("outbound"));
                    obj.insert("invocation_id".into(), json!(response.invocation_id));
                    obj.insert("index".into(), json!(i));
                    obj.insert("time_ms".into(), json!(time_ms));
                    obj.remove("at_ms").map(|at| obj.insert("at_ms".into(), at));
                }
                records.push((chain.to_string(), time_ms, record));
            }
            // The caller's own record: what they were answered (already
            // scrubbed of injected secrets by the host), redacted as the
            // audit copies are; with what the audit entries say about it
            // (arguments, decision, charge, outbound calls), so a reader of
            // the record (the API, the console, the reports) need not
            // search the trail.
            let mut stored = serde_json::to_value(response).unwrap_or_default();
            if let Some(result) = stored.get_mut("result") {
                *result = canonical::redact(result, redact);
            }
            if let Some(obj) = stored.as_object_mut() {
                obj.insert("args".into(), args_redacted.clone());
                obj.insert("args_sha256".into(), json!(args_sha256));
                obj.insert("decision".into(), decision.clone());
                // How the call arrived (`http`, `mcp`, `cli`, `approval`).
                obj.insert("transport".into(), json!(ctx.transport()));
                if let Some(charged) = &charged {
                    obj.insert("charged".into(), json!(charged));
                }
                if !report.outbound.is_empty() {
                    obj.insert("outbound".into(), json!(report.outbound));
                }
                // The trace this invocation is part of: its span's, else
                // the caller's (tracing off).
                let trace_id = observe::trace::current().trace_id().or_else(|| {
                    ctx.traceparent
                        .as_deref()
                        .and_then(observe::trace::trace_id_of)
                });
                if let Some(t) = trace_id {
                    obj.insert("trace_id".into(), json!(t));
                }
            }
            let invocation = InvocationRecord {
                id: response.invocation_id.clone(),
                tenant: chain.clone(),
                tool: response.tool.clone(),
                function: response.function.clone(),
                version: response.version.clone(),
                workflow: workflow.clone(),
                task_id: ctx.task_id.clone(),
                principal: ctx.principal.clone(),
                status: response.status,
                error_kind: error.map(|e| e.kind.as_str().to_string()),
                created_ms: time_ms,
                response: stored.to_string(),
            };
            // The row ends here if it is still this host's (else the reaper
            // took it: then this commit is refused, and so is the answer);
            // its reservation is settled by its own charges.
            let mut batch = Work {
                end: Some(End {
                    record: invocation,
                    expect: Expect::Mine {
                        owner: self.instance.id.clone(),
                    },
                    used: Some(used_lines.unwrap_or_default()),
                }),
                ..Work::default()
            };
            // A pending approval: the decision packet, and the call to run.
            if let (Some(approval_id), Some(e)) = (&response.approval_id, error) {
                let rule = e
                    .message
                    .strip_prefix(APPROVAL_PREFIX)
                    .unwrap_or(&e.message)
                    .to_string();
                batch.approvals.push(ApprovalRecord {
                    id: approval_id.clone(),
                    tenant: chain.clone(),
                    invocation_id: response.invocation_id.clone(),
                    status: crate::storage::ApprovalStatus::Pending,
                    tool: response.tool.clone(),
                    function: response.function.clone(),
                    version: response.version.clone(),
                    workflow: workflow.clone(),
                    task_id: ctx.task_id.clone(),
                    args: report.args.to_string(),
                    args_redacted: args_redacted.to_string(),
                    args_sha256: args_sha256.clone(),
                    rule,
                    requester: ctx.principal.clone(),
                    created_ms: time_ms,
                    expires_ms: time_ms.saturating_add(self.approval_ttl_ms.load(Ordering::SeqCst)),
                    decided_by: None,
                    decided_ms: None,
                    reason: None,
                    callback_url: ctx.callback_url.clone(),
                });
            }
            // The caller's key now answers with this response.
            if let Some(key) = &ctx.idempotency_key {
                batch.idempotency.push(IdempotencyDone {
                    tenant: chain.clone(),
                    key: key.clone(),
                    invocation_id: response.invocation_id.clone(),
                    response: serde_json::to_string(response).unwrap_or_default(),
                });
            }
            // A fresh success of a cacheable function: keep it (never an
            // error, never a WIT `result`'s `err`).
            if let Some(s) = state
                && let (Some(key), Some(cache), false) =
                    (&s.cache_key, &s.settings.cache, s.cache_hit)
                && let Some(result) = response.result.as_ref()
                && error.is_none()
                && !is_err_result(result)
            {
                batch.cache.push(CacheEntry {
                    tenant: chain.clone(),
                    key: key.clone(),
                    result: result.to_string(),
                    expires_ms: time_ms
                        .saturating_add(i64::try_from(cache.ttl.as_millis()).unwrap_or(i64::MAX)),
                });
            }
            // An approved call's outcome goes to its callback (delivered from
            // the outbox once this commits).
            if let (Some(approval_id), Some(url)) = (&ctx.approval, &ctx.callback_url) {
                batch.outbox.push(OutboxMessage::new(
                    &chain,
                    &response.invocation_id,
                    approval_id,
                    url,
                    time_ms,
                ));
            }
            self.audit.commit(records, batch).await?;
            if let Some(c) = &charged {
                observe::metrics::spend(
                    &chain,
                    workflow.as_deref().unwrap_or("*"),
                    c.tool_calls,
                    c.outbound_calls,
                    c.cost_micro_usd,
                );
            }
            Ok(())
        })
    }
}

/// The workflow a call falls under: the one it names, else the policy's
/// default.
fn workflow_in(policy: &Policy, requested: Option<&str>) -> Option<String> {
    requested
        .map(str::to_string)
        .or_else(|| policy.default_workflow().map(str::to_string))
}

/// The budget scope of a call context under its resolved workflow.
fn scope_of(context: &super::CallContext, workflow: Option<&str>) -> Scope {
    Scope {
        tenant: context.tenant.clone(),
        workflow: workflow.unwrap_or("*").to_string(),
        task: context.task_id.clone(),
    }
}

/// What a cache hit costs: the function's `hit_cost_usd`, nothing else.
fn hit_spend(settings: &ToolSettings) -> Spend {
    Spend {
        cost_micro_usd: settings
            .cache
            .as_ref()
            .map_or(0, |c| crate::budget::micro_usd(c.hit_cost_usd)),
        ..Spend::default()
    }
}

/// Whether a result is a WIT `result`'s error case: `{"err": …}`.
fn is_err_result(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("err"))
}
