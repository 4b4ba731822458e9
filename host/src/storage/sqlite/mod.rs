//! The embedded default backend: SQLite in the data dir, WAL mode,
//! `synchronous = FULL` (a committed entry survives power loss), versioned
//! migrations, and `BEGIN IMMEDIATE` for every read-modify-write so that
//! concurrent processes on one data dir serialise correctly.

use super::{
    ApiKeyRecord, ApprovalRecord, Batch, Charge, Checkpoint, Exceeded, IdempotencyBegin,
    IdempotencyDone, InvocationFilter, InvocationRecord, Notary, Registered, Signed, Storage,
    StoredEntry, StoredPolicy, ToolEntry, ToolVersion, Usage,
};
use crate::error::{Error, Result};
use crate::gate::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod commit;
mod writer;

/// Schema migrations, in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: audit chain, checkpoints, budget ledgers, metadata.
    "CREATE TABLE audit_entries (
        chain TEXT NOT NULL,
        seq INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (chain, seq)
    ) WITHOUT ROWID;
    CREATE TABLE audit_heads (
        chain TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        signed_seq INTEGER,
        signed_hash TEXT,
        signed_time_ms INTEGER,
        signature TEXT
    ) WITHOUT ROWID;
    CREATE TABLE audit_checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chain TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        signature TEXT NOT NULL,
        kind TEXT NOT NULL
    );
    CREATE INDEX audit_checkpoints_chain ON audit_checkpoints (chain, seq);
    CREATE TABLE budget (
        scope TEXT NOT NULL,
        window TEXT NOT NULL,
        metric TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        reserved INTEGER NOT NULL DEFAULT 0,
        lim INTEGER,
        PRIMARY KEY (scope, window, metric)
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;",
    // 2: the tool registry: content-addressed blobs, immutable versions, names.
    "CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        bytes BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE tool_versions (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        docs BLOB,
        artifact TEXT,
        engine TEXT,
        functions TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, name, version)
    ) WITHOUT ROWID;
    CREATE TABLE tools (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        current TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
    ) WITHOUT ROWID;",
    // 3: API keys, invocation records, stored policies.
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        roles TEXT NOT NULL,
        hash TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE invocations (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        tool TEXT NOT NULL,
        function TEXT NOT NULL,
        version TEXT,
        workflow TEXT,
        task_id TEXT,
        principal TEXT,
        status TEXT NOT NULL,
        error_kind TEXT,
        created_ms INTEGER NOT NULL,
        response TEXT NOT NULL
    );
    CREATE INDEX invocations_tenant ON invocations (tenant, pos);
    CREATE TABLE policies (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        text TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );",
    // 4: idempotency keys, approvals, the result cache.
    "CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        http_status INTEGER,
        response TEXT,
        started_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_expiry ON idempotency (expires_ms);
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        invocation_id TEXT NOT NULL,
        status TEXT NOT NULL,
        tool TEXT NOT NULL,
        function TEXT NOT NULL,
        version TEXT,
        workflow TEXT,
        task_id TEXT,
        args TEXT NOT NULL,
        args_redacted TEXT NOT NULL,
        args_sha256 TEXT NOT NULL,
        rule TEXT NOT NULL,
        requester TEXT,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        decided_by TEXT,
        decided_ms INTEGER,
        reason TEXT,
        callback_url TEXT
    ) WITHOUT ROWID;
    CREATE INDEX approvals_tenant ON approvals (tenant, status, created_ms);
    CREATE TABLE result_cache (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        result TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;",
    // 5: signed statements (audit/statement.rs): the canonical text each
    // signature covers; legacy rows (NULL) are re-signed on upgrade.
    "ALTER TABLE audit_checkpoints ADD COLUMN statement TEXT;
    ALTER TABLE audit_heads ADD COLUMN signed_statement TEXT;",
];

fn db(e: sqlx::Error) -> Error {
    Error::internal(format!("database: {e}"))
}

/// SQLite storage.
pub struct SqliteStorage {
    /// Reads, and the rare writes (registry, keys, policies, approvals'
    /// decisions), each committed with `synchronous = FULL`.
    pool: SqlitePool,
    /// The hot writes (audit commits, budget reservations, idempotency
    /// markers), on a thread and connection of their own
    /// ([`writer`]).
    writer: writer::WriterHandle,
}

impl SqliteStorage {
    /// Open (creating if needed) `toolhost.db` in `data_dir`, and migrate.
    pub async fn open(data_dir: &Path) -> Result<SqliteStorage> {
        crate::datadir::create(data_dir)?;
        crate::datadir::create_private_file(&data_dir.join("toolhost.db"))?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("toolhost.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let opening = |e: sqlx::Error| {
            Error::internal(format!(
                "opening {}: {e}",
                data_dir.join("toolhost.db").display()
            ))
        };
        // Local connections need no liveness ping before each use (it would
        // cost a round trip to the connection's thread per statement).
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(opening)?;
        let storage = SqliteStorage {
            pool,
            writer: writer::WriterHandle::start(&data_dir.join("toolhost.db"))?,
        };
        storage.migrate().await?;
        Ok(storage)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(Error::internal(format!(
                "the data dir's schema (version {version}) is newer than this host (version {}); upgrade the host",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::internal(format!("migration {}: {e}", i + 1)))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                i + 1
            )))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }
}

