//! The outbox.

#[allow(unused_imports)]
use super::*;

impl OutboxStore for SqliteStorage {
    fn outbox_claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>> {
        let owner = owner.to_string();
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE outbox SET owner = ?1, lease_until = ?3
                 WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND next_ms <= ?2
                                AND (lease_until IS NULL OR lease_until < ?2) ORDER BY next_ms LIMIT ?4)
                 RETURNING {OUTBOX_COLUMNS}"
            )))
            .bind(owner)
            .bind(now_ms)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(outbox_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }

    fn outbox_attempt(
        &self,
        id: i64,
        owner: &str,
        now_ms: i64,
        attempt: Attempt,
    ) -> BoxFuture<'_, Result<()>> {
        let owner = owner.to_string();
        let (state, next_ms, error, delivered): (&str, Option<i64>, Option<String>, Option<i64>) =
            match attempt {
                Attempt::Delivered { .. } => ("delivered", None, None, Some(now_ms)),
                Attempt::Retry { next_ms, error } => ("pending", Some(next_ms), Some(error), None),
                Attempt::Failed { error } => ("failed", None, Some(error), None),
            };
        Box::pin(async move {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, state = ?, next_ms = coalesce(?, next_ms),
                   last_error = coalesce(?, last_error), delivered_ms = ?, owner = NULL, lease_until = NULL
                 WHERE id = ? AND owner = ? AND state = 'pending'",
            )
            .bind(state)
            .bind(next_ms)
            .bind(error)
            .bind(delivered)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn outbox_sweep(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM outbox WHERE state IN ('delivered', 'failed') AND created_ms < ?",
            )
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected())
        })
    }

    fn outbox_for(
        &self,
        tenant: &str,
        invocation_id: &str,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>> {
        let (tenant, invocation_id) = (tenant.to_string(), invocation_id.to_string());
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE tenant = ? AND invocation_id = ? ORDER BY id"
            )))
            .bind(tenant)
            .bind(invocation_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(outbox_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
}
