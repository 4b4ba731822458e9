//! Stored policy versions.

#[allow(unused_imports)]
use super::*;

impl PolicyStore for SqliteStorage {
    fn policy_put(&self, name: &str, text: &str, time_ms: i64) -> BoxFuture<'_, Result<i64>> {
        let (name, text) = (name.to_string(), text.to_string());
        Box::pin(async move {
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO policies (name, text, created_ms) VALUES (?, ?, ?) RETURNING version",
            )
            .bind(name)
            .bind(text)
            .bind(time_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            Ok(version)
        })
    }
    fn policy_current(&self) -> BoxFuture<'_, Result<Option<StoredPolicy>>> {
        Box::pin(async move {
            let row = sqlx::query(crate::storage::POLICY_CURRENT)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            row.as_ref()
                .map(crate::storage::policy_row)
                .transpose()
                .map_err(db)
        })
    }
}
