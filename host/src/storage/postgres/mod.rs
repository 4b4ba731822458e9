//! The PostgreSQL backend: many `host serve` replicas on one database, one
//! truth. It implements every store trait with sqlx's PostgreSQL driver and
//! makes each decision with the same shared pure functions as the other
//! backends ([`check`], [`decide`], [`may_decide`], [`exceeds`],
//! [`settlement`], [`end_charges`], [`crate::audit::link`]).
//!
//! How it stays correct across processes (READ COMMITTED throughout):
//! * **Budgets**: a batch of admissions locks every line it reserves, in
//!   line order, with one upsert that returns their `used` and `reserved`;
//!   decides each admission against them in memory with the shared rule
//!   ([`exceeds`]); and writes the new reservations in the same
//!   transaction. The row locks, not an application lock, are what make
//!   it hold across replicas: a line is never read by one admitter while
//!   another has reserved on it without committing.
//! * **Audit chains**: a commit locks the touched chains' head rows `FOR
//!   UPDATE` in one statement, in chain order (and the registry row when a
//!   chain is new), so appends to one chain serialise and chains of
//!   different tenants do not wait on each other; `PRIMARY KEY (chain,
//!   seq)` is the backstop. Deadlocks, serialization failures and a lost
//!   race to create a chain are retried.
//! * **Group commit** ([`group`]): this process's units of work are
//!   committed by one committer at a time, and its admissions decided by
//!   one admitter at a time; whatever queued meanwhile is the next batch
//!   (one transaction, a handful of statements whatever its size, one WAL
//!   flush, the hot budget lines locked once for all of it). Admissions
//!   and idempotency keys commit with `synchronous_commit = off` (the same promise as SQLite's: a crash of the database loses
//!   them only together with everything after them, and the reaper ends
//!   what a lost host left); units of work with the server's setting (on).
//! * **Migrations** are versioned (`toolhost_schema`), taken under an
//!   advisory lock; a database migrated by a newer Toolhost refuses an older
//!   one.

use super::*;
use crate::BoxFuture;
use crate::error::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod admit;
mod commit;
mod group;
mod keys;
mod seen;
mod stores;

/// Schema migrations, in order; `toolhost_schema.version` records how many
/// ran.
const MIGRATIONS: &[&str] = &[
    // 1: everything (the SQLite schema's eight migrations, as one).
    "CREATE TABLE audit_entries (
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        time_ms BIGINT NOT NULL,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (chain, seq)
    );
    CREATE TABLE audit_heads (
        chain TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        signed_seq BIGINT,
        signed_hash TEXT,
        signed_time_ms BIGINT,
        signature TEXT,
        signed_statement TEXT
    );
    CREATE TABLE audit_checkpoints (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        signature TEXT NOT NULL,
        kind TEXT NOT NULL,
        statement TEXT
    );
    CREATE INDEX audit_checkpoints_chain ON audit_checkpoints (chain, seq);
    CREATE TABLE budget (
        scope TEXT NOT NULL,
        win TEXT NOT NULL,
        metric TEXT NOT NULL,
        used BIGINT NOT NULL DEFAULT 0,
        reserved BIGINT NOT NULL DEFAULT 0,
        lim BIGINT,
        PRIMARY KEY (scope, win, metric)
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        bytes BYTEA NOT NULL
    );
    CREATE TABLE tool_versions (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        docs BYTEA,
        artifact TEXT,
        engine TEXT,
        functions TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, name, version)
    );
    CREATE TABLE tools (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        current TEXT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT false,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, name)
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        roles TEXT NOT NULL,
        hash TEXT NOT NULL,
        label TEXT,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    );
    CREATE TABLE invocations (
        pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
        created_ms BIGINT NOT NULL,
        response TEXT NOT NULL,
        owner TEXT,
        lease_until BIGINT,
        admitted BOOLEAN NOT NULL DEFAULT true,
        worst TEXT,
        transport TEXT,
        idempotency_key TEXT,
        record_version INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX invocations_tenant ON invocations (tenant, pos);
    CREATE INDEX invocations_running ON invocations (lease_until) WHERE status = 'running';
    CREATE INDEX invocations_created ON invocations (tenant, created_ms);
    CREATE TABLE policies (
        version BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        text TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        http_status INTEGER,
        response TEXT,
        started_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        invocation_id TEXT,
        PRIMARY KEY (tenant, key)
    );
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
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        decided_by TEXT,
        decided_ms BIGINT,
        reason TEXT,
        callback_url TEXT
    );
    CREATE INDEX approvals_tenant ON approvals (tenant, status, created_ms);
    CREATE INDEX approvals_due ON approvals (expires_ms) WHERE status = 'pending';
    CREATE INDEX approvals_invocation ON approvals (invocation_id);
    CREATE TABLE result_cache (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        result TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX result_cache_expiry ON result_cache (expires_ms);
    CREATE TABLE outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant TEXT NOT NULL,
        invocation_id TEXT NOT NULL,
        approval_id TEXT,
        url TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        next_ms BIGINT NOT NULL,
        owner TEXT,
        lease_until BIGINT,
        last_error TEXT,
        delivered_ms BIGINT
    );
    CREATE INDEX outbox_due ON outbox (next_ms) WHERE state = 'pending';
    CREATE INDEX outbox_invocation ON outbox (tenant, invocation_id);",
];

