//! The store traits on PostgreSQL: reads on the pool, rare writes each in
//! a statement or transaction of their own; the hot writes in
//! [`super::commit`].

#[allow(unused_imports)]
use super::*;
use sqlx::Row;

impl AuditStore for PostgresStorage {
    fn audit_commit(
        &self,
        works: Vec<Work>,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<Result<Vec<StoredEntry>>>>> {
        Box::pin(self.commit_works(works, notary))
    }
    fn audit_registry(&self) -> BoxFuture<'_, Result<Option<Signed>>> {
        Box::pin(async move {
            let text: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit.registry'")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db)?;
            Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
        })
    }
    fn audit_registry_put(&self, registry: Signed) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            transact!(self, true, |tx| {
                commit::registry_put(&mut tx, &registry).await?;
                ((), true)
            })
        })
    }
    fn audit_resign(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            transact!(self, true, |tx| {
                for c in &checkpoints {
                    if c.kind == "head" {
                        sqlx::query(
                            "UPDATE audit_heads SET signed_seq = $2, signed_hash = $3, signed_time_ms = $4,
                               signature = $5, signed_statement = $6 WHERE chain = $1",
                        )
                        .bind(&c.chain)
                        .bind(c.seq)
                        .bind(&c.hash)
                        .bind(c.time_ms)
                        .bind(&c.signature)
                        .bind(&c.statement)
                        .execute(&mut *tx)
                        .await?;
                    } else {
                        sqlx::query(
                            "UPDATE audit_checkpoints SET signature = $5, statement = $6
                             WHERE chain = $1 AND seq = $2 AND hash = $3 AND kind = $4 AND statement IS NULL",
                        )
                        .bind(&c.chain)
                        .bind(c.seq)
                        .bind(&c.hash)
                        .bind(&c.kind)
                        .bind(&c.signature)
                        .bind(&c.statement)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                ((), true)
            })
        })
    }
    fn audited_tenants(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT t FROM (SELECT tenant FROM invocations UNION SELECT tenant FROM approvals) x(t) ORDER BY t COLLATE \"C\"",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)
        })
    }
    fn audit_read(
        &self,
        chain: &str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>> {
        let chain = chain.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT chain, seq, time_ms, body, prev_hash, hash FROM audit_entries
                 WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(chain)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(entry_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
    fn audit_range(
        &self,
        chain: &str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>> {
        let chain = chain.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT chain, seq, time_ms, body, prev_hash, hash FROM audit_entries
                 WHERE chain = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
            )
            .bind(chain)
            .bind(after)
            .bind(upto)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(entry_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
    fn audit_chains(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT c FROM (SELECT chain FROM audit_heads UNION SELECT DISTINCT chain FROM audit_entries) x(c) ORDER BY c COLLATE \"C\"",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)
        })
    }
    fn checkpoints(&self, chain: &str) -> BoxFuture<'_, Result<Vec<Checkpoint>>> {
        let chain = chain.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT chain, seq, hash, time_ms, signature, kind, statement FROM
                   (SELECT chain, seq, hash, time_ms, signature, kind, statement, 0 AS g, id AS o
                      FROM audit_checkpoints WHERE chain = $1
                    UNION ALL
                    SELECT chain, seq, hash, 0, '', 'tip', '', 1, 0 FROM audit_heads WHERE chain = $1
                    UNION ALL
                    SELECT chain, signed_seq, signed_hash, signed_time_ms, signature, 'head',
                           signed_statement, 2, 0
                      FROM audit_heads WHERE chain = $1 AND signature IS NOT NULL) x
                 ORDER BY g, seq, o",
            )
            .bind(chain)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(|r| {
                    Ok(Checkpoint {
                        chain: r.try_get(0)?,
                        seq: r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
                        hash: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                        time_ms: r.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
                        signature: r.try_get(4)?,
                        kind: r.try_get(5)?,
                        statement: r.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
                    })
                })
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(db)
        })
    }
    fn audit_prune(&self, anchor: Checkpoint) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            transact!(self, true, |tx| {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind, statement)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&anchor.chain)
                .bind(anchor.seq)
                .bind(&anchor.hash)
                .bind(anchor.time_ms)
                .bind(&anchor.signature)
                .bind(&anchor.kind)
                .bind(&anchor.statement)
                .execute(&mut *tx)
                .await?;
                let n = sqlx::query("DELETE FROM audit_entries WHERE chain = $1 AND seq <= $2")
                    .bind(&anchor.chain)
                    .bind(anchor.seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(
                    "DELETE FROM audit_checkpoints WHERE chain = $1 AND kind = 'periodic' AND seq < $2",
                )
                .bind(&anchor.chain)
                .bind(anchor.seq)
                .execute(&mut *tx)
                .await?;
                (n, true)
            })
        })
    }
}

