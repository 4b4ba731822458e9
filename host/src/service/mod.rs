//! The invocation service: the one entry point every transport uses.
//!
//! `POST /v1/tools/.../invoke`, `host run`, an approver's decision and MCP's
//! `tools/call` are thin adapters that build a [`Request`] and turn the
//! [`Answer`] into their own wire format. The service owns the flow:
//!
//! ```text
//! Request ─▶ resolve the function (once) ─▶ canonical arguments (once)
//!         ─▶ Idempotency-Key: replay (audited) / 422 / 409 / run
//!         ─▶ Host::invoke_prepared (gate → sandbox → gate), on its own task
//!         ─▶ Answer
//! ```
//!
//! Invariants:
//! * The function is resolved and the arguments are made canonical exactly
//!   once; policy, the cache key, the idempotency fingerprint, the records
//!   and the guest all see that one [`crate::value::CanonicalArgs`].
//! * An invocation runs on a task of the service's tracker: it finishes and
//!   is recorded whatever happens to the caller that asked for it.
//! * Every invocation this host runs is in its [`crate::lease::Live`] set
//!   while it runs, so its row's lease is renewed ([`lifecycle`]); when its
//!   task ends without recording an end (an `internal` failure, a panic) the
//!   row is handed to the reaper at once. Nothing is run twice
//!   automatically.
//! * Status codes and problem documents are the HTTP adapter's business;
//!   here errors are [`Error`]s with kinds.

pub mod lifecycle;
pub mod outbox;

use crate::audit::{AuditLog, canonical};
use crate::error::{Error, ErrorKind, Result};
use crate::gate::CallContext;
use crate::idempotency;
use crate::ids::{InvocationId, TenantId};
use crate::invoke::{Call, Host, InvocationResponse, Outcome, prepare};
use crate::lease::Instance;
use crate::limits::Limits;
use crate::observe;
use crate::storage::NewRun;
use crate::tool::Tool;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// One request to run a function, from any transport.
#[derive(Clone)]
pub struct Request {
    pub tool: Arc<Tool>,
    /// The function as the caller named it (`lookup-order`, `crm/divide`,
    /// `lookup_order`); `None`: the tool's only function.
    pub function: Option<String>,
    /// The arguments as sent: a JSON object keyed by parameter name.
    pub args: Value,
    /// The limits asked for (the policy may set others).
    pub limits: Limits,
    pub context: CallContext,
    /// Held until the invocation ends, even if the caller goes away first
    /// (the HTTP adapter's request slot: an invocation keeps using it).
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// What the service answers.
pub enum Answer {
    /// The call was handled now: it ran, was refused, or waits for approval
    /// (recorded in every case, unless the outcome is an `internal` error).
    Done(Box<Outcome>),
    /// The Idempotency-Key already has an answer: this one, again (nothing
    /// ran; the replay is audited).
    Replayed(Box<InvocationResponse>),
}

impl Answer {
    /// The answer as the API reports it.
    pub fn response(&self) -> InvocationResponse {
        match self {
            Answer::Done(o) => o.response(),
            Answer::Replayed(r) => (**r).clone(),
        }
    }
}

/// What the store-backed parts of the flow (Idempotency-Keys, leases, the
/// reaper, the outbox) need: a governed host's audit trail and its store.
#[derive(Clone)]
pub struct Keys {
    pub audit: Arc<AuditLog>,
    /// How long Idempotency-Key answers are kept.
    pub retention: Duration,
}

/// The service.
pub struct InvocationService {
    host: Arc<Host>,
    keys: Option<Keys>,
    instance: Arc<Instance>,
    tracker: TaskTracker,
    /// Where approval callbacks may go (checked again when sent).
    callbacks: std::sync::Mutex<crate::callback::Callbacks>,
    /// When the reaper last swept.
    swept: std::sync::Mutex<i64>,
}

impl InvocationService {
    /// A service over `host`, whose invocations `instance` owns (the
    /// governed gate's instance); `keys` enables Idempotency-Keys and the
    /// lifecycle's store-backed parts.
    pub fn new(host: Arc<Host>, keys: Option<Keys>, instance: Arc<Instance>) -> InvocationService {
        InvocationService {
            host,
            keys,
            instance,
            tracker: TaskTracker::new(),
            callbacks: Default::default(),
            swept: std::sync::Mutex::new(0),
        }
    }

