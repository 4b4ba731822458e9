//! Human-approval requests.

#[allow(unused_imports)]
use super::*;

impl ApprovalStore for SqliteStorage {
    fn approval_get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant = ? AND id = ?"
            )))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            row.as_ref().map(approval_row).transpose().map_err(db)
        })
    }
    fn approval_list(
        &self,
        tenant: &TenantId,
        status: Option<ApprovalStatus>,
        now_ms: i64,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>> {
        // ?1 tenant, ?2 stored status, ?3 now, ?4 limit, ?5/?6 the cursor.
        // (`expired`: stored so by the reaper, or pending past its expiry.)
        let (stored, when) = match status {
            None => (None, ""),
            Some(ApprovalStatus::Pending) => (status, "AND expires_ms > ?3"),
            Some(ApprovalStatus::Expired) => (
                None,
                "AND (status = 'expired' OR (status = 'pending' AND expires_ms <= ?3))",
            ),
            Some(_) => (status, ""),
        };
        let tenant = tenant.clone();
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE tenant = ?1 AND (?2 IS NULL OR status = ?2) {when}
                   AND (?5 IS NULL OR (created_ms, id) < (?5, ?6))
                 ORDER BY created_ms DESC, id DESC LIMIT ?4"
            )))
            .bind(tenant)
            .bind(stored)
            .bind(now_ms)
            .bind(limit)
            .bind(before.as_ref().map(|b| b.0))
            .bind(before.map(|b| b.1))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(approval_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }

    fn approvals_due(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE status = 'pending' AND expires_ms <= ? ORDER BY expires_ms LIMIT ?"
            )))
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(approval_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
}
