//! The console's pages and actions. Each checks its rule ([`require`] with
//! the API route it mirrors) and reads within the caller's tenant, as the
//! API handlers do; actions call the functions the API calls.

use super::view::{
    self, ago, csrf, enc, page, pct, pretty, query, see_other, status, text, time, usd,
};
use super::{Console, MAX_EXPORT, Mirror, PageError, Session, may, require, session};
use crate::approvals::{self, Verdict};
use crate::budget::Metric;
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind};
use crate::ids::{LedgerScope, Window};
use crate::keys::Role;
use crate::storage::{ApprovalRecord, InvocationFilter};
use crate::storage::{ApprovalStatus, Status};
use axum::Extension;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

type Page = Result<Response, PageError>;

const APPROVALS: Mirror = Mirror::Api("GET", "/v1/approvals");
const DECIDE: Mirror = Mirror::Api("POST", "/v1/approvals/{id}/approve");
const INVOCATIONS: Mirror = Mirror::Api("GET", "/v1/invocations");
const TOOLS: Mirror = Mirror::Api("GET", "/v1/tools");
const DEPLOY: Mirror = Mirror::Api("POST", "/v1/tools/{tool}/deploy");
const DISABLE: Mirror = Mirror::Api("POST", "/v1/tools/{tool}/disable");
const ENABLE: Mirror = Mirror::Api("POST", "/v1/tools/{tool}/enable");
const BUDGETS: Mirror = Mirror::Api("GET", "/v1/tasks/{task_id}/usage");
const STATS: Mirror = Mirror::Api("GET", "/v1/stats");
const AUDIT: Mirror = Mirror::Roles(&[Role::Audit]);

fn bad_request(message: impl Into<String>) -> PageError {
    PageError::from(Error::new(ErrorKind::InvalidRequest, message))
}

fn not_found_error(what: String) -> PageError {
    PageError::from(Error::new(ErrorKind::NotFound, what))
}