impl BudgetStore for PostgresStorage {
    fn budget_charge(&self, used: Vec<Charge>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            transact!(self, true, |tx| {
                commit::settle(&mut tx, &[], &used).await?;
                ((), true)
            })
        })
    }
    fn budget_usage(&self, scope: &LedgerScope) -> BoxFuture<'_, Result<Vec<Usage>>> {
        let scope = scope.clone();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT scope, win, metric, used, reserved FROM budget WHERE scope = $1 ORDER BY win COLLATE \"C\", metric COLLATE \"C\"",
            )
            .bind(scope)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .filter_map(|r| usage_row(r).transpose())
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(db)
        })
    }
}

impl RegistryStore for PostgresStorage {
    fn blob_put<'a>(&'a self, digest: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO blobs (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
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
            sqlx::query_scalar("SELECT bytes FROM blobs WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)
        })
    }
    fn tool_register(&self, v: ToolVersion, deploy: bool) -> BoxFuture<'_, Result<Registered>> {
        Box::pin(async move {
            transact!(self, true, |tx| {
                // The version's key, locked (or inserted) first: two
                // registrations of one version decide one after the other.
                let inserted = sqlx::query(
                    "INSERT INTO tool_versions (tenant, name, version, digest, docs, artifact, engine, functions, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (tenant, name, version) DO NOTHING",
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
                .await?
                .rows_affected();
                let outcome = if inserted == 1 {
                    Registered::Created
                } else {
                    let d: String = sqlx::query_scalar(
                        "SELECT digest FROM tool_versions WHERE tenant = $1 AND name = $2 AND version = $3",
                    )
                    .bind(&v.tenant)
                    .bind(&v.name)
                    .bind(&v.version)
                    .fetch_one(&mut *tx)
                    .await?;
                    if d == v.digest {
                        Registered::Exists
                    } else {
                        Registered::Conflict { digest: d }
                    }
                };
                let conflict = matches!(outcome, Registered::Conflict { .. });
                if deploy && !conflict {
                    sqlx::query(
                        "INSERT INTO tools (tenant, name, current, disabled, updated_ms) VALUES ($1, $2, $3, false, $4)
                         ON CONFLICT (tenant, name) DO UPDATE SET current = excluded.current, updated_ms = excluded.updated_ms",
                    )
                    .bind(&v.tenant)
                    .bind(&v.name)
                    .bind(&v.version)
                    .bind(v.created_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                (outcome, !conflict)
            })
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
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM tool_versions WHERE tenant = $1 AND name = $2 AND version = $3"
            )))
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
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM tool_versions WHERE tenant = $1 AND name = $2
                 ORDER BY created_ms, version COLLATE \"C\""
            )))
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
                "SELECT tenant, name, current, disabled, updated_ms FROM tools WHERE tenant = $1 AND name = $2",
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
                "SELECT tenant, name, current, disabled, updated_ms FROM tools WHERE tenant = $1
                 ORDER BY name COLLATE \"C\"",
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
            let now = crate::clock::now_ms();
            // One statement: the version must exist (when given).
            let n = sqlx::query(
                "UPDATE tools SET current = coalesce($1, current), disabled = coalesce($2, disabled), updated_ms = $3
                 WHERE tenant = $4 AND name = $5
                   AND ($1::text IS NULL OR EXISTS (SELECT 1 FROM tool_versions v
                        WHERE v.tenant = $4 AND v.name = $5 AND v.version = $1))",
            )
            .bind(&version)
            .bind(disabled)
            .bind(now)
            .bind(&tenant)
            .bind(&name)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
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
            sqlx::query(
                "UPDATE tool_versions SET artifact = $1, engine = $2 WHERE tenant = $3 AND name = $4 AND version = $5",
            )
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

