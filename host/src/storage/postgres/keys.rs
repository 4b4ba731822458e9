//! Idempotency keys: a keyed request's key and its running (unadmitted)
//! invocation row, written together.

use super::{PostgresStorage, transact};
use crate::error::Result;
use crate::storage::{IdempotencyBegin, KeyBegin, KeyRow, NewRun, decide};
use sqlx::{PgConnection, Row};

/// Write a new running row; false if the id is taken.
pub(super) async fn insert_running(
    tx: &mut PgConnection,
    run: &NewRun,
    admitted: bool,
    worst: Option<&str>,
) -> std::result::Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                  status, created_ms, response, owner, lease_until, admitted, worst,
                                  transport, idempotency_key, record_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, '{}', $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&run.id)
    .bind(&run.tenant)
    .bind(&run.tool)
    .bind(&run.function)
    .bind(&run.version)
    .bind(&run.workflow)
    .bind(&run.task_id)
    .bind(&run.principal)
    .bind(run.created_ms)
    .bind(&run.owner)
    .bind(run.lease_until)
    .bind(admitted)
    .bind(worst)
    .bind(&run.transport)
    .bind(&run.idempotency_key)
    .bind(i32::try_from(crate::record::RECORD_VERSION).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// [`crate::storage::IdempotencyStore::idempotency_begin`] in the caller's
/// transaction: the key's row locked (or its insertion raced: retried),
/// [`decide`] on it, and when the request starts, the key and its running
/// (unadmitted) invocation row stored.
pub(super) async fn idempotency_begin_in(
    tx: &mut PgConnection,
    b: &KeyBegin,
) -> std::result::Result<(Option<IdempotencyBegin>, bool), sqlx::Error> {
    let row = sqlx::query(
        "SELECT k.fingerprint, k.expires_ms, k.state, k.response, i.status
         FROM idempotency k LEFT JOIN invocations i ON i.id = k.invocation_id
         WHERE k.tenant = $1 AND k.key = $2 FOR UPDATE OF k",
    )
    .bind(&b.tenant)
    .bind(&b.key)
    .fetch_optional(&mut *tx)
    .await?;
    let stored = row
        .map(|r| -> std::result::Result<KeyRow, sqlx::Error> {
            let state: String = r.try_get(2)?;
            let answer = crate::storage::stored_answer(&state, r.try_get(3)?).map_err(|e| {
                sqlx::Error::ColumnDecode {
                    index: "state".into(),
                    source: e.into(),
                }
            })?;
            Ok(KeyRow {
                fingerprint: r.try_get(0)?,
                expires_ms: r.try_get(1)?,
                answer,
                invocation: r.try_get(4)?,
            })
        })
        .transpose()?;
    let answer = decide(stored.as_ref(), &b.fingerprint, b.now_ms);
    if answer == IdempotencyBegin::Started {
        // A new key: a concurrent first use of the same key makes this
        // insert fail (unique violation), and the retry finds theirs.
        let inserted = sqlx::query(
            "INSERT INTO idempotency (tenant, key, fingerprint, state, started_ms, expires_ms, invocation_id)
             VALUES ($1, $2, $3, 'running', $4, $5, $6)
             ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, state = 'running',
               http_status = NULL, response = NULL, started_ms = excluded.started_ms,
               expires_ms = excluded.expires_ms, invocation_id = excluded.invocation_id
             WHERE $7",
        )
        .bind(&b.tenant)
        .bind(&b.key)
        .bind(&b.fingerprint)
        .bind(b.now_ms)
        .bind(b.expires_ms)
        .bind(&b.run.id)
        .bind(stored.is_some())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Someone inserted it after our read: decide again on theirs.
            return Ok((None, false));
        }
        if !insert_running(tx, &b.run, false, None).await? {
            // The invocation id is taken (never, with fresh ids): refuse
            // rather than point the key at another's row.
            return Err(sqlx::Error::InvalidArgument(format!(
                "invocation id {} exists",
                b.run.id
            )));
        }
    }
    Ok((Some(answer), true))
}

impl PostgresStorage {
    pub(super) async fn idempotency_begin_tx(&self, b: KeyBegin) -> Result<IdempotencyBegin> {
        for _ in 0..super::ATTEMPTS {
            if let Some(answer) =
                transact!(self, false, |tx| idempotency_begin_in(&mut tx, &b).await?)?
            {
                return Ok(answer);
            }
        }
        Err(crate::Error::new(
            crate::ErrorKind::Unavailable,
            "the idempotency key is being started by several requests at once; retry",
        ))
    }
}
