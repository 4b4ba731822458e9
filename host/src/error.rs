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
        }
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

/// An error with a stable [`ErrorKind`] and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
