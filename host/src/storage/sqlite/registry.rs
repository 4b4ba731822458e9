//! The tool registry: content-addressed blobs, immutable versions, names.

#[allow(unused_imports)]
use super::*;

impl RegistryStore for SqliteStorage {
    fn blob_put<'a>(&'a self, digest: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO blobs (digest, bytes) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
            )
            .bind(digest)
            .bind(bytes)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        })
    }
    fn blob_get(&self, digest: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>>> {
        let digest = digest.to_string();
        Box::pin(async move {
            sqlx::query_scalar("SELECT bytes FROM blobs WHERE digest = ?")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)
        })
    }
    fn tool_register(&self, v: ToolVersion, deploy: bool) -> BoxFuture<'_, Result<Registered>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT digest FROM tool_versions WHERE tenant = ? AND name = ? AND version = ?",
            )
            .bind(&v.tenant)
            .bind(&v.name)
            .bind(&v.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let outcome = match existing {
                Some(d) if d == v.digest => Registered::Exists,
                Some(d) => return Ok(Registered::Conflict { digest: d }),
                None => {
                    sqlx::query(
                        "INSERT INTO tool_versions (tenant, name, version, digest, docs, artifact, engine, functions, created_ms)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&v.tenant)
                    .bind(&v.name)
                    .bind(&v.version)
                    .bind(&v.digest)
                    .bind(&v.docs)
                    .bind(&v.artifact)
                    .bind(&v.engine)
                    .bind(serde_json::to_string(&v.functions).unwrap_or_default())
                    .bind(v.created_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    Registered::Created
                }
            };
            if deploy {
                sqlx::query(
                    "INSERT INTO tools (tenant, name, current, disabled, updated_ms) VALUES (?, ?, ?, 0, ?)
                     ON CONFLICT (tenant, name) DO UPDATE SET current = excluded.current, updated_ms = excluded.updated_ms",
                )
                .bind(&v.tenant)
                .bind(&v.name)
                .bind(&v.version)
                .bind(v.created_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            Ok(outcome)
        })
    }
    fn tool_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> BoxFuture<'_, Result<Option<ToolVersion>>> {
        let (tenant, name, version) = (tenant.to_string(), name.to_string(), version.to_string());
        Box::pin(async move {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM tool_versions WHERE tenant = ? AND name = ? AND version = ?"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            row.as_ref().map(tool_version_row).transpose().map_err(db)
        })
    }
    fn tool_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> BoxFuture<'_, Result<Vec<ToolVersion>>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        Box::pin(async move {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM tool_versions WHERE tenant = ? AND name = ? ORDER BY created_ms, version"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            rows.iter()
                .map(tool_version_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
    fn tool_get(&self, tenant: &TenantId, name: &str) -> BoxFuture<'_, Result<Option<ToolEntry>>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT tenant, name, current, disabled, updated_ms FROM tools WHERE tenant = ? AND name = ?",
            )
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            row.as_ref().map(tool_entry_row).transpose().map_err(db)
        })
    }
    fn tool_list(&self, tenant: &TenantId) -> BoxFuture<'_, Result<Vec<ToolEntry>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT tenant, name, current, disabled, updated_ms FROM tools WHERE tenant = ? ORDER BY name",
            )
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(tool_entry_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
    fn tool_update(
        &self,
        tenant: &TenantId,
        name: &str,
        version: Option<&str>,
        disabled: Option<bool>,
    ) -> BoxFuture<'_, Result<bool>> {
        let (tenant, name, version) = (
            tenant.to_string(),
            name.to_string(),
            version.map(str::to_string),
        );
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            if let Some(v) = &version {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT digest FROM tool_versions WHERE tenant = ? AND name = ? AND version = ?")
                        .bind(&tenant)
                        .bind(&name)
                        .bind(v)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                if exists.is_none() {
                    return Ok(false);
                }
            }
            let now = crate::clock::now_ms();
            let n = sqlx::query(
                "UPDATE tools SET current = coalesce(?, current), disabled = coalesce(?, disabled), updated_ms = ?
                 WHERE tenant = ? AND name = ?",
            )
            .bind(&version)
            .bind(disabled.map(i64::from))
            .bind(now)
            .bind(&tenant)
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            tx.commit().await.map_err(db)?;
            Ok(n > 0)
        })
    }
    fn tool_set_artifact(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
        artifact: &str,
        engine: &str,
    ) -> BoxFuture<'_, Result<()>> {
        let args = [tenant, name, version, artifact, engine].map(str::to_string);
        Box::pin(async move {
            let [tenant, name, version, artifact, engine] = args;
            sqlx::query("UPDATE tool_versions SET artifact = ?, engine = ? WHERE tenant = ? AND name = ? AND version = ?")
                .bind(artifact)
                .bind(engine)
                .bind(tenant)
                .bind(name)
                .bind(version)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(())
        })
    }
}
