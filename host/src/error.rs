//! Errors with stable, machine-readable kinds.
//!
//! [`ErrorKind`]'s snake_case names are a public contract: the CLI's `--json`
//! output and the HTTP API report them, and scripts match on them. Add kinds;
//! never rename or remove one.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a stable machine-readable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The arguments do not match the function's parameter types.
    InvalidArgs,
    /// The tool has no such exported function (or the name is ambiguous).
    UnknownFunction,
    /// The file is not a usable tool component: not a component, an import
    /// the host cannot provide, an unsupported type, unreadable.
    InvalidComponent,
    /// The invocation used up its fuel (CPU) budget.
    FuelExhausted,
    /// The invocation ran past its wall-clock deadline.
    Timeout,
    /// The guest tried to grow its linear memory past the cap.
    MemoryLimit,
    /// The guest overflowed the wasm stack.
    StackOverflow,
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access.
    Trap,
    /// The result is larger than the output cap.
    OutputTooLarge,
    /// The guest failed after the host refused it a capability.
    CapabilityDenied,
    /// Policy refused the invocation.
    PolicyDenied,
    /// A policy file is malformed (names its file, line and field).
    InvalidPolicy,
    /// Policy requires a human's approval before the invocation may run.
    ApprovalRequired,
    /// A budget limit would be exceeded.
    BudgetExceeded,
    /// No such tool (or version) is registered for the caller's tenant.
    NotFound,
    /// The tool is registered but disabled by an operator.
    ToolDisabled,
    /// The request conflicts with stored state (e.g. an immutable version
    /// registered again with other bytes).
    Conflict,
    /// A fault in the host itself, not the guest's or caller's.
    Internal,
    /// No API key, or one that is not valid (HTTP 401).
    Unauthenticated,
    /// The API key lacks the role this needs, or the request asks for what
    /// this server's configuration refuses, such as a callback URL outside
    /// `--callback-allow` (HTTP 403).
    Forbidden,
    /// The request itself is malformed: its JSON, a parameter (HTTP 400).
    InvalidRequest,
    /// The request body is larger than the server accepts (HTTP 413).
    PayloadTooLarge,
    /// The server is at its concurrency and queue limits; retry later (HTTP 503).
    Overloaded,
    /// An `Idempotency-Key` reused with a different request (HTTP 422).
    IdempotencyKeyReused,
    /// The first request with this `Idempotency-Key` is still running (HTTP 409).
    IdempotencyInProgress,
    /// A human denied the approval this invocation waited for.
    ApprovalDenied,
    /// Nobody decided the approval this invocation waited for in time.
    ApprovalExpired,
    /// The host running the invocation stopped (it died or hung) before the
    /// invocation finished: it may have had effects, and it is not run again
    /// automatically. Its reservation was settled at the worst case.
    HostLost,
    /// A backend the host needs (its database) cannot be reached or refused
    /// the operation for now: retrying later can help (HTTP 503).
    Unavailable,
    /// Stored data is malformed (the database was damaged or edited by
    /// hand): retrying cannot help; an operator must look (HTTP 500).
    Corrupt,
    /// The caller's tenant holds its share of the server (request slots and
    /// queue, or body memory) while others may still be served; retry
    /// later (HTTP 429).
    TenantOverloaded,
    /// The requester withdrew the approval request before anyone decided
    /// it (an MCP client's `tasks/cancel`): the call never ran.
    ApprovalWithdrawn,
}

impl ErrorKind {
    /// The stable snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgs => "invalid_args",
            ErrorKind::UnknownFunction => "unknown_function",
            ErrorKind::InvalidComponent => "invalid_component",
            ErrorKind::FuelExhausted => "fuel_exhausted",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::StackOverflow => "stack_overflow",
            ErrorKind::Trap => "trap",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::CapabilityDenied => "capability_denied",
            ErrorKind::PolicyDenied => "policy_denied",
            ErrorKind::InvalidPolicy => "invalid_policy",
            ErrorKind::ApprovalRequired => "approval_required",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ToolDisabled => "tool_disabled",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Internal => "internal",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorKind::IdempotencyInProgress => "idempotency_in_progress",
            ErrorKind::ApprovalDenied => "approval_denied",
            ErrorKind::ApprovalExpired => "approval_expired",
            ErrorKind::HostLost => "host_lost",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::TenantOverloaded => "tenant_overloaded",
            ErrorKind::ApprovalWithdrawn => "approval_withdrawn",
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Overloaded | ErrorKind::Unavailable)
    }

    /// Whether the guest ran and failed (as opposed to never running).
    pub fn is_sandbox_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::FuelExhausted
                | ErrorKind::Timeout
                | ErrorKind::MemoryLimit
                | ErrorKind::StackOverflow
                | ErrorKind::Trap
                | ErrorKind::OutputTooLarge
                | ErrorKind::CapabilityDenied
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable [`ErrorKind`], a message for people, and (when
/// another error caused it) that cause.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// What caused it (a database driver's error, an I/O error): kept for
    /// logs and `source()` chains, never serialized.
    #[serde(skip)]
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// This error, caused by `source`.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    pub fn invalid_args(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgs, message)
    }

    pub fn invalid_component(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidComponent, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Stored data that does not parse: the database was damaged or edited.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The JSON shape of an [`Error`], for OpenAPI.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorSchema {
    /// A stable machine-readable kind (`fuel_exhausted`, `policy_denied`, …).
    kind: String,
    /// What went wrong, for people.
    message: String,
}
