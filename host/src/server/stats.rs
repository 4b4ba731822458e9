//! `/v1/stats`: the essay's reports ([`crate::stats`]) for the caller's
//! tenant.

use super::App;
use super::auth::Caller;
use super::problem::{ApiError, rejection};
use super::records::time_param;
use crate::keys::Role;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use std::sync::Arc;

/// Who may read reports: whoever may read invocation records.
pub const READERS: &[Role] = &[Role::Invoke, Role::Audit, Role::Approve];

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Only this tool.
    pub tool: Option<String>,
    /// Only this function (its full name, e.g. `crm/divide`).
    pub function: Option<String>,
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Start of the range (inclusive): Unix ms, `2026-11-26`,
    /// `2026-11-26T10:00:00Z`, or a period ago (`24h`, `7d`). Default:
    /// 24 hours before `until`.
    pub since: Option<String>,
    /// End of the range (exclusive), same forms. Default: now.
    pub until: Option<String>,
}

impl StatsQuery {
    /// The report query, with the times parsed.
    pub fn query(self) -> Result<crate::stats::Query, ApiError> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(crate::stats::Query {
            since_ms: time_param("since", nonempty(self.since).as_deref())?,
            until_ms: time_param("until", nonempty(self.until).as_deref())?,
            tool: nonempty(self.tool),
            function: nonempty(self.function),
            workflow: nonempty(self.workflow),
        })
    }
}

/// Per tool and function: count, failure rate by error kind, p50/p95/p99
/// wall time and cost; per task: invocations, calls, cost and model tokens;
/// a time series; with the range and sample size stated.
#[utoipa::path(get, path = "/v1/stats", operation_id = "get_stats", tag = "invocations",
    params(StatsQuery),
    responses(
        (status = 200, description = "The report: `range` {since_ms, until_ms, since, until}, `sample_size`, `truncated` (more than 100000 invocations matched: the newest were counted, from `covered_since_ms`), `totals`, `tools` [{tool, count, ...}], `functions` [{tool, function, count, ok, error, refused, unfinished, failure_rate, failures [{kind, count, rate}], latency_ms {samples, p50, p95, p99, max}, cost_micro_usd, cost_usd}], `tasks` [{task_id, workflow, invocations, calls, failures, cost_usd, first_ms, last_ms, ledger {tool_calls, cost_usd, input_tokens, output_tokens} | null}], `task_count`, `series` {bucket_ms, buckets [{start_ms, count, failures}]}", body = Object),
        (status = 400, description = "A bad time, or a range that is empty or longer than 366 days", body = super::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<crate::stats::Report>, ApiError> {
    caller.require_any(READERS)?;
    let Query(q) = query.map_err(rejection)?;
    let report = crate::stats::report(
        app.storage.as_ref(),
        caller.tenant(),
        &q.query()?,
        crate::clock::now_ms(),
    )
    .await?;
    Ok(Json(report))
}