const APPROVAL_COLUMNS: &str = "id, tenant, invocation_id, status, tool, function, version, workflow, task_id, args, args_redacted, args_sha256, rule, requester, created_ms, expires_ms, decided_by, decided_ms, reason, callback_url";

fn approval_row(r: &sqlx::sqlite::SqliteRow) -> ApprovalRecord {
    ApprovalRecord {
        id: r.get(0),
        tenant: r.get(1),
        invocation_id: r.get(2),
        status: r.get(3),
        tool: r.get(4),
        function: r.get(5),
        version: r.get(6),
        workflow: r.get(7),
        task_id: r.get(8),
        args: r.get(9),
        args_redacted: r.get(10),
        args_sha256: r.get(11),
        rule: r.get(12),
        requester: r.get(13),
        created_ms: r.get(14),
        expires_ms: r.get(15),
        decided_by: r.get(16),
        decided_ms: r.get(17),
        reason: r.get(18),
        callback_url: r.get(19),
    }
}

fn entry(row: &sqlx::sqlite::SqliteRow) -> StoredEntry {
    StoredEntry {
        chain: row.get(0),
        seq: row.get(1),
        time_ms: row.get(2),
        body: row.get(3),
        prev_hash: row.get(4),
        hash: row.get(5),
    }
}

fn tool_version_row(r: &sqlx::sqlite::SqliteRow) -> ToolVersion {
    ToolVersion {
        tenant: r.get(0),
        name: r.get(1),
        version: r.get(2),
        digest: r.get(3),
        docs: r.get(4),
        artifact: r.get(5),
        engine: r.get(6),
        functions: serde_json::from_str(&r.get::<String, _>(7)).unwrap_or_default(),
        created_ms: r.get(8),
    }
}

fn tool_entry_row(r: &sqlx::sqlite::SqliteRow) -> ToolEntry {
    ToolEntry {
        tenant: r.get(0),
        name: r.get(1),
        current: r.get(2),
        disabled: r.get::<i64, _>(3) != 0,
        updated_ms: r.get(4),
    }
}

const VERSION_COLUMNS: &str =
    "tenant, name, version, digest, docs, artifact, engine, functions, created_ms";

impl Storage for SqliteStorage {
    fn audit_append(
        &self,
        batch: Batch,
        notary: Arc<Notary>,
    ) -> BoxFuture<'_, Result<Vec<StoredEntry>>> {
        Box::pin(self.writer.append(batch, notary))
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
            Ok(rows.iter().map(entry).collect())
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
                    Ok(rows.iter().map(entry).collect())
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
            Ok(rows
                .iter()
                .map(|r| Checkpoint {
                    chain: r.get(0),
                    seq: r.get(1),
                    hash: r.get(2),
                    time_ms: r.get(3),
                    signature: r.get(4),
                    kind: r.get(5),
                    statement: r.get::<Option<String>, _>(6).unwrap_or_default(),
                })
                .collect())
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