/// The advisory lock key migrations run under (any replica may start
/// first; the others wait, then find nothing to do).
const MIGRATION_LOCK: i64 = 0x746f_6f6c_686f_7374; // "toolhost"

/// SQLSTATEs worth retrying the whole transaction for: serialization
/// failure, deadlock, and a lost race to insert the same key (two hosts
/// starting one chain).
/// The connection broke (or the server closed it: restarted, shut down,
/// or terminated the session) — whatever the transaction on it did was
/// rolled back, unless its `COMMIT` had been sent.
pub(super) fn lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

pub(super) fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40001" | "40P01" | "23505")))
}

/// A driver error as an [`Error`] that says whether retrying can help: a
/// lost connection, an unreachable, starting, shutting down or overloaded
/// server is `unavailable`; damaged data `corrupt`; anything else
/// `internal`. The cause is kept.
pub(super) fn db(e: sqlx::Error) -> Error {
    let kind = match &e {
        // (A protocol error is a connection that broke mid-message, e.g.
        // a server or proxy closing it while it starts.)
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::Database(d) => match d.code().as_deref() {
            // Connection exceptions, insufficient resources, operator
            // intervention (shutdown, cannot connect now), serialization
            // failures and deadlocks that kept failing, read-only
            // transactions (a standby), lock timeouts.
            Some(c)
                if c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57P")
                    || c == "40001"
                    || c == "40P01"
                    || c == "25006"
                    || c == "55P03" =>
            {
                ErrorKind::Unavailable
            }
            Some("XX001" | "XX002") => ErrorKind::Corrupt,
            _ => ErrorKind::Internal,
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => ErrorKind::Corrupt,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("database: {e}")).caused_by(e)
}

/// A batch connection idle this long is checked before it is used: under
/// load they are never idle that long; at a few requests a second, one the
/// database closed (a restart, a failover) is found by the check.
const SEEN_IDLE_CHECK: Duration = Duration::from_millis(100);

/// How long a batch waits for a batch connection, and how long the seen
/// path then rests when it could not have one.
const SEEN_ACQUIRE: Duration = Duration::from_secs(2);
const SEEN_REST: Duration = Duration::from_secs(10);

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=…`.
    pub url: String,
    /// Connections this process holds at most.
    pub max_connections: u32,
    /// How long to keep trying to reach a database that is down at start
    /// (with backoff) before giving up.
    pub connect_deadline: Duration,
    /// Open the connections that write batches with `plan_cache_mode =
    /// force_generic_plan` and `enable_seqscan = off` (as startup options:
    /// a pooler in front of the database must pass them on).
    pub keep_plans: bool,
}

impl PostgresOptions {
    pub fn new(url: &str) -> PostgresOptions {
        PostgresOptions {
            url: url.to_string(),
            max_connections: 32,
            connect_deadline: Duration::from_secs(60),
            keep_plans: true,
        }
    }
}

