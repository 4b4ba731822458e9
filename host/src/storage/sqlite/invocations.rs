//! Invocation records: one row per invocation, from admission to its end.

#[allow(unused_imports)]
use super::*;
use rusqlite::OptionalExtension;

const LOST_SELECT: &str = "SELECT i.id, i.tenant, i.tool, i.function, i.version, i.workflow, i.task_id,
        i.principal, i.transport, i.idempotency_key, i.created_ms, i.owner, i.lease_until, i.admitted,
        a.id, a.callback_url
 FROM invocations i LEFT JOIN approvals a ON a.invocation_id = i.id";

/// A running row as the reaper needs it; a row that does not decode (the
/// database was edited) is skipped, and said so, rather than stopping the
/// reaper.
fn lost_row(r: &sqlx::sqlite::SqliteRow) -> Option<Lost> {
    let decoded = (|| -> std::result::Result<Lost, sqlx::Error> {
        Ok(Lost {
            run: NewRun {
                id: r.try_get(0)?,
                tenant: r.try_get(1)?,
                tool: r.try_get(2)?,
                function: r.try_get(3)?,
                version: r.try_get(4)?,
                workflow: r.try_get(5)?,
                task_id: r.try_get(6)?,
                principal: r.try_get(7)?,
                transport: r
                    .try_get::<Option<String>, _>(8)?
                    .unwrap_or_else(|| "http".into()),
                idempotency_key: r.try_get(9)?,
                created_ms: r.try_get(10)?,
                owner: r.try_get::<Option<String>, _>(11)?.unwrap_or_default(),
                lease_until: r.try_get::<Option<i64>, _>(12)?.unwrap_or(0),
            },
            admitted: r.try_get::<i64, _>(13)? != 0,
            approval_id: r.try_get(14)?,
            callback_url: r.try_get(15)?,
        })
    })();
    match decoded {
        Ok(lost) => Some(lost),
        Err(e) => {
            let id: Option<String> = r.try_get(0).ok();
            tracing::error!(invocation_id = ?id, "a running invocation row does not decode (the database was edited): {e}");
            None
        }
    }
}