    fn budget_reserve(
        &self,
        charges: Vec<Charge>,
    ) -> BoxFuture<'_, Result<std::result::Result<(), Exceeded>>> {
        Box::pin(async move {
            if charges.is_empty() {
                return Ok(Ok(()));
            }
            self.writer.reserve(charges).await
        })
    }

    fn budget_settle(&self, reserved: Vec<Charge>, used: Vec<Charge>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.writer.run_durable(move |w| {
            commit::settle_alone(&mut w.conn, &reserved, &used).map_err(writer::db)
        }))
    }

    fn budget_usage(&self, scope: &str) -> BoxFuture<'_, Result<Vec<Usage>>> {
        let scope = scope.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT scope, window, metric, used, reserved FROM budget WHERE scope = ? ORDER BY window, metric",
            )
            .bind(scope)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| Usage {
                    scope: r.get(0),
                    window: r.get(1),
                    metric: r.get(2),
                    used: r.get(3),
                    reserved: r.get(4),
                })
                .collect())
        })
    }

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
        tenant: &str,
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
            Ok(row.as_ref().map(tool_version_row))
        })
    }

    fn tool_versions(&self, tenant: &str, name: &str) -> BoxFuture<'_, Result<Vec<ToolVersion>>> {
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
            Ok(rows.iter().map(tool_version_row).collect())
        })
    }

    fn tool_get(&self, tenant: &str, name: &str) -> BoxFuture<'_, Result<Option<ToolEntry>>> {
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
            Ok(row.as_ref().map(tool_entry_row))
        })
    }

    fn tool_list(&self, tenant: &str) -> BoxFuture<'_, Result<Vec<ToolEntry>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT tenant, name, current, disabled, updated_ms FROM tools WHERE tenant = ? ORDER BY name",
            )
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(tool_entry_row).collect())
        })
    }

    fn tool_update(
        &self,
        tenant: &str,
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
            let now = crate::gate::governed::now_ms();
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
        tenant: &str,
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

    fn key_get(&self, id: &str) -> BoxFuture<'_, Result<Option<ApiKeyRecord>>> {
        let id = id.to_string();
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, tenant, roles, hash, label, created_ms, revoked_ms FROM api_keys WHERE id = ?",
            )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.as_ref().map(key_row))
        })
    }

    fn key_list(&self, tenant: Option<&str>) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>>> {
        let tenant = tenant.map(str::to_string);
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, tenant, roles, hash, label, created_ms, revoked_ms FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, created_ms",
            )
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(key_row).collect())
        })
    }

    fn key_revoke(&self, id: &str, time_ms: i64) -> BoxFuture<'_, Result<bool>> {
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
            let row = sqlx::query(
                "SELECT version, name, text, created_ms FROM policies ORDER BY version DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            Ok(row.map(|r| StoredPolicy {
                version: r.get(0),
                name: r.get(1),
                text: r.get(2),
                created_ms: r.get(3),
            }))
        })
    }

    fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expires_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'_, Result<IdempotencyBegin>> {
        let (tenant, key, fingerprint) =
            (tenant.to_string(), key.to_string(), fingerprint.to_string());
        Box::pin(self.writer.run(move |w| {
            commit::idempotency_begin(
                &mut w.conn,
                &tenant,
                &key,
                &fingerprint,
                now_ms,
                expires_ms,
                stale_before_ms,
            )
            .map_err(writer::db)
        }))
    }

    fn idempotency_abandon(&self, tenant: &str, key: &str) -> BoxFuture<'_, Result<()>> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        Box::pin(async move {
            sqlx::query(
                "DELETE FROM idempotency WHERE tenant = ? AND key = ? AND state = 'running'",
            )
            .bind(tenant)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn idempotency_finish(&self, done: IdempotencyDone) -> BoxFuture<'_, Result<()>> {
        Box::pin(
            self.writer.run_durable(move |w| {
                commit::finish_idempotency(&w.conn, &done).map_err(writer::db)
            }),
        )
    }

    fn approval_get(
        &self,
        tenant: &str,
        id: &str,
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
            Ok(row.as_ref().map(approval_row))
        })
    }

    fn approval_list(
        &self,
        tenant: &str,
        status: Option<&str>,
        now_ms: i64,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>>> {
        // ?1 tenant, ?2 stored status, ?3 now, ?4 limit, ?5/?6 the cursor.
        let (stored, when) = match status {
            None => (None, ""),
            Some("pending") => (Some("pending"), "AND expires_ms > ?3"),
            Some("expired") => (Some("pending"), "AND expires_ms <= ?3"),
            Some(s) => (Some(s), ""),
        };
        let (tenant, stored) = (tenant.to_string(), stored.map(str::to_string));
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
            Ok(rows.iter().map(approval_row).collect())
        })
    }

    fn approval_decide(
        &self,
        tenant: &str,
        id: &str,
        status: &str,
        decided_by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<ApprovalRecord>>> {
        let (tenant, id, status, decided_by, reason) = (
            tenant.to_string(),
            id.to_string(),
            status.to_string(),
            decided_by.to_string(),
            reason.map(str::to_string),
        );
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_ms = ?, reason = ?, args = ''
                 WHERE tenant = ? AND id = ? AND status = 'pending' AND expires_ms > ?
                 RETURNING {APPROVAL_COLUMNS}"
            )))
            .bind(status)
            .bind(decided_by)
            .bind(now_ms)
            .bind(reason)
            .bind(tenant)
            .bind(id)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            Ok(row.as_ref().map(approval_row))
        })
    }

    fn cache_get(
        &self,
        tenant: &str,
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
}

fn key_row(r: &sqlx::sqlite::SqliteRow) -> ApiKeyRecord {
    let roles: String = r.get(2);
    ApiKeyRecord {
        id: r.get(0),
        tenant: r.get(1),
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        hash: r.get(3),
        label: r.get(4),
        created_ms: r.get(5),
        revoked_ms: r.get(6),
    }
}

fn invocation_row(r: &sqlx::sqlite::SqliteRow) -> (i64, InvocationRecord) {
    (
        r.get(0),
        InvocationRecord {
            id: r.get(1),
            tenant: r.get(2),
            tool: r.get(3),
            function: r.get(4),
            version: r.get(5),
            workflow: r.get(6),
            task_id: r.get(7),
            principal: r.get(8),
            status: r.get(9),
            error_kind: r.get(10),
            created_ms: r.get(11),
            response: r.get(12),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_writer_makes_the_backend_unhealthy() {
        let dir = std::env::temp_dir().join(format!(
            "toolhost-health-{}-{}",
            std::process::id(),
            crate::invoke::new_invocation_id()
        ));
        let storage = SqliteStorage::open(&dir).await.unwrap();
        storage.health().await.unwrap();
        // A job that panics ends the writer thread, as any bug on it would.
        let died = storage
            .writer
            .run::<()>(|_| panic!("the writer stops here, on purpose"))
            .await;
        assert!(died.is_err());
        let e = storage.health().await.unwrap_err();
        assert!(e.message.contains("writer"), "{e}");
        drop(storage);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