/// Whether `s` names a PostgreSQL database (rather than a data dir).
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<database url>".into();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// PostgreSQL storage.
pub struct PostgresStorage {
    pool: PgPool,
    /// Two connections for the batches written on what was seen ([`seen`]:
    /// one statement each, one admission batch and one completion batch at
    /// a time), on which PostgreSQL plans each statement once per
    /// connection and keeps the plan (`plan_cache_mode =
    /// force_generic_plan`), with `enable_seqscan = off` so that a plan
    /// made while the tables are small still goes by their keys. With the
    /// default, PostgreSQL planned the admission statement afresh on nearly
    /// every execution, and planning it cost almost as much of the
    /// database's CPU as executing it (`benches/RESULTS.md`, round 8).
    seen_pool: PgPool,
    /// Until when the seen path is not tried: a batch connection could not
    /// be had (the locking path on the main pool serves meanwhile).
    seen_off_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// Units of work waiting for the committer, admissions for the
    /// admitter ([`group`]).
    works: group::Group<commit::Pending, commit::Committed>,
    admits: group::Group<Admit, std::result::Result<(), Refused>>,
    /// What this replica last saw of its hot rows ([`seen`]).
    seen: seen::Seen,
    /// Fleet roles this process leads, each on a connection of its own.
    leaders: tokio::sync::Mutex<std::collections::HashMap<String, sqlx::PgConnection>>,
}

impl PostgresStorage {
    /// Connect (retrying with backoff while the database is unreachable, up
    /// to `connect_deadline`), and migrate.
    pub async fn open(options: &PostgresOptions) -> Result<PostgresStorage> {
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| {
                Error::invalid_args(format!(
                    "the database URL {} is not valid: {e}",
                    redact(&options.url)
                ))
            })?
            .application_name("toolhost");
        // Below four connections in all, the batches share the one pool.
        let own_seen = options.max_connections >= 4;
        let seen_pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(SEEN_ACQUIRE)
            // Checked (a round trip) only when it has been idle: under load
            // a batch would otherwise wait for a ping before every
            // statement. (One the server closed while it was idle for less
            // fails its batch, which is then answered `unavailable`.)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= SEEN_IDLE_CHECK {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(if options.keep_plans {
                connect.clone().options([
                    ("plan_cache_mode", "force_generic_plan"),
                    ("enable_seqscan", "off"),
                ])
            } else {
                connect.clone()
            });
        let pool = PgPoolOptions::new()
            .max_connections(if own_seen {
                options.max_connections - 2
            } else {
                options.max_connections.max(2)
            })
            .min_connections(2.min(options.max_connections))
            // A request waits this long for a connection when all are busy
            // (under load: other requests' short transactions); a database
            // that is down answers sooner (its connects fail), and the
            // readiness probe has a deadline of its own.
            .acquire_timeout(Duration::from_secs(15))
            .connect_lazy_with(connect);
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match pool.acquire().await {
                Ok(_) => break,
                Err(e) => {
                    let e = db(e);
                    if e.kind != ErrorKind::Unavailable
                        || started.elapsed() + backoff > options.connect_deadline
                    {
                        return Err(Error::new(
                            e.kind,
                            format!(
                                "cannot reach the database {} (tried for {:.0?}): {}",
                                redact(&options.url),
                                started.elapsed(),
                                e.message
                            ),
                        ));
                    }
                    tracing::warn!(
                        database = %redact(&options.url),
                        retry_in = ?backoff,
                        "the database is unreachable: {}", e.message
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let seen_pool = if own_seen { seen_pool } else { pool.clone() };
        if own_seen && let Err(e) = seen_pool.acquire().await {
            tracing::warn!(
                "the batch connections did not open ({e}); batches take the locking path \
                 until they do (behind a pooler that refuses startup options, set \
                 TOOLHOST_DATABASE_KEEP_PLANS=0)"
            );
        }
        let storage = PostgresStorage {
            pool,
            seen_pool,
            seen_off_until: std::sync::Mutex::new(None),
            works: group::Group::new(),
            admits: group::Group::new(),
            seen: seen::Seen::default(),
            leaders: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        };
        storage.migrate().await?;
        Ok(storage)
    }

    /// A batch connection for the seen path, or `None` (the batch takes
    /// the locking path): none could be had now or lately. A seen batch
    /// never fails for want of one.
    pub(super) async fn seen_connection(&self) -> Option<sqlx::pool::PoolConnection<Postgres>> {
        let off = || {
            self.seen_off_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if off().is_some_and(|until| std::time::Instant::now() < until) {
            return None;
        }
        match self.seen_pool.acquire().await {
            Ok(conn) => Some(conn),
            Err(e) => {
                tracing::warn!(
                    "no batch connection ({e}); batches take the locking path for {SEEN_REST:?}"
                );
                *off() = Some(std::time::Instant::now() + SEEN_REST);
                None
            }
        }
    }

    /// The connection pool (for LISTEN/NOTIFY and advisory locks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS toolhost_schema (
                 one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
                 version INTEGER NOT NULL
             );
             INSERT INTO toolhost_schema (version) VALUES (0) ON CONFLICT DO NOTHING;",
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let version: i32 = sqlx::query_scalar("SELECT version FROM toolhost_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(Error::internal(format!(
                "the database's schema (version {version}) is newer than this host (version {}); upgrade the host",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::internal(format!("migration {}: {e}", i + 1)))?;
            sqlx::query("UPDATE toolhost_schema SET version = $1")
                .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// Begin a transaction; `durable: false` commits it without waiting
    /// for the WAL flush (`synchronous_commit = off`).
    pub(super) async fn begin(
        &self,
        durable: bool,
    ) -> std::result::Result<Transaction<'static, Postgres>, sqlx::Error> {
        if durable {
            self.pool.begin().await
        } else {
            self.pool
                .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await
        }
    }
}