    /// This host instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// The store-backed parts, if this service has them.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The tasks invocations run on (shutdown waits for them).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Handle one request, on its own task.
    pub async fn invoke(self: &Arc<Self>, request: Request) -> Result<Answer> {
        let me = self.clone();
        self.tracker
            .spawn(async move {
                let hold = request.hold.clone();
                let answer = me.flow(request).await;
                drop(hold);
                answer
            })
            .await
            .map_err(|e| Error::internal(format!("the invocation task failed: {e}")))?
    }

    /// Run a call a human approved, under the invocation id that waited.
    pub async fn run_approved(
        self: &Arc<Self>,
        invocation_id: InvocationId,
        tool: Arc<Tool>,
        call: Call,
    ) -> Result<Outcome> {
        let host = self.host.clone();
        let live = self.instance.live().clone();
        self.tracker
            .spawn(async move {
                let started = std::time::Instant::now();
                let span = invocation_span(&tool, &call.function, &call.context);
                let running = live.enter(&invocation_id);
                let outcome = span
                    .run(async {
                        match prepare(&tool, &call.function, &call.args) {
                            Ok(p) => host.invoke_prepared(invocation_id, &tool, &p, &call).await,
                            Err((function, e)) => {
                                host.refuse_unprepared(invocation_id, &tool, &function, &call, e)
                                    .await
                            }
                        }
                    })
                    .await;
                running.ended(outcome.error_kind() != Some(ErrorKind::Internal));
                observed(
                    &span,
                    &call.function,
                    &call.context.tenant,
                    &outcome,
                    started,
                );
                outcome
            })
            .await
            .map_err(|e| Error::internal(format!("the invocation task failed: {e}")))
    }

    /// [`InvocationService::flow_in_span`] in the invocation's span, with
    /// its metrics.
    async fn flow(&self, request: Request) -> Result<Answer> {
        let started = std::time::Instant::now();
        let function = request.function.clone().unwrap_or_default();
        let span = invocation_span(&request.tool, &function, &request.context);
        let tenant = request.context.tenant.clone();
        let answer = span.run(self.flow_in_span(request)).await;
        match &answer {
            Ok(Answer::Done(outcome)) => observed(&span, &function, &tenant, outcome, started),
            Ok(Answer::Replayed(response)) => {
                if span.is_on() {
                    span.set("toolhost.invocation_id", response.invocation_id.to_string());
                }
                span.set("toolhost.outcome", "replayed");
                observe::metrics::replay(&tenant, response);
            }
            Err(e) => {
                span.set("toolhost.error_kind", e.kind.as_str());
                span.error(e.kind.as_str());
            }
        }
        span.end();
        answer
    }

    async fn flow_in_span(&self, request: Request) -> Result<Answer> {
        let Request {
            tool,
            function,
            args,
            limits,
            context,
            hold: _,
        } = request;
        let function = match function {
            Some(f) => f,
            None => only_function(&tool)?,
        };
        let call = Call {
            function,
            args,
            limits,
            context,
        };
        let prepared = prepare(&tool, &call.function, &call.args);
        // The fingerprint of what will run: the resolved function and the
        // canonical arguments (a request that cannot be prepared: as sent).
        let (function_name, fingerprint_args) = match &prepared {
            Ok(p) => (p.function.name.clone(), &p.args.json),
            Err((f, _)) => (f.clone(), &call.args),
        };
        let id = InvocationId::generate();
        // Renewed while it runs; handed to the reaper if this task ends
        // without recording its end.
        let running = self.instance.live().enter(&id);
        if let Some(key) = &call.context.idempotency_key {
            let keys = self.keys.as_ref().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidRequest,
                    "idempotency keys need a governed host with a data dir",
                )
            })?;
            let fingerprint = idempotency::fingerprint(
                tool.name(),
                &function_name,
                fingerprint_args,
                call.context.workflow.as_deref(),
                call.context.task_id.as_deref(),
                call.context.callback_url.as_deref(),
            );
            let tenant = call.context.tenant.clone();
            let run = NewRun {
                id: id.clone(),
                tenant: tenant.clone(),
                tool: tool.name().to_string(),
                function: function_name.clone(),
                version: tool.version().map(str::to_string),
                workflow: call.context.workflow.clone(),
                task_id: call.context.task_id.clone(),
                principal: call.context.principal.clone(),
                transport: call.context.transport().to_string(),
                idempotency_key: Some(key.clone()),
                created_ms: self.instance.now_ms(),
                owner: self.instance.id.clone(),
                lease_until: self.instance.lease_until(),
            };
            // Boxed, like the replay's audit append below: the keyed path's
            // futures would otherwise size (and be copied with) every
            // invocation's.
            let begun = Box::pin(idempotency::begin(
                keys.audit.storage().as_ref(),
                key,
                &fingerprint,
                keys.retention,
                run,
            ))
            .await;
            let begun = match begun {
                Ok(b) => b,
                Err(e) => {
                    running.ended(true);
                    return Err(e);
                }
            };
            if let idempotency::Begin::Replay(response) = begun {
                running.ended(true);
                let time_ms = self.instance.now_ms();
                Box::pin(keys.audit.append(vec![(
                    tenant.to_string(),
                    time_ms,
                    json!({
                        "type": "idempotent_replay",
                        "invocation_id": response.invocation_id,
                        "idempotency_key_sha256": canonical::sha256_hex(key.as_bytes()),
                        "principal": call.context.principal,
                        "time_ms": time_ms,
                    }),
                )]))
                .await?;
                return Ok(Answer::Replayed(response));
            }
        }
        let outcome = match &prepared {
            Ok(p) => self.host.invoke_prepared(id, &tool, p, &call).await,
            Err((function, e)) => {
                self.host
                    .refuse_unprepared(id, &tool, function, &call, e.clone())
                    .await
            }
        };
        // Recorded, unless the host failed to record it (`internal`): then
        // its row, if it has one, is finished by the reaper at once.
        running.ended(outcome.error_kind() != Some(ErrorKind::Internal));
        Ok(Answer::Done(Box::new(outcome)))
    }
}