/// Form inputs are text: an empty field is no value.
fn given(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------- sign-in

/// `/console/`: the first page the key may see.
pub async fn home(Extension(session): Extension<Session>) -> Response {
    let first = super::PAGES
        .iter()
        .find(|(_, _, m)| may(&session.caller, *m))
        .map_or("/console/tools", |(href, _, _)| *href);
    see_other(first)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
    #[allow(dead_code)]
    #[serde(default)]
    csrf: String,
}

fn login_page(c: &Console, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Page {
    let sessions = c
        .sessions
        .get()
        .ok_or_else(|| PageError::from(Error::internal("the session secret is not loaded")))?;
    let (cookie, token) = sessions.login_form(now_ms());
    let body = view::bare(
        "Sign in",
        html! {
            p.muted { "Sign in with an API key (" code { "host keys create" } "). What you see and may do follows the key's roles and tenant, as in the API." }
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            form.card method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(token);
                label for="key" { "API key" }
                input #key type="password" name="key" autocomplete="off" required placeholder="thk_…";
                button type="submit" { "Sign in" }
            }
        },
    );
    let set = session::set_cookie(
        session::LOGIN_COOKIE,
        &cookie,
        session::LOGIN_TTL_MS / 1000,
        session::over_tls(headers),
    );
    Ok((
        status,
        [(header::SET_COOKIE, set)],
        Html(body.into_string()),
    )
        .into_response())
}

/// The sign-in form.
pub async fn login_form(State(c): State<Arc<Console>>, headers: HeaderMap) -> Page {
    login_page(&c, &headers, StatusCode::OK, None)
}

/// Exchange an API key for a session cookie (the form's token and Origin
/// were checked by the guard).
pub async fn login(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Page {
    let key = match c
        .app
        .keys
        .authenticate(c.app.storage.as_ref(), form.key.trim())
        .await
    {
        Ok(key) => key,
        Err(e) if e.kind == ErrorKind::Unauthenticated => {
            return login_page(&c, &headers, StatusCode::UNAUTHORIZED, Some(&e.message));
        }
        Err(e) => return Err(e.into()),
    };
    let sessions = c.sessions().await?;
    let secure = session::over_tls(&headers);
    let cookie = sessions.issue(&key, now_ms());
    tracing::info!(key = %key.id, tenant = %key.tenant, "console sign-in");
    let mut response = see_other("/console/");
    let h = response.headers_mut();
    for set in [
        session::set_cookie(
            session::SESSION_COOKIE,
            &cookie,
            session::SESSION_TTL_MS / 1000,
            secure,
        ),
        session::set_cookie(session::LOGIN_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = set.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

/// Sign out: the cookie is removed.
pub async fn logout(headers: HeaderMap) -> Response {
    let mut response = see_other("/console/login");
    let set = session::set_cookie(session::SESSION_COOKIE, "", 0, session::over_tls(&headers));
    if let Ok(v) = set.parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The stylesheet (the only asset).
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

/// The icon.
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#1d2330"/><path d="M4 4h8v2H9v6H7V6H4z" fill="#7aa2ff"/></svg>"##,
    )
        .into_response()
}

/// No such console page.
pub async fn not_found(uri: axum::http::Uri) -> PageError {
    not_found_error(format!("no console page {}", uri.path()))
}

// -------------------------------------------------------------- approvals

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsQuery {
    status: Option<String>,
    cursor: Option<String>,
}

/// The amount the rule that asked for a human looked at: the rule names
/// its field (`amount from \`amount_usd\``); found in the (redacted)
/// arguments, with `-` and `_` spellings alike.
pub fn amount(rule: &str, args: &Value) -> Option<String> {
    let field = rule.split("amount from `").nth(1)?.split('`').next()?;
    let obj = args.as_object()?;
    [
        field.to_string(),
        field.replace('_', "-"),
        field.replace('-', "_"),
    ]
    .iter()
    .find_map(|f| obj.get(f))
    .filter(|v| v.is_number())
    .map(|v| format!("{} USD", text(v)))
}

fn packet(a: &ApprovalRecord, now: i64) -> Markup {
    let args: Value = serde_json::from_str(&a.args_redacted).unwrap_or(Value::Null);
    html! {
        dl.packet {
            dt { "Tool" } dd { code { (a.tool) } }
            dt { "Function" } dd { code { (a.function) } }
            dt { "Version" } dd { (a.version.as_deref().unwrap_or("—")) }
            @if let Some(amount) = amount(&a.rule, &args) {
                dt { "Amount" } dd.amount { (amount) }
            }
            dt { "Rule" } dd { (a.rule) }
            dt { "Requester" } dd { code { (a.requester.as_deref().unwrap_or("—")) } }
            dt { "Workflow" } dd { (a.workflow.as_deref().unwrap_or("—")) }
            dt { "Task" } dd { (a.task_id.as_deref().unwrap_or("—")) }
            dt { "Requested" } dd { (time(a.created_ms)) " (" (ago(a.created_ms, now)) ")" }
            dt { "Expires" } dd { (time(a.expires_ms)) " (" (ago(a.expires_ms, now)) ")" }
            dt { "Arguments (redacted)" } dd { pre.json { (pretty(&args)) } }
            dt { "Arguments SHA-256" } dd { code.hash { (a.args_sha256) } }
        }
    }
}

fn decision_forms(session: &Session, a: &ApprovalRecord, now: i64) -> Markup {
    let effective = approvals::effective_status(a, now);
    html! {
        @if effective == ApprovalStatus::Pending {
            @if !may(&session.caller, DECIDE) {
                p.muted { "Your key cannot decide (it needs the approve role)." }
            } @else if a.requester.as_deref() == Some(session.caller.key.id.as_str()) {
                p.muted { "Your key requested this call: another approver must decide it." }
            } @else {
                div.decide {
                    form method="post" action=(format!("/console/approvals/{}/approve", enc(&a.id))) {
                        (csrf(session))
                        label { "Reason " input type="text" name="reason" maxlength="500"; }
                        button.approve type="submit" { "Approve" }
                    }
                    form method="post" action=(format!("/console/approvals/{}/deny", enc(&a.id))) {
                        (csrf(session))
                        label { "Reason " input type="text" name="reason" maxlength="500"; }
                        button.deny type="submit" { "Deny" }
                    }
                }
            }
        } @else if let Some(by) = &a.decided_by {
            p { (effective) " by " code { (by) }
                @if let Some(ms) = a.decided_ms { " at " (time(ms)) }
                @if let Some(r) = &a.reason { ": " q.reason { (r) } }
            }
        }
    }
}

/// The approvals inbox: requests newest first, pending by default.
pub async fn approvals(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Query(q): Query<ApprovalsQuery>,
) -> Page {
    require(&session.caller, APPROVALS)?;
    let wanted = given(&q.status).unwrap_or_else(|| "pending".into());
    let status_filter = (wanted != "all").then_some(wanted.as_str());
    let found = approvals::list(
        c.app.storage.as_ref(),
        session.caller.tenant(),
        status_filter,
        given(&q.cursor).as_deref(),
        50,
    )
    .await?;
    let now = now_ms();
    let next = (found.len() == 50)
        .then(|| found.last().map(approvals::cursor))
        .flatten();
    let body = html! {
        nav.tabs {
            @for s in ["pending", "approved", "denied", "expired", "withdrawn", "all"] {
                a href=(format!("/console/approvals?status={s}")) class=[(s == wanted).then_some("current")] { (s) }
            }
        }
        @if found.is_empty() {
            p.empty { "No " (wanted) " approval requests." }
        }
        @for a in &found {
            article.card.approval {
                h2 {
                    a href=(format!("/console/approvals/{}", enc(&a.id))) { (a.tool) " · " (a.function) }
                    " " (status(approvals::effective_status(a, now).as_str()))
                }
                (packet(a, now))
                (decision_forms(&session, a, now))
            }
        }
        @if let Some(next) = next {
            p { a href=(format!("/console/approvals{}", query(&[("status", Some(&wanted)), ("cursor", Some(&next))]))) { "Older →" } }
        }
    };
    Ok(page(&session, "Approvals", "/console/approvals", body))
}

/// One request: its packet, the decision, and the outcome of the call.
pub async fn approval(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Page {
    require(&session.caller, APPROVALS)?;
    let tenant = session.caller.tenant();
    let a = c
        .app
        .storage
        .approval_get(tenant, &id.as_str().into())
        .await?
        .ok_or_else(|| not_found_error(format!("no approval request `{id}`")))?;
    let now = now_ms();
    let record = match c
        .app
        .storage
        .invocation_get(tenant, &a.invocation_id)
        .await?
    {
        Some(r) => Some(approvals::current_record(c.app.storage.as_ref(), r).await?),
        None => None,
    };
    let shown = record.as_ref().map(crate::server::records::show);
    let body = html! {
        p { (status(approvals::effective_status(&a, now).as_str())) " " code { (a.id) } }
        (packet(&a, now))
        (decision_forms(&session, &a, now))
        @if let Some(r) = &shown {
            section.outcome {
                h2 { "Outcome" }
                p {
                    "Invocation " a href=(format!("/console/invocations/{}", enc(&a.invocation_id))) { code { (a.invocation_id) } }
                    " " (status(&text(&r["status"])))
                }
                @if let Some(result) = r.get("result") {
                    h3 { "Result" }
                    pre.json.result { (pretty(result)) }
                }
                @if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
                    h3 { "Error" }
                    p.error { code { (text(&e["kind"])) } ": " (text(&e["message"])) }
                }
            }
        }
    };
    Ok(page(
        &session,
        "Approval request",
        "/console/approvals",
        body,
    ))
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    reason: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    csrf: String,
}

async fn decide(
    c: Arc<Console>,
    session: Session,
    id: String,
    form: DecisionForm,
    verdict: Verdict,
) -> Page {
    require(&session.caller, DECIDE)?;
    let reason = given(&form.reason);
    crate::server::approvals::decide_as(&c.app, &session.caller, id.clone(), verdict, reason)
        .await?;
    Ok(see_other(&format!("/console/approvals/{}", enc(&id))))
}

/// Approve: the call runs now; then its outcome is shown.
pub async fn approve(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Page {
    decide(c, session, id, form, Verdict::Approve).await
}

/// Deny (final).
pub async fn deny(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Page {
    decide(c, session, id, form, Verdict::Deny).await
}

// ------------------------------------------------------------ invocations

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InvocationsQuery {
    tool: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    workflow: Option<String>,
    task_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
}

fn time_field(name: &str, v: &Option<String>) -> Result<Option<i64>, PageError> {
    given(v)
        .map(|s| {
            crate::stats::parse_time(&s, now_ms())
                .map_err(|e| bad_request(format!("`{name}`: {e}")))
        })
        .transpose()
}

/// Invocations, newest first, filtered.
pub async fn invocations(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Query(q): Query<InvocationsQuery>,
) -> Page {
    require(&session.caller, INVOCATIONS)?;
    let status_filter = given(&q.status);
    let wanted = match status_filter.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            bad_request(format!("unknown status `{s}`: use {}", names.join(", ")))
        })?),
    };
    let before = given(&q.cursor)
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| bad_request("`cursor` is not a cursor this console gave"))
        })
        .transpose()?;
    let limit = 50;
    let rows = c
        .app
        .storage
        .invocation_list(
            session.caller.tenant(),
            InvocationFilter {
                tool: given(&q.tool),
                status: wanted,
                workflow: given(&q.workflow),
                task_id: given(&q.task_id),
                error_kind: given(&q.kind),
                since_ms: time_field("since", &q.since)?,
                until_ms: time_field("until", &q.until)?,
                before,
                limit,
            },
        )
        .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|(pos, _)| pos.to_string()))
        .flatten();
    let mut shown = Vec::with_capacity(rows.len());
    for (_, r) in rows {
        let r = approvals::current_record(c.app.storage.as_ref(), r).await?;
        shown.push(crate::server::records::show(&r));
    }
    let field = |name: &'static str, v: &Option<String>, hint: &'static str| {
        html! { label { (name) " " input type="text" name=(name) value=(given(v).unwrap_or_default()) placeholder=(hint); } }
    };
    let body = html! {
        form.filters method="get" action="/console/invocations" {
            (field("tool", &q.tool, "any"))
            label { "status "
                select name="status" {
                    option value="" { "any" }
                    @for s in Status::ALL.map(Status::as_str) {
                        option value=(s) selected[status_filter.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            (field("kind", &q.kind, "error kind"))
            (field("workflow", &q.workflow, "any"))
            (field("task_id", &q.task_id, "any"))
            (field("since", &q.since, "24h, 2026-11-26"))
            (field("until", &q.until, "now"))
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() {
            p.empty { "No invocations match." }
        } @else {
            table.list {
                thead { tr { th { "Time" } th { "Tool" } th { "Function" } th { "Status" } th { "Kind" } th { "Workflow" } th { "Task" } th.num { "Wall ms" } th.num { "Cost" } } }
                tbody {
                    @for r in &shown {
                        tr {
                            td { a href=(format!("/console/invocations/{}", enc(&text(&r["invocation_id"])))) { (time(r["created_ms"].as_i64().unwrap_or(0))) } }
                            td { (text(&r["tool"])) }
                            td { code { (text(&r["function"])) } }
                            td { (status(&text(&r["status"]))) }
                            td { (text(&r["error"]["kind"])) }
                            td { (text(&r["workflow"])) }
                            td { (text(&r["task_id"])) }
                            td.num { (text(&r["usage"]["wall_ms"])) }
                            td.num { @if let Some(m) = r["charged"]["cost_micro_usd"].as_i64() { (usd(m)) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a href=(format!("/console/invocations{}", query(&[
                ("tool", given(&q.tool).as_deref()), ("status", status_filter.as_deref()),
                ("kind", given(&q.kind).as_deref()), ("workflow", given(&q.workflow).as_deref()),
                ("task_id", given(&q.task_id).as_deref()), ("since", given(&q.since).as_deref()),
                ("until", given(&q.until).as_deref()), ("cursor", Some(&next)),
            ]))) { "Older →" } }
        }
    };
    Ok(page(&session, "Invocations", "/console/invocations", body))
}

/// One invocation: arguments and result (redacted), usage, the policy's
/// decision, the budget charge, outbound calls, callbacks.
pub async fn invocation(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Page {
    require(&session.caller, INVOCATIONS)?;
    let tenant = session.caller.tenant();
    let record = c
        .app
        .storage
        .invocation_get(tenant, &id.as_str().into())
        .await?
        .ok_or_else(|| not_found_error(format!("no invocation `{id}`")))?;
    let record = approvals::current_record(c.app.storage.as_ref(), record).await?;
    let r = crate::server::records::show(&record);
    let callbacks = c.app.storage.outbox_for(tenant, &id).await?;
    let outbound: Vec<Value> = r["outbound"].as_array().cloned().unwrap_or_default();
    let approval_id = r
        .get("approval_id")
        .map(text)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            (record.status == crate::storage::Status::PendingApproval)
                .then(|| record.id.approval().into_string())
        });
    let body = html! {
        p { code { (id) } " " (status(record.status.as_str())) }
        dl.packet {
            dt { "Tool" } dd { code { (record.tool) } }
            dt { "Function" } dd { code { (record.function) } }
            dt { "Version" } dd { (record.version.as_deref().unwrap_or("—")) }
            dt { "Time" } dd { (time(record.created_ms)) }
            dt { "Workflow" } dd { (record.workflow.as_deref().unwrap_or("—")) }
            dt { "Task" } dd { (record.task_id.as_deref().unwrap_or("—")) }
            dt { "Caller" } dd { code { (record.principal.as_deref().unwrap_or("—")) } }
            @if let Some(d) = r.get("decision") {
                dt { "Policy" } dd { (text(&d["effect"])) ": " (text(&d["rule"])) }
            }
            @if let Some(a) = &approval_id {
                dt { "Approval" } dd { a href=(format!("/console/approvals/{}", enc(a))) { code { (a) } } }
            }
            @if let Some(t) = r.get("trace_id") {
                dt { "Trace" } dd { code { (text(t)) } }
            }
            @if let Some(sha) = r.get("args_sha256") {
                dt { "Arguments SHA-256" } dd { code.hash { (text(sha)) } }
            }
        }
        @if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
            h2 { "Error" }
            p.error { code { (text(&e["kind"])) } ": " (text(&e["message"])) }
        }
        @if let Some(args) = r.get("args") {
            h2 { "Arguments (redacted)" }
            pre.json.args { (pretty(args)) }
        }
        @if let Some(result) = r.get("result") {
            h2 { "Result (redacted)" }
            pre.json.result { (pretty(result)) }
        }
        h2 { "Usage" }
        pre.json { (pretty(&r["usage"])) }
        @if let Some(charged) = r.get("charged") {
            h2 { "Budget charge" }
            table.kv {
                @for (k, v) in charged.as_object().into_iter().flatten() {
                    @if v.as_i64() != Some(0) {
                        tr { th { (k) } td.num { @if k == "cost_micro_usd" { (usd(v.as_i64().unwrap_or(0))) } @else { (text(v)) } } }
                    }
                }
            }
        }
        h2 { "Outbound calls" }
        @if outbound.is_empty() {
            p.muted { "None." }
        } @else {
            table.list {
                thead { tr { th { "Call" } th { "Decision" } th { "Rule" } th.num { "Status" } th.num { "Bytes" } th.num { "ms" } th { "Error" } } }
                tbody {
                    @for o in &outbound {
                        tr {
                            td { code {
                                @if o.get("host").is_some() {
                                    (text(&o["method"])) " " (text(&o["scheme"])) "://" (text(&o["host"])) ":" (text(&o["port"])) (text(&o["path"]))
                                } @else {
                                    (text(&o["operation"])) " " (text(&o["addr"]))
                                }
                            } }
                            td { @if o["allowed"].as_bool() == Some(true) { span.badge.ok { "allowed" } } @else { span.badge.bad { "denied" } } }
                            td { (text(&o["rule"])) }
                            td.num { (text(&o["status"])) }
                            td.num { (text(&o["response_bytes"])) }
                            td.num { (text(&o["latency_ms"])) }
                            td { (text(&o["error"])) }
                        }
                    }
                }
            }
        }
        @if !callbacks.is_empty() {
            h2 { "Callbacks" }
            table.list {
                thead { tr { th { "URL" } th { "State" } th.num { "Attempts" } th { "Last error" } th { "Delivered" } } }
                tbody {
                    @for m in &callbacks {
                        tr {
                            td { code { (m.url) } }
                            td { (m.state) }
                            td.num { (m.attempts) }
                            td { (m.last_error.as_deref().unwrap_or("")) }
                            td { @if let Some(ms) = m.delivered_ms { (time(ms)) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&session, "Invocation", "/console/invocations", body))
}

// ------------------------------------------------------------------ tools

/// The tenant's tools.
pub async fn tools(State(c): State<Arc<Console>>, Extension(session): Extension<Session>) -> Page {
    require(&session.caller, TOOLS)?;
    let list = c.app.registry.list(session.caller.tenant()).await?;
    let body = html! {
        @if list.is_empty() {
            p.empty { "No tools are registered (" code { "host register" } " or " code { "POST /v1/tools" } ")." }
        } @else {
            table.list {
                thead { tr { th { "Tool" } th { "Version" } th { "State" } th { "Functions" } th { "Registered" } } }
                tbody {
                    @for (entry, version) in &list {
                        tr {
                            td { a href=(format!("/console/tools/{}", enc(&entry.name))) { (entry.name) } }
                            td { (entry.current) }
                            td { @if entry.disabled { span.badge.bad { "disabled" } } @else { span.badge.ok { "enabled" } } }
                            td { @if let Some(v) = version { @for f in &v.functions { code.sig { (f) } br; } } }
                            td { @if let Some(v) = version { (time(v.created_ms)) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&session, "Tools", "/console/tools", body))
}

/// A tool: its versions, its functions with their schemas and docs; for
/// admins, deploy, roll back, disable and enable.
pub async fn tool(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Page {
    require(&session.caller, TOOLS)?;
    let (entry, versions) = c
        .app
        .registry
        .describe(session.caller.tenant(), &name)
        .await?;
    let loaded = c.app.tools.get_entry(entry.clone()).await?;
    let catalog = loaded.catalog();
    let admin = may(&session.caller, DEPLOY);
    let current_at = versions.iter().position(|v| v.version == entry.current);
    let previous = current_at
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| versions.get(i));
    let action = |what: &str| format!("/console/tools/{}/{what}", enc(&entry.name));
    let body = html! {
        p {
            "Version " strong { (entry.current) } " "
            @if entry.disabled { span.badge.bad { "disabled" } } @else { span.badge.ok { "enabled" } }
            @if let Some(d) = loaded.digest() { " · " code.hash { (d) } }
        }
        @if let Some(docs) = &catalog.docs {
            p.docs { (docs.trim()) }
        }
        @if admin {
            div.actions {
                form.inline method="post" action=(action("deploy")) {
                    (csrf(&session))
                    label { "Deploy version "
                        select name="version" {
                            @for v in versions.iter().rev() {
                                option value=(v.version) selected[v.version == entry.current] { (v.version) }
                            }
                        }
                    }
                    button type="submit" { "Deploy" }
                }
                @if let Some(p) = previous {
                    form.inline method="post" action=(action("deploy")) {
                        (csrf(&session))
                        input type="hidden" name="version" value=(p.version);
                        button type="submit" { "Roll back to " (p.version) }
                    }
                }
                @if entry.disabled {
                    form.inline method="post" action=(action("enable")) {
                        (csrf(&session))
                        button type="submit" { "Enable" }
                    }
                } @else {
                    form.inline method="post" action=(action("disable")) {
                        (csrf(&session))
                        button.deny type="submit" { "Disable" }
                    }
                }
            }
        }
        h2 { "Functions" }
        @for f in &catalog.functions {
            article.card.function {
                h3 { code { (f.name) } }
                p { code.sig { (f.signature()) } }
                @let description = crate::schema::description(f);
                @if !description.is_empty() { p.docs { (description) } }
                details {
                    summary { "Parameters (JSON Schema)" }
                    pre.json { (pretty(&crate::schema::parameters(f))) }
                }
                details {
                    summary { "Result (JSON Schema)" }
                    pre.json { (pretty(&crate::schema::result(f))) }
                }
            }
        }
        h2 { "Versions" }
        table.list {
            thead { tr { th { "Version" } th { "Registered" } th { "Digest" } } }
            tbody {
                @for v in versions.iter().rev() {
                    tr {
                        td { (v.version) @if v.version == entry.current { " " span.badge.ok { "current" } } }
                        td { (time(v.created_ms)) }
                        td { code.hash { (v.digest) } }
                    }
                }
            }
        }
    };
    Ok(page(
        &session,
        &format!("Tool {name}"),
        "/console/tools",
        body,
    ))
}

#[derive(Deserialize)]
pub struct DeployForm {
    version: String,
    #[allow(dead_code)]
    #[serde(default)]
    csrf: String,
}

/// Deploy (or roll back to) a version, as `POST /v1/tools/{tool}/deploy`.
pub async fn deploy(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<DeployForm>,
) -> Page {
    require(&session.caller, DEPLOY)?;
    let tenant = session.caller.tenant();
    c.app
        .registry
        .deploy(tenant, &name, form.version.trim())
        .await?;
    c.app.tools.invalidate(tenant, &name);
    tracing::info!(tool = %name, version = %form.version, key = %session.caller.key.id, "deployed (console)");
    Ok(see_other(&format!("/console/tools/{}", enc(&name))))
}

#[derive(Deserialize)]
pub struct PlainForm {
    #[allow(dead_code)]
    #[serde(default)]
    csrf: String,
}

async fn set_disabled(c: &Console, session: &Session, name: &str, disabled: bool) -> Page {
    require(&session.caller, if disabled { DISABLE } else { ENABLE })?;
    let tenant = session.caller.tenant();
    c.app.registry.set_disabled(tenant, name, disabled).await?;
    c.app.tools.invalidate(tenant, name);
    tracing::info!(tool = %name, disabled, key = %session.caller.key.id, "tool state changed (console)");
    Ok(see_other(&format!("/console/tools/{}", enc(name))))
}

/// Disable a tool, as `POST /v1/tools/{tool}/disable`.
pub async fn disable(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(_): Form<PlainForm>,
) -> Page {
    set_disabled(&c, &session, &name, true).await
}

/// Enable a tool, as `POST /v1/tools/{tool}/enable`.
pub async fn enable(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(_): Form<PlainForm>,
) -> Page {
    set_disabled(&c, &session, &name, false).await
}

// ---------------------------------------------------------------- budgets

/// One ledger line against its limit.
struct Line {
    metric: Metric,
    used: i64,
    reserved: i64,
    limit: Option<i64>,
}

fn amount_text(metric: Metric, v: i64) -> String {
    if metric == Metric::CostMicroUsd {
        usd(v)
    } else {
        v.to_string()
    }
}

fn metric_name(metric: Metric) -> &'static str {
    if metric == Metric::CostMicroUsd {
        "cost"
    } else {
        metric.as_str()
    }
}

/// The lines of ledger (scope, window) with the limits in force.
async fn ledger_lines(
    c: &Console,
    scope: &LedgerScope,
    window: &Window,
    limits: &crate::policy::file::Limits,
) -> crate::Result<Vec<Line>> {
    let usage = c.app.governed.ledger().usage(scope).await?;
    Ok(Metric::ALL
        .into_iter()
        .filter_map(|metric| {
            let u = usage
                .iter()
                .find(|u| u.window == *window && u.metric == metric);
            let (used, reserved) = u.map_or((0, 0), |u| (u.used, u.reserved));
            let limit = crate::budget::limit_of(limits, metric);
            (limit.is_some() || used != 0 || reserved != 0).then_some(Line {
                metric,
                used,
                reserved,
                limit,
            })
        })
        .collect())
}

fn ledger_table(scope: &str, window: &str, lines: &[Line]) -> Markup {
    html! {
        article.card.ledger {
            h3 { code { (scope) } " " span.muted { (window) } }
            table.list {
                thead { tr { th { "Metric" } th.num { "Used" } th.num { "Reserved" } th.num { "Limit" } th { "Against the limit" } } }
                tbody {
                    @for l in lines {
                        tr {
                            td { (metric_name(l.metric)) }
                            td.num { (amount_text(l.metric, l.used)) }
                            td.num { (amount_text(l.metric, l.reserved)) }
                            td.num { @if let Some(lim) = l.limit { (amount_text(l.metric, lim)) } @else { "—" } }
                            td { @if let Some(lim) = l.limit { (super::chart::meter(l.used, l.reserved, lim)) " " (pct(if lim > 0 { (l.used + l.reserved) as f64 / lim as f64 } else { 1.0 })) } }
                        }
                    }
                }
            }
        }
    }
}

/// Task, workflow and tenant ledgers against the limits the policy sets
/// now; the tasks and workflows of the last 7 days.
pub async fn budgets(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
) -> Page {
    require(&session.caller, BUDGETS)?;
    let tenant = session.caller.tenant().clone();
    let now = now_ms();
    let report = crate::stats::report(
        c.app.storage.as_ref(),
        &tenant,
        &crate::stats::Query {
            since_ms: Some(now - 7 * 86_400_000),
            ..crate::stats::Query::default()
        },
        now,
    )
    .await?;
    let policy = c.app.governed.policy();
    let mut workflows: Vec<Option<String>> =
        report.tasks.iter().map(|t| t.workflow.clone()).collect();
    workflows.push(policy.default_workflow().map(str::to_string));
    workflows.sort();
    workflows.dedup();
    // (scope, window) → limits, in order: tenant, workflows, tasks.
    type Ledger = (LedgerScope, Window, crate::policy::file::Limits);
    let mut ledgers: Vec<Ledger> = Vec::new();
    let mut push = |levels: Vec<Ledger>, prefix: &str| {
        for l in levels.into_iter().filter(|(s, _, _)| s.starts_with(prefix)) {
            if !ledgers.iter().any(|(s, w, _)| *s == l.0 && *w == l.1) {
                ledgers.push(l);
            }
        }
    };
    let scope_of = |workflow: &Option<String>, task: Option<&str>| crate::budget::Scope {
        tenant: tenant.clone(),
        workflow: workflow.clone().unwrap_or_else(|| "*".into()),
        task: task.map(str::to_string),
    };
    for prefix in ["tenant:", "workflow:"] {
        for w in &workflows {
            if let Some(doc) = policy.document(Some(&tenant), w.as_deref()) {
                push(
                    crate::budget::levels(&doc.budget, &scope_of(w, None), now),
                    prefix,
                );
            }
        }
    }
    for t in report.tasks.iter().take(50) {
        if let Some(doc) = policy.document(Some(&tenant), t.workflow.as_deref()) {
            push(
                crate::budget::levels(&doc.budget, &scope_of(&t.workflow, Some(&t.task_id)), now),
                "task:",
            );
        }
    }
    let mut tables = Vec::new();
    for (scope, window, limits) in &ledgers {
        let lines = ledger_lines(&c, scope, window, limits).await?;
        tables.push(ledger_table(scope, window, &lines));
    }
    let body = html! {
        p.muted { "Ledgers the policy in force limits, with what is used and what running invocations hold in reserve; tasks and workflows active in the last 7 days. Model tokens are what orchestrators report (" code { "POST /v1/tasks/{id}/usage" } ")." }
        @if tables.is_empty() {
            p.empty { "The policy sets no budget limits for this tenant's recent work." }
        }
        @for t in &tables { (t) }
        h2 { "Tasks in the last 7 days" }
        (task_table(&report.tasks))
    };
    Ok(page(&session, "Budgets", "/console/budgets", body))
}

fn task_table(tasks: &[crate::stats::TaskStats]) -> Markup {
    html! {
        @if tasks.is_empty() {
            p.empty { "No tasks in this range." }
        } @else {
            table.list {
                thead { tr { th { "Task" } th { "Workflow" } th.num { "Invocations" } th.num { "Calls" } th.num { "Failures" } th.num { "Cost" } th.num { "Input tokens" } th.num { "Output tokens" } th { "Last active" } } }
                tbody {
                    @for t in tasks {
                        tr {
                            td { a href=(format!("/console/invocations?task_id={}", enc(&t.task_id))) { (t.task_id) } }
                            td { (t.workflow.as_deref().unwrap_or("—")) }
                            td.num { (t.invocations) }
                            td.num { (t.calls) }
                            td.num { (t.failures) }
                            td.num { (usd(t.cost_micro_usd)) }
                            td.num { @if let Some(l) = &t.ledger { (l.input_tokens) } @else { "—" } }
                            td.num { @if let Some(l) = &t.ledger { (l.output_tokens) } @else { "—" } }
                            td { (time(t.last_ms)) }
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------ audit

async fn audit_page(c: &Console, session: &Session, verified: Option<Markup>) -> Page {
    require(&session.caller, AUDIT)?;
    let chain = crate::audit::chain_of(Some(session.caller.tenant()));
    let checkpoints = c.app.storage.checkpoints(&chain).await?;
    let tip = checkpoints.iter().find(|c| c.kind == "tip");
    let head = checkpoints.iter().find(|c| c.kind == "head");
    let periodic = checkpoints.iter().filter(|c| c.kind == "periodic").count();
    let prune = checkpoints.iter().rfind(|c| c.kind == "prune");
    let body = html! {
        article.card {
            h2 { "Chain " code { (chain) } }
            dl.packet {
                dt { "Entries up to" } dd { @if let Some(t) = tip { "seq " (t.seq) } @else { "no entries yet" } }
                dt { "Signed head" } dd { @if let Some(h) = head { "seq " (h.seq) " at " (time(h.time_ms)) } @else { "—" } }
                dt { "Head hash" } dd { @if let Some(t) = tip { code.hash { (t.hash) } } }
                dt { "Periodic checkpoints" } dd { (periodic) }
                dt { "Pruned before" } dd { @if let Some(p) = prune { "seq " (p.seq) " (" (time(p.time_ms)) ")" } @else { "nothing pruned" } }
                dt { "Public key" } dd { code.hash { (c.app.governed.audit().public_key()) } }
            }
            form.inline method="post" action="/console/audit/verify" {
                (csrf(session))
                button type="submit" { "Verify the chain" }
            }
        }
        @if let Some(v) = verified { (v) }
        article.card {
            h2 { "Export" }
            p.muted { "JSON lines with the public key and signed checkpoints: " code { "host audit verify --file" } " checks it on its own." }
            form.inline method="get" action="/console/audit/export" {
                label { "since " input type="text" name="since" placeholder="7d, 2026-11-26"; }
                label { "until " input type="text" name="until" placeholder="now"; }
                button type="submit" { "Download" }
            }
        }
    };
    Ok(page(session, "Audit", "/console/audit", body))
}

/// The tenant's audit chain: status, verify, export.
pub async fn audit(State(c): State<Arc<Console>>, Extension(session): Extension<Session>) -> Page {
    audit_page(&c, &session, None).await
}

/// Verify the tenant's chain now and show the result.
pub async fn verify(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Form(_): Form<PlainForm>,
) -> Page {
    require(&session.caller, AUDIT)?;
    let Ok(_one) = c.verifying.try_acquire() else {
        return Err(busy("another verification is running on this server"));
    };
    let log = c.app.governed.audit();
    let key = crate::audit::verify::parse_key(&log.public_key()).map_err(Error::internal)?;
    let chain = crate::audit::chain_of(Some(session.caller.tenant()));
    let started = std::time::Instant::now();
    let report = crate::audit::verify::verify(log.storage(), &key, Some(&chain)).await?;
    let secs = started.elapsed().as_secs_f64();
    let result = html! {
        article.card.verify {
            h2 {
                "Verification: "
                @if report.ok { span.badge.ok { "intact" } } @else { span.badge.bad { "problems found" } }
            }
            p { (report.entries) " entries checked in " (format!("{secs:.2}")) " s at " (time(now_ms())) "." }
            @for p in &report.problems { p.error { (p) } }
            @for ch in &report.chains {
                p { code { (ch.chain) } ": " (ch.entries) " entries"
                    @if let (Some(a), Some(b)) = (ch.first_seq, ch.last_seq) { ", seq " (a) "–" (b) } }
                @for p in &ch.problems { p.error { (p) } }
            }
        }
    };
    audit_page(&c, &session, Some(result)).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    since: Option<String>,
    until: Option<String>,
}

/// A writer that refuses to grow past a cap (and remembers it did).
struct Capped {
    bytes: Vec<u8>,
    /// A write was refused for passing the cap.
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > MAX_EXPORT {
            self.overflowed = true;
            return Err(std::io::Error::other("too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The page for an export that failed: `413` when it outgrew the cap
/// (whatever the size of the write that found it), else the error.
fn export_failed(out: &Capped, e: Error) -> PageError {
    if out.overflowed {
        return PageError::from(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the export is larger than the console hands out ({} MiB): narrow the range, or use `host audit export`",
                MAX_EXPORT >> 20
            ),
        ));
    }
    e.into()
}

/// A `503` page: `what` is busy, try again shortly.
fn busy(what: &str) -> PageError {
    let mut e = PageError::from(Error::new(
        ErrorKind::Overloaded,
        format!("{what}; try again shortly"),
    ));
    e.status = StatusCode::SERVICE_UNAVAILABLE;
    e
}

/// Download the tenant's chain (or a time range of it) as an export file.
pub async fn export(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Query(q): Query<ExportQuery>,
) -> Page {
    require(&session.caller, AUDIT)?;
    let since = time_field("since", &q.since)?;
    let until = time_field("until", &q.until)?;
    let Ok(_slot) = c.exporting.try_acquire() else {
        return Err(busy(&format!(
            "{} exports are being built on this server",
            super::MAX_EXPORTS
        )));
    };
    let chain = crate::audit::chain_of(Some(session.caller.tenant()));
    let mut out = Capped {
        bytes: Vec::new(),
        overflowed: false,
    };
    if let Err(e) =
        crate::audit::verify::export(c.app.governed.audit(), &chain, since, until, &mut out).await
    {
        return Err(export_failed(&out, e));
    }
    let name = format!(
        "attachment; filename=\"toolhost-audit-{}-{}.jsonl\"",
        enc(&chain),
        now_ms()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        out.bytes,
    )
        .into_response())
}

// ---------------------------------------------------------------- reports

/// The essay's reports, with charts.
pub async fn stats(
    State(c): State<Arc<Console>>,
    Extension(session): Extension<Session>,
    Query(q): Query<crate::server::stats::StatsQuery>,
) -> Page {
    require(&session.caller, STATS)?;
    let form = (
        q.tool.clone(),
        q.function.clone(),
        q.workflow.clone(),
        q.since.clone(),
        q.until.clone(),
    );
    let report = crate::stats::report(
        c.app.storage.as_ref(),
        session.caller.tenant(),
        &q.query()?,
        now_ms(),
    )
    .await?;
    let field = |name: &'static str, v: &Option<String>, hint: &'static str| {
        html! { label { (name) " " input type="text" name=(name) value=(given(v).unwrap_or_default()) placeholder=(hint); } }
    };
    let p95: Vec<(String, i64)> = report
        .tools
        .iter()
        .filter_map(|t| t.totals.latency_ms.p95.map(|p| (t.tool.clone(), p)))
        .take(20)
        .collect();
    let t = &report.totals;
    let body = html! {
        form.filters method="get" action="/console/stats" {
            (field("tool", &form.0, "any"))
            (field("function", &form.1, "any"))
            (field("workflow", &form.2, "any"))
            (field("since", &form.3, "24h ago"))
            (field("until", &form.4, "now"))
            button type="submit" { "Report" }
        }
        p.range {
            "From " strong { (report.range.since) } " to " strong { (report.range.until) } ": "
            strong { (report.sample_size) } " invocations"
            @if report.truncated {
                " (more matched: the newest " (report.sample_size) " are counted, from " (time(report.covered_since_ms)) ")"
            }
            "."
        }
        div.figures {
            div { span.big { (t.count) } span { "invocations" } }
            div { span.big { (pct(t.failure_rate)) } span { "failure rate" } }
            div { span.big { (t.latency_ms.p50.map_or("—".into(), |v| format!("{v} ms"))) } span { "p50" } }
            div { span.big { (t.latency_ms.p95.map_or("—".into(), |v| format!("{v} ms"))) } span { "p95" } }
            div { span.big { (t.latency_ms.p99.map_or("—".into(), |v| format!("{v} ms"))) } span { "p99" } }
            div { span.big { (usd(t.cost_micro_usd)) } span { "cost" } }
        }
        h2 { "Invocations and failure rate over time" }
        (super::chart::timeline(&report.series))
        h2 { "p95 latency per tool" }
        (super::chart::hbars(&p95, "ms", "p95 wall time per tool"))
        h2 { "Per tool and function" }
        @if report.functions.is_empty() {
            p.empty { "No invocations in this range." }
        } @else {
            table.list {
                thead { tr { th { "Tool" } th { "Function" } th.num { "Count" } th.num { "OK" } th.num { "Error" } th.num { "Refused" } th.num { "Failure rate" } th { "Failures by kind" } th.num { "p50" } th.num { "p95" } th.num { "p99" } th.num { "Cost" } } }
                tbody {
                    @for f in &report.functions {
                        tr {
                            td { (f.tool) }
                            td { code { (f.function) } }
                            td.num { (f.totals.count) }
                            td.num { (f.totals.ok) }
                            td.num { (f.totals.error) }
                            td.num { (f.totals.refused) }
                            td.num { (pct(f.totals.failure_rate)) }
                            td { @for k in &f.totals.failures { code { (k.kind) } " " (k.count) " (" (pct(k.rate)) ") " } }
                            td.num { (f.totals.latency_ms.p50.map_or(String::new(), |v| v.to_string())) }
                            td.num { (f.totals.latency_ms.p95.map_or(String::new(), |v| v.to_string())) }
                            td.num { (f.totals.latency_ms.p99.map_or(String::new(), |v| v.to_string())) }
                            td.num { (usd(f.totals.cost_micro_usd)) }
                        }
                    }
                }
            }
        }
        h2 { "Per task (" (report.task_count) ")" }
        (task_table(&report.tasks))
        p.muted { "Latency: wall time of the invocations that ran, in ms (nearest rank). Failure rate: (error + refused) over finished invocations. The same report: " code { "GET /v1/stats" } ", " code { "host stats" } "." }
    };
    Ok(page(&session, "Reports", "/console/stats", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export that outgrows the cap is a `413` with its explanation,
    /// also when the write that found it was one large line (a record with
    /// big arguments) far from the cap, not a `500`.
    #[test]
    fn an_export_past_the_cap_is_too_large_whatever_the_write() {
        use std::io::Write;
        let mut out = Capped {
            bytes: vec![0; MAX_EXPORT - 100_000],
            overflowed: false,
        };
        let e = out.write_all(&[b'x'; 200_000]).unwrap_err();
        let page = export_failed(&out, Error::internal(format!("writing the export: {e}")));
        assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(page.error.message.contains("narrow the range"));
        // Any other failure stays what it was.
        let out = Capped {
            bytes: Vec::new(),
            overflowed: false,
        };
        let page = export_failed(&out, Error::corrupt("the chain does not verify"));
        assert_ne!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn every_mirrored_api_route_exists() {
        // A renamed API route must not silently close (or open) a page.
        let mirrors = [
            APPROVALS,
            DECIDE,
            INVOCATIONS,
            TOOLS,
            DEPLOY,
            DISABLE,
            ENABLE,
            BUDGETS,
            STATS,
        ];
        for m in mirrors
            .into_iter()
            .chain(super::super::PAGES.iter().map(|(_, _, m)| *m))
        {
            if let Mirror::Api(method, route) = m {
                let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
                assert!(
                    crate::server::route_access(&method, route).is_some(),
                    "{method} {route}"
                );
            }
        }
    }

    #[test]
    fn the_amount_is_read_where_the_rule_says() {
        let rule =
            "p: approval.required_for[0] (issue_refund over 50 USD, amount from `amount_usd`)";
        assert_eq!(
            amount(rule, &serde_json::json!({"amount-usd": 120.5})).as_deref(),
            Some("120.5 USD")
        );
        assert_eq!(
            amount(rule, &serde_json::json!({"amount_usd": 7})).as_deref(),
            Some("7 USD")
        );
        assert_eq!(
            amount(rule, &serde_json::json!({"amount_usd": "[redacted]"})),
            None
        );
        assert_eq!(
            amount("p: deny_tools[0]", &serde_json::json!({"amount_usd": 7})),
            None
        );
    }
}