impl InvocationStore for SqliteStorage {
    fn invocation_get(
        &self,
        tenant: &TenantId,
        id: &InvocationId,
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
            row.as_ref()
                .map(|r| invocation_row(r).map(|(_, rec)| rec))
                .transpose()
                .map_err(db)
        })
    }
    fn invocation_list(
        &self,
        tenant: &TenantId,
        f: InvocationFilter,
    ) -> BoxFuture<'_, Result<Vec<(i64, InvocationRecord)>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT pos, id, tenant, tool, function, version, workflow, task_id, principal, status, error_kind, created_ms, response FROM invocations
                 WHERE tenant = ?1 AND pos < ?2
                   AND (?3 IS NULL OR tool = ?3) AND (?4 IS NULL OR status = ?4)
                   AND (?5 IS NULL OR workflow = ?5) AND (?6 IS NULL OR task_id = ?6)
                   AND (?8 IS NULL OR error_kind = ?8)
                   AND (?9 IS NULL OR created_ms >= ?9) AND (?10 IS NULL OR created_ms < ?10)
                 ORDER BY pos DESC LIMIT ?7",
            )
            .bind(tenant)
            .bind(f.before.unwrap_or(i64::MAX))
            .bind(f.tool)
            .bind(f.status)
            .bind(f.workflow)
            .bind(f.task_id)
            .bind(f.limit)
            .bind(f.error_kind)
            .bind(f.since_ms)
            .bind(f.until_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(invocation_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }

    fn invocation_samples(
        &self,
        tenant: &TenantId,
        f: SampleFilter,
    ) -> BoxFuture<'_, Result<Vec<InvocationSample>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            // The two numbers come from the stored response, as
            // `sample_of` reads them (a response that is not JSON, or has
            // no such number, gives NULL).
            let rows = sqlx::query(
                "SELECT tool, function, workflow, task_id, status, error_kind, created_ms,
                        CASE WHEN json_valid(response) THEN json_extract(response, '$.usage.wall_ms') END,
                        CASE WHEN json_valid(response) THEN json_extract(response, '$.charged.cost_micro_usd') END
                 FROM invocations INDEXED BY invocations_created
                 WHERE tenant = ?1 AND created_ms >= ?2 AND created_ms < ?3
                   AND (?4 IS NULL OR tool = ?4) AND (?5 IS NULL OR function = ?5)
                   AND (?6 IS NULL OR workflow = ?6)
                 ORDER BY created_ms DESC, pos DESC LIMIT ?7",
            )
            .bind(tenant)
            .bind(f.since_ms)
            .bind(f.until_ms)
            .bind(f.tool)
            .bind(f.function)
            .bind(f.workflow)
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let int = |r: &sqlx::sqlite::SqliteRow, i: usize| -> Option<i64> {
                // json_extract gives an integer, a real (a float in the
                // JSON) or text; only whole numbers count.
                r.try_get::<Option<i64>, _>(i).ok().flatten()
            };
            rows.iter()
                .map(|r| {
                    Ok(InvocationSample {
                        tool: r.try_get(0)?,
                        function: r.try_get(1)?,
                        workflow: r.try_get(2)?,
                        task_id: r.try_get(3)?,
                        status: r.try_get(4)?,
                        error_kind: r.try_get(5)?,
                        created_ms: r.try_get(6)?,
                        wall_ms: int(r, 7),
                        cost_micro_usd: int(r, 8),
                    })
                })
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(db)
        })
    }

    fn invocation_admit(
        &self,
        admit: Admit,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Refused>>> {
        Box::pin(self.writer.admit(admit))
    }

    fn invocation_renew(
        &self,
        owner: &str,
        ids: Vec<InvocationId>,
        lease_until: i64,
    ) -> BoxFuture<'_, Result<u64>> {
        let owner = owner.to_string();
        Box::pin(self.writer.run(move |w| {
            let tx = w
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(writer::db)?;
            let mut n = 0;
            {
                let mut renew = tx
                    .prepare_cached(
                        "UPDATE invocations SET lease_until = ?
                         WHERE id = ? AND owner = ? AND status = 'running'",
                    )
                    .map_err(writer::db)?;
                for id in &ids {
                    n += renew
                        .execute(rusqlite::params![lease_until, id, owner])
                        .map_err(writer::db)? as u64;
                }
            }
            tx.commit().map_err(writer::db)?;
            Ok(n)
        }))
    }

    fn invocation_expired(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<Lost>>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{LOST_SELECT} WHERE i.status = 'running' AND i.lease_until < ? ORDER BY i.lease_until LIMIT ?"
            )))
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().filter_map(lost_row).collect())
        })
    }

    fn invocation_running(&self, id: &InvocationId) -> BoxFuture<'_, Result<Option<Lost>>> {
        let id = id.to_string();
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{LOST_SELECT} WHERE i.id = ? AND i.status = 'running'"
            )))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            Ok(row.as_ref().and_then(lost_row))
        })
    }

    fn invocation_forget(&self, id: &InvocationId, expect: Expect) -> BoxFuture<'_, Result<bool>> {
        let id = id.to_string();
        Box::pin(self.writer.run(move |w| {
            let tx = w
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(writer::db)?;
            let row: Option<(RowState, i64, String, Option<String>)> = tx
                .query_row(
                    "SELECT status, owner, lease_until, admitted, tenant, idempotency_key
                     FROM invocations WHERE id = ?",
                    [&id],
                    |r| {
                        Ok((
                            RowState {
                                status: Status::parse(&r.get::<_, String>(0)?),
                                owner: r.get(1)?,
                                lease_until: r.get(2)?,
                            },
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(writer::db)?;
            let Some((state, admitted, tenant, key)) = row else {
                return Ok(false);
            };
            if admitted != 0 || !check(&expect, Some(&state)) {
                return Ok(false);
            }
            tx.execute("DELETE FROM invocations WHERE id = ?", [&id])
                .map_err(writer::db)?;
            if let Some(key) = key {
                tx.execute(
                    "DELETE FROM idempotency WHERE tenant = ? AND key = ? AND invocation_id = ?",
                    rusqlite::params![tenant, key, id],
                )
                .map_err(writer::db)?;
            }
            tx.commit().map_err(writer::db)?;
            Ok(true)
        }))
    }
}
