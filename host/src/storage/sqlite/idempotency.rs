//! Idempotency keys and their answers.

#[allow(unused_imports)]
use super::*;

impl IdempotencyStore for SqliteStorage {
    fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expires_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'_, Result<IdempotencyBegin>> {
        let (tenant, key, fingerprint) =
            (tenant.to_string(), key.to_string(), fingerprint.to_string());
        Box::pin(self.writer.run(move |w| {
            commit::idempotency_begin(
                &mut w.conn,
                &tenant,
                &key,
                &fingerprint,
                now_ms,
                expires_ms,
                stale_before_ms,
            )
            .map_err(writer::db)
        }))
    }
    fn idempotency_abandon(&self, tenant: &str, key: &str) -> BoxFuture<'_, Result<()>> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        Box::pin(async move {
            sqlx::query(
                "DELETE FROM idempotency WHERE tenant = ? AND key = ? AND state = 'running'",
            )
            .bind(tenant)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        })
    }
    fn idempotency_finish(&self, done: IdempotencyDone) -> BoxFuture<'_, Result<()>> {
        Box::pin(
            self.writer.run_durable(move |w| {
                commit::finish_idempotency(&w.conn, &done).map_err(writer::db)
            }),
        )
    }
}
