//! What an invocation answered, as a core type: the API's answer and what
//! the invocation record stores.
//!
//! This module sits below the gate and the invocation service (both read
//! and write these types) and imports neither. The stored form is
//! versioned: [`RECORD_VERSION`] is written with every record, and readers
//! accept every version up to it (fields are added, never renamed).

use crate::error::Error;
use crate::ids::{ApprovalId, InvocationId};
use serde::{Deserialize, Serialize};

/// The version of the stored record format.
pub const RECORD_VERSION: i64 = 2;

/// Resources an invocation used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub fuel: u64,
    pub wall_ms: u64,
    pub memory_peak_bytes: u64,
}

/// Where an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The function ran and returned (a WIT `result`'s `err` is data, and
    /// still `ok`).
    Ok,
    /// The function ran and failed: fuel, timeout, memory, trap, output cap.
    Error,
    /// It never ran: invalid arguments, unknown function, policy, budget.
    Refused,
    /// It waits for a human's approval.
    PendingApproval,
    /// It is running now (a record read while it runs; never an answer).
    Running,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::Error,
        Status::Refused,
        Status::PendingApproval,
        Status::Running,
    ];

    /// The status a stored name means (`None`: no status has that name).
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether it is where an invocation ends (`ok`, `error`, `refused`).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Ok | Status::Error | Status::Refused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Refused => "refused",
            Status::PendingApproval => "pending_approval",
            Status::Running => "running",
        }
    }
}

/// What the HTTP API answers for an invocation, and what its record keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationResponse {
    #[schema(value_type = String)]
    pub invocation_id: InvocationId,
    pub status: Status,
    pub tool: String,
    /// The function's full name (`crm/divide`).
    pub function: String,
    /// The registered version that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The function's result (`status: ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::ErrorSchema>)]
    pub error: Option<Error>,
    pub usage: Usage,
    /// With `status: pending_approval`: the approval request to decide
    /// (`/v1/approvals/{approval_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub approval_id: Option<ApprovalId>,
    /// True when the result came from the result cache (nothing ran).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// A stored response (a waiting invocation's), ended with `error`: the
/// status becomes `status`, the error is set, nothing else changes (the
/// record's own fields — arguments, decision, charge — are kept). A
/// response that does not parse is `corrupt`.
pub fn ended(response: &str, status: Status, error: Error) -> crate::Result<String> {
    let corrupt = |e: serde_json::Error| Error::corrupt(format!("stored invocation record: {e}"));
    let mut v: serde_json::Value = serde_json::from_str(response).map_err(corrupt)?;
    // It must be a response, whatever else it holds.
    serde_json::from_value::<InvocationResponse>(v.clone()).map_err(corrupt)?;
    v["status"] = serde_json::to_value(status).map_err(corrupt)?;
    v["error"] = serde_json::to_value(&error).map_err(corrupt)?;
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn ending_a_record_keeps_its_own_fields() {
        let stored = serde_json::json!({
            "invocation_id": "inv_1", "status": "pending_approval", "tool": "t",
            "function": "f", "usage": {"fuel": 0, "wall_ms": 0, "memory_peak_bytes": 0},
            "approval_id": "apr_1",
            "args": {"amount_usd": 120}, "decision": {"effect": "allow", "rule": "r"},
        });
        let ended = ended(
            &stored.to_string(),
            Status::Refused,
            Error::new(ErrorKind::ApprovalDenied, "no"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ended).unwrap();
        assert_eq!(v["status"], "refused");
        assert_eq!(v["error"]["kind"], "approval_denied");
        assert_eq!(v["args"]["amount_usd"], 120);
        assert_eq!(v["decision"]["rule"], "r");
        assert!(super::ended("{\"status\": 1}", Status::Refused, Error::internal("x")).is_err());
    }
}
