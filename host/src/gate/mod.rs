//! The gate: policy → budget → audit, around every invocation and every
//! outbound call a tool makes.
//!
//! Data flows one way through [`crate::invoke::Host::invoke`]:
//!
//! ```text
//! request ─▶ Gate::admit ─▶ sandbox (each outbound call ─▶ Gate::outbound) ─▶ Gate::complete ─▶ response
//! ```
//!
//! * [`Gate::admit`] decides whether the invocation may run (policy), reserves
//!   what it may spend (budget) and returns the capabilities it is granted.
//! * [`Gate::outbound`] decides each HTTP request or socket address the guest
//!   uses while it runs. A denial is an ordinary error for the guest.
//! * [`Gate::complete`] settles the budget and appends the audit record; the
//!   response is not returned before it resolves. It is called for refused
//!   invocations too (with no admission), so refusals are audited.
//!
//! Invariant: nothing reaches the sandbox, and nothing leaves it, except
//! through these three calls.

pub mod governed;

use crate::capability::CapabilityEvent;
use crate::error::Result;
use crate::ids::{ApprovalId, InvocationId, TenantId};
use crate::limits::Limits;
use crate::secrets::Secret;
use crate::tool::FunctionInfo;
use serde::Serialize;
use std::any::Any;
use std::sync::Arc;

pub use governed::Governed;

/// Who is calling, on whose behalf, as part of what.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallContext {
    /// Whose call it is (`_`, the default, for calls made without one).
    pub tenant: TenantId,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
    /// The caller's identity (an API key id; `cli` for `host run`).
    pub principal: Option<String>,
    /// The caller's `Idempotency-Key`: the gate finishes the key with the
    /// answer (in the audit transaction) and derives one for each outbound
    /// HTTP request.
    pub idempotency_key: Option<String>,
    /// Set only by the host when it runs an invocation a human approved
    /// (the approval's id): policy sees `context.approved == true`.
    pub approval: Option<ApprovalId>,
    /// Where to POST the outcome if the call waits for approval (checked
    /// against the server's allowlist before it gets here).
    pub callback_url: Option<String>,
    /// How the call arrived: `http`, `mcp`, `cli`, `approval` (recorded).
    pub transport: Option<String>,
    /// The caller's W3C trace context (`traceparent`, validated by the
    /// transport: HTTP header on `/v1`, `_meta` on MCP): the invocation's
    /// logs and spans continue the caller's trace.
    pub traceparent: Option<String>,
}

impl CallContext {
    /// How the call arrived (`http` unless said otherwise).
    pub fn transport(&self) -> &str {
        self.transport.as_deref().unwrap_or("http")
    }
}

/// An invocation about to run, as the gate sees it.
pub struct InvocationRequest<'a> {
    pub invocation_id: &'a InvocationId,
    /// The tool's name (registered name, or the file name for `host run`).
    pub tool: &'a str,
    /// The registered version (none for a file run with `host run`).
    pub version: Option<&'a str>,
    /// The SHA-256 of the tool's component bytes (registered tools only).
    pub digest: Option<&'a str>,
    pub function: &'a FunctionInfo,
    pub args: &'a serde_json::Value,
    pub context: &'a CallContext,
    /// The limits the caller asked for.
    pub limits: &'a Limits,
}

/// The gate's permission for one invocation to run.
#[derive(Clone, Default)]
pub struct Admission {
    pub grants: Grants,
    /// Every secret value the host may inject into this invocation (granted
    /// environment, header values, substitutions): scrubbed from all it
    /// produces before anyone sees or stores it.
    pub injected: Vec<Secret>,
    /// The rule that admitted the invocation.
    pub rule: String,
    /// Limits as the gate set them (a policy may override the caller's).
    pub limits: Option<Limits>,
    /// The gate's own per-invocation state.
    pub state: Option<Arc<dyn Any + Send + Sync>>,
    /// A result the gate has on file for this exact call (a cache hit): the
    /// sandbox is skipped and this is the result.
    pub cached: Option<serde_json::Value>,
}

/// What the gate learns when an invocation is over.
pub struct InvocationReport<'a> {
    pub context: &'a CallContext,
    pub args: &'a serde_json::Value,
    /// What the caller is answered: id, status, tool, function, version,
    /// result or error, usage.
    pub response: &'a crate::record::InvocationResponse,
    pub outbound: &'a [CapabilityEvent],
}

pub use crate::BoxFuture;
pub use crate::capability::{Grants, HttpPermit, OutboundCall, Preopen, Verdict};

/// The one gate every invocation and every outbound call passes.
pub trait Gate: Send + Sync + 'static {
    /// Policy, then budget: may this invocation run, and with what grants?
    fn admit<'a>(&'a self, request: &'a InvocationRequest<'a>) -> BoxFuture<'a, Result<Admission>>;

    /// Decide one outbound call of a running invocation.
    fn outbound(&self, admission: &Admission, call: &OutboundCall) -> Verdict;

    /// Settle the budget and record the invocation durably. `admission` is
    /// `None` when [`Gate::admit`] refused it.
    fn complete<'a>(
        &'a self,
        admission: Option<&'a Admission>,
        report: &'a InvocationReport<'a>,
    ) -> BoxFuture<'a, Result<()>>;
}

/// The gate of a bare sandbox: every invocation is admitted with no grants,
/// every outbound call is denied, nothing is recorded. This is `host run`'s
/// gate when no policy is given.
#[derive(Debug, Default, Clone, Copy)]
pub struct SandboxOnly;

impl SandboxOnly {
    pub const RULE: &'static str = "sandbox-only: nothing is granted without a policy";
}

impl Gate for SandboxOnly {
    fn admit<'a>(
        &'a self,
        _request: &'a InvocationRequest<'a>,
    ) -> BoxFuture<'a, Result<Admission>> {
        Box::pin(async {
            Ok(Admission {
                rule: Self::RULE.to_string(),
                ..Admission::default()
            })
        })
    }

    fn outbound(&self, _admission: &Admission, _call: &OutboundCall) -> Verdict {
        Verdict::deny(Self::RULE)
    }

    fn complete<'a>(
        &'a self,
        _admission: Option<&'a Admission>,
        _report: &'a InvocationReport<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
