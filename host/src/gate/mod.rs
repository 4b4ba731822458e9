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
//!   response is not returned before it resolves.
//!
//! Invariant: nothing reaches the sandbox, and nothing leaves it, except
//! through these three calls.

use crate::error::Result;
use crate::tool::FunctionInfo;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// Who is calling, on whose behalf, as part of what.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallContext {
    pub tenant: Option<String>,
    pub workflow: Option<String>,
    pub task_id: Option<String>,
}

/// An invocation about to run, as the gate sees it.
pub struct InvocationRequest<'a> {
    /// The tool's name (registered name, or the file name for `host run`).
    pub tool: &'a str,
    pub function: &'a FunctionInfo,
    pub args: &'a serde_json::Value,
    pub context: &'a CallContext,
}

/// A directory the guest may see.
#[derive(Debug, Clone, Serialize)]
pub struct Preopen {
    pub host_path: std::path::PathBuf,
    pub guest_path: String,
    pub writable: bool,
}

/// Capabilities granted to one invocation. Empty by default: no files, no
/// environment, no name lookups. (Outbound HTTP and socket addresses are
/// decided per call by [`Gate::outbound`].)
#[derive(Debug, Clone, Default, Serialize)]
pub struct Grants {
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub ip_name_lookup: bool,
}

/// The gate's permission for one invocation to run.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub grants: Grants,
    /// The rule that admitted the invocation.
    pub rule: String,
}

/// An outbound use of a capability by a running guest.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "capability", rename_all = "snake_case")]
pub enum OutboundCall {
    Http {
        method: String,
        scheme: String,
        host: String,
        port: u16,
        /// Path without the query string (queries may carry secrets).
        path: String,
    },
    Socket {
        addr: SocketAddr,
        /// `tcp-bind`, `tcp-listen`, `tcp-accept`, `tcp-connect`, `udp-bind`, `udp-send`, `udp-receive`.
        operation: &'static str,
    },
}

impl OutboundCall {
    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        match self {
            OutboundCall::Http {
                method,
                scheme,
                host,
                port,
                path,
            } => format!("HTTP {method} {scheme}://{host}:{port}{path}"),
            OutboundCall::Socket { addr, operation } => format!("socket {operation} {addr}"),
        }
    }
}

/// The gate's answer to an outbound call.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The rule that decided.
    pub rule: String,
}

/// What the gate learns when an invocation is over.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationReport<'a> {
    pub tool: &'a str,
    pub function: &'a str,
    pub context: &'a CallContext,
    /// `None` when the invocation succeeded.
    pub error: Option<&'a crate::Error>,
    pub usage: &'a crate::invoke::Usage,
    pub outbound: &'a [crate::capability::CapabilityEvent],
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The one gate every invocation and every outbound call passes.
pub trait Gate: Send + Sync + 'static {
    /// Policy, then budget: may this invocation run, and with what grants?
    fn admit(&self, request: &InvocationRequest<'_>) -> Result<Admission>;

    /// Decide one outbound call of a running invocation.
    fn outbound(&self, admission: &Admission, call: &OutboundCall) -> Verdict;

    /// Settle the budget and record the invocation durably.
    fn complete<'a>(
        &'a self,
        admission: &'a Admission,
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
    fn admit(&self, _request: &InvocationRequest<'_>) -> Result<Admission> {
        Ok(Admission {
            grants: Grants::default(),
            rule: Self::RULE.to_string(),
        })
    }

    fn outbound(&self, _admission: &Admission, _call: &OutboundCall) -> Verdict {
        Verdict {
            allowed: false,
            rule: Self::RULE.to_string(),
        }
    }

    fn complete<'a>(
        &'a self,
        _admission: &'a Admission,
        _report: &'a InvocationReport<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
