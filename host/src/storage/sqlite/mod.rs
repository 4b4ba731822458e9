//! The embedded default backend: SQLite in the data dir, WAL mode,
//! `synchronous = FULL` (a committed entry survives power loss), versioned
//! migrations, and `BEGIN IMMEDIATE` for every read-modify-write so that
//! concurrent processes on one data dir serialise correctly.

use super::*;
use crate::BoxFuture;
use crate::error::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod approvals;
mod audit;
mod budget;
mod cache;
mod commit;
mod idempotency;
mod invocations;
mod keys;
mod meta;
mod outbox;
mod policies;
mod registry;
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
    // 6: invocations as leased state machines (storage/invocations.rs);
    // idempotency keys point at theirs; the callback outbox. An approved
    // call whose host died before this upgrade is handed to the reaper.
    "ALTER TABLE invocations ADD COLUMN owner TEXT;
    ALTER TABLE invocations ADD COLUMN lease_until INTEGER;
    ALTER TABLE invocations ADD COLUMN admitted INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE invocations ADD COLUMN worst TEXT;
    ALTER TABLE invocations ADD COLUMN transport TEXT;
    ALTER TABLE invocations ADD COLUMN idempotency_key TEXT;
    ALTER TABLE invocations ADD COLUMN record_version INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX invocations_running ON invocations (lease_until) WHERE status = 'running';
    ALTER TABLE idempotency ADD COLUMN invocation_id TEXT;
    UPDATE invocations SET status = 'running', owner = 'upgrade', lease_until = 0
      WHERE status = 'pending_approval'
        AND id IN (SELECT invocation_id FROM approvals WHERE status = 'approved');
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        invocation_id TEXT NOT NULL,
        approval_id TEXT,
        url TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        next_ms INTEGER NOT NULL,
        owner TEXT,
        lease_until INTEGER,
        last_error TEXT,
        delivered_ms INTEGER
    );
    CREATE INDEX outbox_due ON outbox (next_ms) WHERE state = 'pending';
    CREATE INDEX outbox_invocation ON outbox (tenant, invocation_id);",
    // 7: the reaper's sweeps: pending approvals by expiry, the cache by
    // expiry.
    "CREATE INDEX approvals_due ON approvals (expires_ms) WHERE status = 'pending';
    CREATE INDEX result_cache_expiry ON result_cache (expires_ms);",
    // 8: reports and time filters read a tenant's invocations by creation
    // time (storage/invocations.rs, `invocation_samples`).
    "CREATE INDEX invocations_created ON invocations (tenant, created_ms);",
];

/// A driver error as an [`Error`] that says whether retrying can help:
/// a busy or locked database or an I/O failure is `unavailable`, a damaged
/// file `corrupt`, anything else `internal`. The cause is kept.
fn db(e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            crate::ErrorKind::Unavailable
        }
        sqlx::Error::Database(d) => match d.code().as_deref() {
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_FULL, SQLITE_IOERR
            Some("5" | "6" | "13" | "10") => crate::ErrorKind::Unavailable,
            // SQLITE_CORRUPT, SQLITE_NOTADB
            Some("11" | "26") => crate::ErrorKind::Corrupt,
            _ => crate::ErrorKind::Internal,
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => crate::ErrorKind::Corrupt,
        _ => crate::ErrorKind::Internal,
    };
    Error::new(kind, format!("database: {e}")).caused_by(e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_writer_makes_the_backend_unhealthy() {
        let dir = std::env::temp_dir().join(format!(
            "toolhost-health-{}-{}",
            std::process::id(),
            crate::ids::InvocationId::generate()
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
