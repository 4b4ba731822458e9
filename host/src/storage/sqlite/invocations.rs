//! Invocation records: one row per invocation, from admission to its end.

#[allow(unused_imports)]
use super::*;

impl InvocationStore for SqliteStorage {
    fn invocation_get(
        &self,
        tenant: &str,
        id: &str,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT pos, id, tenant, tool, function, version, workflow, task_id, principal, status, error_kind, created_ms, response FROM invocations WHERE id = ? AND tenant = ?",
            )
            .bind(id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            Ok(row.as_ref().map(|r| invocation_row(r).1))
        })
    }
    fn invocation_list(
        &self,
        tenant: &str,
        f: InvocationFilter,
    ) -> BoxFuture<'_, Result<Vec<(i64, InvocationRecord)>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT pos, id, tenant, tool, function, version, workflow, task_id, principal, status, error_kind, created_ms, response FROM invocations
                 WHERE tenant = ?1 AND pos < ?2
                   AND (?3 IS NULL OR tool = ?3) AND (?4 IS NULL OR status = ?4)
                   AND (?5 IS NULL OR workflow = ?5) AND (?6 IS NULL OR task_id = ?6)
                 ORDER BY pos DESC LIMIT ?7",
            )
            .bind(tenant)
            .bind(f.before.unwrap_or(i64::MAX))
            .bind(f.tool)
            .bind(f.status)
            .bind(f.workflow)
            .bind(f.task_id)
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(invocation_row).collect())
        })
    }
}
