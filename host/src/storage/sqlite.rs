//! The embedded default backend: SQLite in the data dir, WAL mode,
//! `synchronous = FULL` (a committed entry survives power loss), versioned
//! migrations, and `BEGIN IMMEDIATE` for every read-modify-write so that
//! concurrent processes on one data dir serialise correctly.

use super::{Batch, Charge, Checkpoint, Exceeded, Signer, Storage, StoredEntry, Usage};
use crate::audit::chain_hash;
use crate::error::{Error, Result};
use crate::gate::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::Duration;

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
        time_ms INTEGER NOT NULL,
        signature TEXT NOT NULL
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
        PRIMARY KEY (scope, window, metric)
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;",
];

fn db(e: sqlx::Error) -> Error {
    Error::internal(format!("database: {e}"))
}

/// SQLite storage.
pub struct SqliteStorage {
    pool: SqlitePool,
}

impl SqliteStorage {
    /// Open (creating if needed) `toolhost.db` in `data_dir`, and migrate.
    pub async fn open(data_dir: &Path) -> Result<SqliteStorage> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::internal(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("toolhost.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| {
                Error::internal(format!(
                    "opening {}: {e}",
                    data_dir.join("toolhost.db").display()
                ))
            })?;
        let storage = SqliteStorage { pool };
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

async fn insert_checkpoint(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    chain: &str,
    seq: i64,
    hash: &str,
    time_ms: i64,
    signer: &Signer,
    kind: &str,
) -> Result<()> {
    let signature = signer(chain, seq, hash, time_ms);
    sqlx::query(
        "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(chain)
    .bind(seq)
    .bind(hash)
    .bind(time_ms)
    .bind(signature)
    .bind(kind)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Release reservations and record usage, inside a transaction.
async fn settle(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    release: &[Charge],
    charge: &[Charge],
) -> Result<()> {
    for (c, is_release) in release
        .iter()
        .map(|c| (c, true))
        .chain(charge.iter().map(|c| (c, false)))
    {
        if c.amount == 0 {
            continue;
        }
        let (r, u) = if is_release {
            (-c.amount, 0)
        } else {
            (0, c.amount)
        };
        sqlx::query(
            "INSERT INTO budget (scope, window, metric, used, reserved) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (scope, window, metric) DO UPDATE
             SET used = used + excluded.used, reserved = max(0, reserved + excluded.reserved)",
        )
        .bind(&c.scope)
        .bind(&c.window)
        .bind(&c.metric)
        .bind(u)
        .bind(r)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    Ok(())
}

impl Storage for SqliteStorage {
    fn audit_append<'a>(
        &'a self,
        batch: Batch,
        signer: &'a Signer,
    ) -> BoxFuture<'a, Result<Vec<StoredEntry>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            let mut heads: std::collections::HashMap<String, (i64, String)> = Default::default();
            let mut stored = Vec::with_capacity(batch.entries.len());
            for e in batch.entries {
                if !heads.contains_key(&e.chain) {
                    let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
                        .bind(&e.chain)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?
                        .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
                        .unwrap_or((0, crate::audit::GENESIS.to_string()));
                    heads.insert(e.chain.clone(), head);
                }
                let (seq, prev) = heads.get(&e.chain).cloned().expect("head loaded");
                let seq = seq + 1;
                let hash = chain_hash(&prev, e.time_ms, &e.body);
                sqlx::query(
                    "INSERT INTO audit_entries (chain, seq, time_ms, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&e.chain)
                .bind(seq)
                .bind(e.time_ms)
                .bind(&e.body)
                .bind(&prev)
                .bind(&hash)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if seq % crate::audit::CHECKPOINT_EVERY == 0 {
                    insert_checkpoint(&mut tx, &e.chain, seq, &hash, e.time_ms, signer, "periodic")
                        .await?;
                }
                heads.insert(e.chain.clone(), (seq, hash.clone()));
                stored.push(StoredEntry {
                    chain: e.chain,
                    seq,
                    time_ms: e.time_ms,
                    body: e.body,
                    prev_hash: prev,
                    hash,
                });
            }
            let now = stored.last().map_or(0, |e| e.time_ms);
            for (chain, (seq, hash)) in heads {
                let signature = signer(&chain, seq, &hash, now);
                sqlx::query(
                    "INSERT INTO audit_heads (chain, seq, hash, time_ms, signature) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
                         time_ms = excluded.time_ms, signature = excluded.signature",
                )
                .bind(&chain)
                .bind(seq)
                .bind(&hash)
                .bind(now)
                .bind(signature)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            settle(&mut tx, &batch.release, &batch.charge).await?;
            tx.commit().await.map_err(db)?;
            Ok(stored)
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

    fn checkpoint_put(&self, c: Checkpoint) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, signature, kind) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&c.chain)
            .bind(c.seq)
            .bind(&c.hash)
            .bind(c.time_ms)
            .bind(&c.signature)
            .bind(&c.kind)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)
        })
    }

    fn checkpoints(&self, chain: &str) -> BoxFuture<'_, Result<Vec<Checkpoint>>> {
        let chain = chain.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT chain, seq, hash, time_ms, signature, kind FROM
                   (SELECT chain, seq, hash, time_ms, signature, kind, id AS o FROM audit_checkpoints WHERE chain = ?1
                    UNION ALL
                    SELECT chain, seq, hash, time_ms, signature, 'head', 9223372036854775807 FROM audit_heads WHERE chain = ?1)
                 ORDER BY o = 9223372036854775807, seq, o",
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
                })
                .collect())
        })
    }

    fn audit_prune(&self, chain: &str, upto: i64) -> BoxFuture<'_, Result<u64>> {
        let chain = chain.to_string();
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            let n = sqlx::query("DELETE FROM audit_entries WHERE chain = ? AND seq <= ?")
                .bind(&chain)
                .bind(upto)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
            // Periodic checkpoints before the anchor describe entries that are gone.
            sqlx::query(
                "DELETE FROM audit_checkpoints WHERE chain = ? AND kind = 'periodic' AND seq < ?",
            )
            .bind(&chain)
            .bind(upto)
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
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            for c in &charges {
                // Reserve only if the limit holds: one statement per line.
                let fits = c.limit.is_none_or(|l| c.amount <= l);
                let affected = if fits {
                    sqlx::query(
                        "INSERT INTO budget (scope, window, metric, used, reserved) VALUES (?1, ?2, ?3, 0, ?4)
                         ON CONFLICT (scope, window, metric) DO UPDATE SET reserved = reserved + excluded.reserved
                         WHERE ?5 IS NULL OR used + reserved + excluded.reserved <= ?5",
                    )
                    .bind(&c.scope)
                    .bind(&c.window)
                    .bind(&c.metric)
                    .bind(c.amount)
                    .bind(c.limit)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?
                    .rows_affected()
                } else {
                    0
                };
                if affected == 0 {
                    let row = sqlx::query(
                        "SELECT used, reserved FROM budget WHERE scope = ? AND window = ? AND metric = ?",
                    )
                    .bind(&c.scope)
                    .bind(&c.window)
                    .bind(&c.metric)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                    let (used, reserved) = row
                        .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
                        .unwrap_or((0, 0));
                    tx.rollback().await.map_err(db)?;
                    return Ok(Err(Exceeded {
                        scope: c.scope.clone(),
                        window: c.window.clone(),
                        metric: c.metric.clone(),
                        limit: c.limit.unwrap_or(i64::MAX),
                        used,
                        reserved,
                        requested: c.amount,
                    }));
                }
            }
            tx.commit().await.map_err(db)?;
            Ok(Ok(()))
        })
    }

    fn budget_settle(&self, reserved: Vec<Charge>, used: Vec<Charge>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
            settle(&mut tx, &reserved, &used).await?;
            tx.commit().await.map_err(db)
        })
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
}
