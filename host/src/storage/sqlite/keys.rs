//! API keys (stored as hashes).

#[allow(unused_imports)]
use super::*;

impl KeyStore for SqliteStorage {
    fn key_put(&self, k: ApiKeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO api_keys (id, tenant, roles, hash, label, created_ms, revoked_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.id)
            .bind(&k.tenant)
            .bind(k.roles.join(","))
            .bind(&k.hash)
            .bind(&k.label)
            .bind(k.created_ms)
            .bind(k.revoked_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        })
    }
    fn key_get(&self, id: &KeyId) -> BoxFuture<'_, Result<Option<ApiKeyRecord>>> {
        let id = id.to_string();
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, tenant, roles, hash, label, created_ms, revoked_ms FROM api_keys WHERE id = ?",
            )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            row.as_ref().map(key_row).transpose().map_err(db)
        })
    }
    fn key_list(&self, tenant: Option<&TenantId>) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>>> {
        let tenant = tenant.cloned();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, tenant, roles, hash, label, created_ms, revoked_ms FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, created_ms",
            )
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(key_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
    fn key_revoke(&self, id: &KeyId, time_ms: i64) -> BoxFuture<'_, Result<bool>> {
        let id = id.to_string();
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE api_keys SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL",
            )
            .bind(time_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
            Ok(n > 0)
        })
    }
}
