//! Small named values (the pinned audit key, settings) and the backend's health.

#[allow(unused_imports)]
use super::*;

impl MetaStore for SqliteStorage {
    fn meta_get(&self, key: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move {
            sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)
        })
    }
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // A read on the pool, then a round trip through the writer and
            // the WAL syncer (an fsync of a clean file is cheap): a stopped
            // thread or a failed fsync answers with its error.
            sqlx::query_scalar::<_, i64>("SELECT 1")
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
            self.writer.run_durable(|_| Ok(())).await
        })
    }
    fn meta_init(&self, key: &str, value: &str) -> BoxFuture<'_, Result<String>> {
        let (key, value) = (key.to_string(), value.to_string());
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
                .bind(&key)
                .bind(&value)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(v)
        })
    }
}