impl KeyStore for PostgresStorage {
    fn key_put(&self, k: ApiKeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO api_keys (id, tenant, roles, hash, label, created_ms, revoked_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
                "SELECT id, tenant, roles, hash, label, created_ms, revoked_ms FROM api_keys WHERE id = $1",
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
                "SELECT id, tenant, roles, hash, label, created_ms, revoked_ms FROM api_keys
                 WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant COLLATE \"C\", created_ms",
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
                "UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
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

/// A running row as the reaper needs it; a row that does not decode is
/// skipped, and said so, rather than stopping the reaper.
fn lost_row(r: &PgRow) -> Option<Lost> {
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
            admitted: r.try_get(13)?,
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

const LOST_SELECT: &str = "SELECT i.id, i.tenant, i.tool, i.function, i.version, i.workflow, i.task_id,
        i.principal, i.transport, i.idempotency_key, i.created_ms, i.owner, i.lease_until, i.admitted,
        a.id, a.callback_url
 FROM invocations i LEFT JOIN approvals a ON a.invocation_id = i.id";

impl InvocationStore for PostgresStorage {
    fn invocation_get(
        &self,
        tenant: &TenantId,
        id: &InvocationId,
    ) -> BoxFuture<'_, Result<Option<InvocationRecord>>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {INVOCATION_COLUMNS} FROM invocations WHERE id = $1 AND tenant = $2"
            )))
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
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {INVOCATION_COLUMNS} FROM invocations
                 WHERE tenant = $1 AND pos < $2
                   AND ($3::text IS NULL OR tool = $3) AND ($4::text IS NULL OR status = $4)
                   AND ($5::text IS NULL OR workflow = $5) AND ($6::text IS NULL OR task_id = $6)
                   AND ($8::text IS NULL OR error_kind = $8)
                   AND ($9::bigint IS NULL OR created_ms >= $9) AND ($10::bigint IS NULL OR created_ms < $10)
                 ORDER BY pos DESC LIMIT $7"
            )))
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
            // The two figures are read from the stored response by the
            // shared `sample_of` (a response that is not JSON gives none).
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {INVOCATION_COLUMNS} FROM invocations
                 WHERE tenant = $1 AND created_ms >= $2 AND created_ms < $3
                   AND ($4::text IS NULL OR tool = $4) AND ($5::text IS NULL OR function = $5)
                   AND ($6::text IS NULL OR workflow = $6)
                 ORDER BY created_ms DESC, pos DESC LIMIT $7"
            )))
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
            rows.iter()
                .map(|r| invocation_row(r).map(|(_, rec)| sample_of(&rec)))
                .collect::<std::result::Result<_, _>>()
                .map_err(db)
        })
    }
    fn invocation_admit(
        &self,
        admit: Admit,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Refused>>> {
        Box::pin(self.admit(admit))
    }
    fn invocation_renew(
        &self,
        owner: &str,
        ids: Vec<InvocationId>,
        lease_until: i64,
    ) -> BoxFuture<'_, Result<u64>> {
        let owner = owner.to_string();
        Box::pin(async move {
            // Not durable on its own: a renewal lost with a database crash
            // is renewed again a third of a lease later.
            transact!(self, false, |tx| {
                // Rows locked in id order, as a completion batch locks them
                // (an UPDATE alone would lock them in scan order).
                let n = sqlx::query(
                    "UPDATE invocations SET lease_until = $1
                     WHERE id IN (SELECT id FROM invocations
                                  WHERE id = ANY($2) AND owner = $3 AND status = 'running'
                                  ORDER BY id FOR UPDATE)",
                )
                .bind(lease_until)
                .bind(&ids)
                .bind(&owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                (n, true)
            })
        })
    }
    fn invocation_expired(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<Lost>>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{LOST_SELECT} WHERE i.status = 'running' AND i.lease_until < $1 ORDER BY i.lease_until LIMIT $2"
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
                "{LOST_SELECT} WHERE i.id = $1 AND i.status = 'running'"
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
        Box::pin(async move {
            transact!(self, true, |tx| {
                let row = sqlx::query(
                    "SELECT status, owner, lease_until, admitted, tenant, idempotency_key
                     FROM invocations WHERE id = $1 FOR UPDATE",
                )
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    None => (false, false),
                    Some(r) => {
                        let state = RowState {
                            status: Status::parse(&r.try_get::<String, _>(0)?),
                            owner: r.try_get(1)?,
                            lease_until: r.try_get(2)?,
                        };
                        let admitted: bool = r.try_get(3)?;
                        if admitted || !check(&expect, Some(&state)) {
                            (false, false)
                        } else {
                            let tenant: String = r.try_get(4)?;
                            let key: Option<String> = r.try_get(5)?;
                            sqlx::query("DELETE FROM invocations WHERE id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            if let Some(key) = key {
                                sqlx::query(
                                    "DELETE FROM idempotency WHERE tenant = $1 AND key = $2 AND invocation_id = $3",
                                )
                                .bind(&tenant)
                                .bind(&key)
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            }
                            (true, true)
                        }
                    }
                }
            })
        })
    }
}