impl PostgresStorage {
    /// Batches this replica wrote on what it saw of their rows (one
    /// guarded statement each), and how many of those the database refused
    /// because another replica had moved a row (each then took the locking
    /// path). Many refusals: replicas share hot rows.
    pub fn seen_batches(&self) -> (u64, u64) {
        self.seen.counts()
    }
}

/// Wait before retrying a transaction (a few ms, growing, with jitter).
pub(super) async fn backoff(attempt: u32) {
    let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 8);
    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 4 + jitter)).await;
}

/// How long the readiness probe waits for the database.
pub(super) const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// Most attempts of one transaction that keeps failing retryably.
pub(super) const ATTEMPTS: u32 = 10;

/// Run `$body` (an expression that may `.await` and `?` on `sqlx::Error`,
/// using `$tx: &mut Transaction`, and gives `(value, commit?)`) in a
/// transaction, and again when it failed in a way a retry can fix: a
/// [`retryable`] conflict, or a connection that broke ([`lost`]) before
/// its `COMMIT` was sent (the transaction runs again on another). A
/// `COMMIT` whose answer was lost is never retried: it may have committed. Evaluates to `Result<value>`.
macro_rules! transact {
    ($storage:expr, $durable:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            let run = async {
                let mut $tx = $storage.begin($durable).await.map_err(|e| (e, false))?;
                let body = async { Ok::<_, sqlx::Error>($body) }.await;
                let (out, keep) = body.map_err(|e| (e, false))?;
                let end = if keep {
                    $tx.commit().await
                } else {
                    $tx.rollback().await
                };
                end.map_err(|e| (e, keep))?;
                Ok::<_, (sqlx::Error, bool)>(out)
            };
            match run.await {
                Ok(out) => break Ok(out),
                Err((e, committing))
                    if ($crate::storage::postgres::retryable(&e)
                        || (!committing && $crate::storage::postgres::lost(&e)))
                        && attempt < $crate::storage::postgres::ATTEMPTS =>
                {
                    attempt += 1;
                    $crate::storage::postgres::backoff(attempt).await;
                }
                Err((e, _)) => break Err($crate::storage::postgres::db(e)),
            }
        }
    }};
}
pub(super) use transact;

impl PostgresStorage {
    /// [`MetaStore::lead`]: keep (or try to take) the session advisory
    /// lock of `role` on a connection of its own, outside the pool.
    pub(super) async fn lead_role(&self, role: &str) -> Result<bool> {
        use sha2::Digest;
        let mut held = self.leaders.lock().await;
        if let Some(conn) = held.get_mut(role) {
            // The lock lives as long as the session: a live connection
            // still holds it.
            match sqlx::query("SELECT 1").execute(&mut *conn).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    tracing::warn!(role, "lost the connection holding a fleet role: {e}");
                    held.remove(role);
                }
            }
        }
        let digest = sha2::Sha256::digest(format!("toolhost.lead.{role}").as_bytes());
        let key = i64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
        if got {
            tracing::info!(role, "this host now leads");
            held.insert(role.to_string(), conn.detach());
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_redacted() {
        assert!(is_url("postgres://u:p@h/db"));
        assert!(is_url("postgresql://h/db"));
        assert!(!is_url("/var/lib/toolhost"));
        assert_eq!(
            redact("postgres://user:secret@db.example:5432/th?sslmode=require"),
            "postgres://user:***@db.example:5432/th?sslmode=require"
        );
        assert_eq!(
            redact("postgres://db.example/th"),
            "postgres://db.example/th"
        );
        assert!(!redact("postgres://u:p@ss@h/db").contains("p@ss"));
    }
}