/// The span an invocation runs in (see [`observe::trace`]).
fn invocation_span(tool: &Tool, function: &str, context: &CallContext) -> observe::trace::Span {
    if !observe::trace::enabled() {
        return observe::trace::Span::none();
    }
    use observe::trace::attr;
    let mut attributes = vec![
        attr("toolhost.tool", tool.name().to_string()),
        attr("toolhost.tenant", context.tenant.to_string()),
        attr("toolhost.transport", context.transport().to_string()),
    ];
    if let Some(v) = tool.version() {
        attributes.push(attr("toolhost.version", v.to_string()));
    }
    if let Some(w) = &context.workflow {
        attributes.push(attr("toolhost.workflow", w.clone()));
    }
    if let Some(t) = &context.task_id {
        attributes.push(attr("toolhost.task_id", t.clone()));
    }
    if !function.is_empty() {
        attributes.push(attr("toolhost.function", function.to_string()));
    }
    observe::trace::invocation(
        tool.name(),
        function,
        context.traceparent.as_deref(),
        attributes,
    )
}

/// An invocation's outcome, into its span and the metrics. `named`: the
/// function the span was started with (empty: not known then); the span is
/// renamed only when the call resolved to another.
fn observed(
    span: &observe::trace::Span,
    named: &str,
    tenant: &TenantId,
    outcome: &Outcome,
    started: std::time::Instant,
) {
    if span.is_on() {
        use observe::trace::attr;
        if outcome.function != named {
            span.rename(format!("invoke {}/{}", outcome.tool, outcome.function));
            span.set("toolhost.function", outcome.function.clone());
        }
        span.set_all([
            attr("toolhost.invocation_id", outcome.invocation_id.to_string()),
            attr("toolhost.outcome", outcome.status.as_str()),
        ]);
    }
    if let Some(e) = &outcome.error {
        span.set("toolhost.error_kind", e.kind.as_str());
        if outcome.status == crate::record::Status::Error {
            span.error(e.kind.as_str());
        }
    }
    observe::metrics::invocation(
        tenant,
        &observe::metrics::Invocation {
            tool: &outcome.tool,
            function: &outcome.function,
            status: outcome.status,
            kind: outcome.error_kind(),
            cached: outcome.cached,
            usage: &outcome.usage,
        },
        started.elapsed(),
    );
    for event in &outcome.outbound {
        match &event.call {
            crate::gate::OutboundCall::Http { host, .. } => {
                observe::metrics::outbound(tenant, host, event.allowed)
            }
            crate::gate::OutboundCall::Socket { addr, .. } => {
                observe::metrics::outbound(tenant, &addr.ip().to_string(), event.allowed)
            }
        }
    }
}

/// The name of a tool's only function, or an error listing them all.
fn only_function(tool: &Tool) -> Result<String> {
    let functions = &tool.catalog().functions;
    if functions.len() == 1 {
        return Ok(functions[0].name.clone());
    }
    let names: Vec<String> = functions
        .iter()
        .map(|f| crate::schema::llm_name(tool.name(), f))
        .collect();
    Err(Error::new(
        ErrorKind::UnknownFunction,
        format!(
            "tool `{}` has {} functions; invoke one: {}",
            tool.name(),
            functions.len(),
            names.join(", ")
        ),
    ))
}
