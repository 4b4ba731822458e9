//! The result cache.

#[allow(unused_imports)]
use super::*;

impl CacheStore for SqliteStorage {
    fn cache_get(
        &self,
        tenant: &TenantId,
        key: &str,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<String>>> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT result FROM result_cache WHERE tenant = ? AND key = ? AND expires_ms > ?",
            )
            .bind(tenant)
            .bind(key)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
        })
    }

    fn cache_sweep(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            Ok(
                sqlx::query("DELETE FROM result_cache WHERE expires_ms <= ?")
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?
                    .rows_affected(),
            )
        })
    }
}