impl PolicyStore for PostgresStorage {
    fn policy_put(&self, name: &str, text: &str, time_ms: i64) -> BoxFuture<'_, Result<i64>> {
        let (name, text) = (name.to_string(), text.to_string());
        Box::pin(async move {
            sqlx::query_scalar(
                "INSERT INTO policies (name, text, created_ms) VALUES ($1, $2, $3) RETURNING version",
            )
            .bind(name)
            .bind(text)
            .bind(time_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
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

impl IdempotencyStore for PostgresStorage {
    fn idempotency_begin(&self, begin: KeyBegin) -> BoxFuture<'_, Result<IdempotencyBegin>> {
        Box::pin(self.idempotency_begin_tx(begin))
    }
}

impl ApprovalStore for PostgresStorage {
    fn approval_get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant = $1 AND id = $2"
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
        // $1 tenant, $2 stored status, $3 now, $4 limit, $5/$6 the cursor.
        let (stored, when) = match status {
            None => (None, ""),
            Some(ApprovalStatus::Pending) => (status, "AND expires_ms > $3"),
            Some(ApprovalStatus::Expired) => (
                None,
                "AND (status = 'expired' OR (status = 'pending' AND expires_ms <= $3))",
            ),
            Some(_) => (status, ""),
        };
        let tenant = tenant.clone();
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) AND $3::bigint IS NOT NULL {when}
                   AND ($5::bigint IS NULL OR (created_ms, id COLLATE \"C\") < ($5, $6::text COLLATE \"C\"))
                 ORDER BY created_ms DESC, id COLLATE \"C\" DESC LIMIT $4"
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
                 WHERE status = 'pending' AND expires_ms <= $1 ORDER BY expires_ms LIMIT $2"
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

impl CacheStore for PostgresStorage {
    fn cache_get(
        &self,
        tenant: &TenantId,
        key: &str,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<String>>> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT result FROM result_cache WHERE tenant = $1 AND key = $2 AND expires_ms > $3",
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
            // Expired idempotency keys go with the reaper's sweep too
            // (starting a key treats an expired one as new meanwhile).
            sqlx::query("DELETE FROM idempotency WHERE expires_ms <= $1")
                .bind(now_ms)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(
                sqlx::query("DELETE FROM result_cache WHERE expires_ms <= $1")
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?
                    .rows_affected(),
            )
        })
    }
}

impl MetaStore for PostgresStorage {
    fn meta_get(&self, key: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move {
            sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)
        })
    }
    fn meta_init(&self, key: &str, value: &str) -> BoxFuture<'_, Result<String>> {
        let (key, value) = (key.to_string(), value.to_string());
        Box::pin(async move {
            transact!(self, true, |tx| {
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                )
                .bind(&key)
                .bind(&value)
                .execute(&mut *tx)
                .await?;
                let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                    .bind(&key)
                    .fetch_one(&mut *tx)
                    .await?;
                (v, true)
            })
        })
    }
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Reachable, and a primary (a standby cannot write).
            let probe = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&self.pool);
            let standby: bool = tokio::time::timeout(HEALTH_DEADLINE, probe)
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("the database did not answer within {HEALTH_DEADLINE:?}"),
                    )
                })?
                .map_err(db)?;
            if standby {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the database is a read-only standby",
                ));
            }
            Ok(())
        })
    }
    fn lead(&self, role: &str) -> BoxFuture<'_, Result<bool>> {
        let role = role.to_string();
        Box::pin(async move { self.lead_role(&role).await })
    }
}

impl OutboxStore for PostgresStorage {
    fn outbox_claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<OutboxMessage>>> {
        let owner = owner.to_string();
        Box::pin(async move {
            // SKIP LOCKED: hosts claiming at once take different messages.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE outbox SET owner = $1, lease_until = $3
                 WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND next_ms <= $2
                                AND (lease_until IS NULL OR lease_until < $2) ORDER BY next_ms LIMIT $4
                              FOR UPDATE SKIP LOCKED)
                 RETURNING {OUTBOX_COLUMNS}"
            )))
            .bind(owner)
            .bind(now_ms)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let mut out: Vec<OutboxMessage> = rows
                .iter()
                .map(outbox_row)
                .collect::<std::result::Result<_, _>>()
                .map_err(db)?;
            out.sort_by_key(|m| m.id);
            Ok(out)
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
                "UPDATE outbox SET attempts = attempts + 1, state = $1, next_ms = coalesce($2, next_ms),
                   last_error = coalesce($3, last_error), delivered_ms = $4, owner = NULL, lease_until = NULL
                 WHERE id = $5 AND owner = $6 AND state = 'pending'",
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
                "DELETE FROM outbox WHERE state IN ('delivered', 'failed') AND created_ms < $1",
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
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE tenant = $1 AND invocation_id = $2 ORDER BY id"
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
