//! Row readers every SQL backend shares: the same columns, in the same
//! order, read the same way from a PostgreSQL or a SQLite row. Every column
//! is read with `try_get`, so a hand-edited value is an error, never a panic.

use crate::storage::{
    ApiKeyRecord, ApprovalRecord, InvocationRecord, OutboxMessage, StoredEntry, StoredPolicy,
    ToolEntry, ToolVersion, Usage, usage_line,
};

/// The columns [`tool_version_row`] reads, in order.
pub(crate) const VERSION_COLUMNS: &str =
    "tenant, name, version, digest, docs, artifact, engine, functions, created_ms";

/// The columns [`outbox_row`] reads, in order.
pub(crate) const OUTBOX_COLUMNS: &str = "id, tenant, invocation_id, approval_id, url, created_ms, attempts, state, last_error, delivered_ms";

/// The query [`policy_row`] reads: the policy in force.
pub(crate) const POLICY_CURRENT: &str =
    "SELECT version, name, text, created_ms FROM policies ORDER BY version DESC LIMIT 1";

/// The columns [`approval_row`] reads, in order.
pub(crate) const APPROVAL_COLUMNS: &str = "id, tenant, invocation_id, status, tool, function, version, workflow, task_id, args, args_redacted, args_sha256, rule, requester, created_ms, expires_ms, decided_by, decided_ms, reason, callback_url";

/// The columns [`invocation_row`] reads, in order.
pub(crate) const INVOCATION_COLUMNS: &str = "pos, id, tenant, tool, function, version, workflow, task_id, principal, status, error_kind, created_ms, response";

/// An approval request ([`APPROVAL_COLUMNS`]).
pub(crate) fn approval_row<R>(r: &R) -> Result<ApprovalRecord, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ApprovalRecord {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        invocation_id: r.try_get(2)?,
        status: r.try_get(3)?,
        tool: r.try_get(4)?,
        function: r.try_get(5)?,
        version: r.try_get(6)?,
        workflow: r.try_get(7)?,
        task_id: r.try_get(8)?,
        args: r.try_get(9)?,
        args_redacted: r.try_get(10)?,
        args_sha256: r.try_get(11)?,
        rule: r.try_get(12)?,
        requester: r.try_get(13)?,
        created_ms: r.try_get(14)?,
        expires_ms: r.try_get(15)?,
        decided_by: r.try_get(16)?,
        decided_ms: r.try_get(17)?,
        reason: r.try_get(18)?,
        callback_url: r.try_get(19)?,
    })
}

/// An invocation record and its position ([`INVOCATION_COLUMNS`]).
pub(crate) fn invocation_row<R>(r: &R) -> Result<(i64, InvocationRecord), sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        r.try_get(0)?,
        InvocationRecord {
            id: r.try_get(1)?,
            tenant: r.try_get(2)?,
            tool: r.try_get(3)?,
            function: r.try_get(4)?,
            version: r.try_get(5)?,
            workflow: r.try_get(6)?,
            task_id: r.try_get(7)?,
            principal: r.try_get(8)?,
            status: r.try_get(9)?,
            error_kind: r.try_get(10)?,
            created_ms: r.try_get(11)?,
            response: r.try_get(12)?,
        },
    ))
}

/// A ledger line (scope, window, metric, used, reserved), `None` when
/// [`usage_line`] leaves it out.
pub(crate) fn usage_row<R>(r: &R) -> Result<Option<Usage>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let metric: String = r.try_get(2)?;
    Ok(usage_line(
        r.try_get(0)?,
        r.try_get(1)?,
        &metric,
        r.try_get(3)?,
        r.try_get(4)?,
    ))
}

/// An audit entry (chain, seq, time_ms, body, prev_hash, hash).
pub(crate) fn entry_row<R>(r: &R) -> Result<StoredEntry, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredEntry {
        chain: r.try_get(0)?,
        seq: r.try_get(1)?,
        time_ms: r.try_get(2)?,
        body: r.try_get(3)?,
        prev_hash: r.try_get(4)?,
        hash: r.try_get(5)?,
    })
}

/// A registered tool version ([`VERSION_COLUMNS`]); unreadable stored
/// function metadata reads as none (the component is the truth).
pub(crate) fn tool_version_row<R>(r: &R) -> Result<ToolVersion, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ToolVersion {
        tenant: r.try_get(0)?,
        name: r.try_get(1)?,
        version: r.try_get(2)?,
        digest: r.try_get(3)?,
        docs: r.try_get(4)?,
        artifact: r.try_get(5)?,
        engine: r.try_get(6)?,
        // Unreadable is an error, never "no functions".
        functions: serde_json::from_str(&r.try_get::<String, _>(7)?).map_err(|e| {
            sqlx::Error::ColumnDecode {
                index: "functions".into(),
                source: Box::new(e),
            }
        })?,
        created_ms: r.try_get(8)?,
    })
}

/// An API key (id, tenant, roles, hash, label, created_ms, revoked_ms).
pub(crate) fn key_row<R>(r: &R) -> Result<ApiKeyRecord, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let roles: String = r.try_get(2)?;
    Ok(ApiKeyRecord {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        hash: r.try_get(3)?,
        label: r.try_get(4)?,
        created_ms: r.try_get(5)?,
        revoked_ms: r.try_get(6)?,
    })
}

/// An outbox message ([`OUTBOX_COLUMNS`]).
pub(crate) fn outbox_row<R>(r: &R) -> Result<OutboxMessage, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboxMessage {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        invocation_id: r.try_get(2)?,
        approval_id: r.try_get(3)?,
        url: r.try_get(4)?,
        created_ms: r.try_get(5)?,
        attempts: r.try_get(6)?,
        state: r.try_get(7)?,
        last_error: r.try_get(8)?,
        delivered_ms: r.try_get(9)?,
    })
}

/// A stored policy document ([`POLICY_CURRENT`]).
pub(crate) fn policy_row<R>(r: &R) -> Result<StoredPolicy, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredPolicy {
        version: r.try_get(0)?,
        name: r.try_get(1)?,
        text: r.try_get(2)?,
        created_ms: r.try_get(3)?,
    })
}

/// A tool's entry: its current version and whether it is disabled
/// (`tenant, name, current, disabled, updated_ms`; `disabled` a boolean,
/// or SQLite's integer).
pub(crate) fn tool_entry_row<R>(r: &R) -> Result<ToolEntry, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ToolEntry {
        tenant: r.try_get(0)?,
        name: r.try_get(1)?,
        current: r.try_get(2)?,
        disabled: r.try_get(3)?,
        updated_ms: r.try_get(4)?,
    })
}
