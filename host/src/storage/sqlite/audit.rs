//! The audit chain: entries, heads, signed statements, the registry of chains.

#[allow(unused_imports)]
use super::*;

impl AuditStore for SqliteStorage {
    fn audit_commit(
        &self,
        works: Vec<Work>,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<Result<Vec<StoredEntry>>>>> {
        Box::pin(self.writer.commit(works, notary))
    }
    fn audit_registry(&self) -> BoxFuture<'_, Result<Option<Signed>>> {
        Box::pin(async move {
            let text: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit.registry'")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db)?;
            // An unparseable row reads as none: verification reports it.
            Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
        })
    }
    fn audit_registry_put(&self, registry: Signed) -> BoxFuture<'_, Result<()>> {
        Box::pin(
            self.writer
                .run_durable(move |w| commit::registry_put(&w.conn, &registry).map_err(writer::db)),
        )
    }
    fn audit_resign(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.writer.run_durable(move |w| {
            let tx = w
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(writer::db)?;
            for c in &checkpoints {
                let sql = if c.kind == "head" {
                    "UPDATE audit_heads SET signed_seq = ?2, signed_hash = ?3, signed_time_ms = ?4,
                       signature = ?5, signed_statement = ?6 WHERE chain = ?1"
                } else {
                    "UPDATE audit_checkpoints SET signature = ?5, statement = ?6
                     WHERE chain = ?1 AND seq = ?2 AND hash = ?3 AND kind = ?7 AND statement IS NULL"
                };
                let mut stmt = tx.prepare_cached(sql).map_err(writer::db)?;
                let n = stmt.parameter_count();
                let all: [&dyn rusqlite::ToSql; 7] = [
                    &c.chain,
                    &c.seq,
                    &c.hash,
                    &c.time_ms,
                    &c.signature,
                    &c.statement,
                    &c.kind,
                ];
                stmt.execute(&all[..n]).map_err(writer::db)?;
            }
            tx.commit().map_err(writer::db)
        }))
    }
    fn audited_tenants(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT DISTINCT tenant FROM invocations UNION SELECT DISTINCT tenant FROM approvals ORDER BY 1",
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
                 WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?",
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
            // A page comes back as one row, fields joined by U+001F and
            // entries by U+001E: per-row driver overhead, not SQLite, is what
            // bounds bulk reads. Safe because canonical JSON escapes every
            // control character, so neither separator can occur in a body.
            let packed: Option<String> = sqlx::query_scalar(
                "SELECT group_concat(seq || char(31) || time_ms || char(31) || prev_hash || char(31) || hash
                                     || char(31) || body, char(30))
                 FROM (SELECT seq, time_ms, prev_hash, hash, body FROM audit_entries
                       WHERE chain = ? AND seq > ? AND seq <= ? ORDER BY seq)",
            )
            .bind(&chain)
            .bind(after)
            .bind(upto)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let Some(packed) = packed else {
                return Ok(Vec::new());
            };
            let unpacked: Result<Vec<StoredEntry>> = packed
                .split('\u{1e}')
                .map(|entry| {
                    let mut f = entry.splitn(5, '\u{1f}');
                    let mut next = || {
                        f.next()
                            .ok_or_else(|| Error::internal("malformed audit page"))
                    };
                    let seq = next()?
                        .parse()
                        .map_err(|_| Error::internal("malformed audit seq"))?;
                    let time_ms = next()?
                        .parse()
                        .map_err(|_| Error::internal("malformed audit time"))?;
                    let prev_hash = next()?.to_string();
                    let hash = next()?.to_string();
                    let body = next()?.to_string();
                    Ok(StoredEntry {
                        chain: chain.clone(),
                        seq,
                        time_ms,
                        body,
                        prev_hash,
                        hash,
                    })
                })
                .collect();
            match unpacked {
                Ok(entries) => Ok(entries),
                // A separator inside a body: not canonical JSON, so tampered
                // with. Read the page row by row and let the verifier say where.
                Err(_) => {
                    let rows = sqlx::query(
                        "SELECT chain, seq, time_ms, body, prev_hash, hash FROM audit_entries
                         WHERE chain = ? AND seq > ? AND seq <= ? ORDER BY seq",
                    )
                    .bind(&chain)
                    .bind(after)
                    .bind(upto)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db)?;
                    rows.iter()
                        .map(entry_row)
                        .collect::<std::result::Result<_, _>>()
                        .map_err(db)
                }
            }
        })
    }
    fn audit_chains(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT chain FROM audit_heads UNION SELECT DISTINCT chain FROM audit_entries ORDER BY 1",
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
                   (SELECT chain, seq, hash, time_ms, signature, kind, statement, id AS o
                      FROM audit_checkpoints WHERE chain = ?1
                    UNION ALL
                    SELECT chain, seq, hash, 0, '', 'tip', '', 9223372036854775806 FROM audit_heads WHERE chain = ?1
                    UNION ALL
                    SELECT chain, signed_seq, signed_hash, signed_time_ms, signature, 'head',
                           signed_statement, 9223372036854775807
                      FROM audit_heads WHERE chain = ?1 AND signature IS NOT NULL)
                 ORDER BY o >= 9223372036854775806, o >= 9223372036854775806 AND o, seq, o",
            )
            .bind(chain)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(|r| {
                    Ok(Checkpoint {
                        chain: r.try_get(0)?,
                        seq: r.try_get(1)?,
                        hash: r.try_get(2)?,
                        time_ms: r.try_get(3)?,
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
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind, statement)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&anchor.chain)
            .bind(anchor.seq)
            .bind(&anchor.hash)
            .bind(anchor.time_ms)
            .bind(&anchor.signature)
            .bind(&anchor.kind)
            .bind(&anchor.statement)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let n = sqlx::query("DELETE FROM audit_entries WHERE chain = ? AND seq <= ?")
                .bind(&anchor.chain)
                .bind(anchor.seq)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
            // Periodic checkpoints before the anchor describe entries that are gone.
            sqlx::query(
                "DELETE FROM audit_checkpoints WHERE chain = ? AND kind = 'periodic' AND seq < ?",
            )
            .bind(&anchor.chain)
            .bind(anchor.seq)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
    }
}
