//! The hot writer: a thread of its own that owns one SQLite connection and
//! does this process's hot writes (audit commits, budget reservations,
//! idempotency markers).
//!
//! Callers send requests and await answers; the thread takes everything
//! queued at once: all waiting reservations become one statement
//! ([`commit::RESERVE`]), each audit commit one statement
//! ([`commit::APPEND`]). It never waits on the async runtime that serves
//! requests, so a busy server does not slow its own critical section: the
//! write lock is held only while SQLite works, and the fsync that makes an
//! audit commit durable runs beside the next writes ([`commit::WalSync`]).
//!
//! The connection commits with `synchronous = NORMAL`: reservations and
//! idempotency markers guard work that dies with the process, so a crash may
//! lose them; audit commits are durable before they are answered.

use super::commit::{self, Append, WalSync};
use super::db;
use crate::error::{Error, Result};
use crate::gate::BoxFuture;
use crate::storage::{Batch, Charge, Exceeded, Signer, StoredEntry};
use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most requests taken from the queue at once.
const MAX_TAKE: usize = 512;

/// Most audit entries committed in one transaction.
const MAX_ENTRIES: usize = 2048;

/// The connection and the chain heads it last committed.
pub(super) struct Writer {
    pub conn: SqliteConnection,
    /// Number a commit a job made, for [`WriterHandle::durable`].
    pub wal: Arc<WalSync>,
    heads: HashMap<String, (i64, String)>,
    options: SqliteConnectOptions,
}

/// Work for the writer thread on its connection.
pub(super) type Job = Box<dyn for<'w> FnOnce(&'w mut Writer) -> BoxFuture<'w, ()> + Send + 'static>;

enum Request {
    Reserve {
        charges: Vec<Charge>,
        done: ReserveDone,
    },
    Append {
        batch: Batch,
        signer: Arc<Signer>,
        done: AppendDone,
    },
    Run(Job),
}

/// The handle callers hold; the thread ends when it is dropped.
pub(super) struct WriterHandle {
    tx: mpsc::UnboundedSender<Request>,
    wal: Arc<WalSync>,
}

impl WriterHandle {
    /// Connect with `options` on a new thread and start serving.
    pub(super) fn start(options: SqliteConnectOptions, wal: Arc<WalSync>) -> Result<WriterHandle> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = WriterHandle {
            tx,
            wal: wal.clone(),
        };
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("toolhost-sqlite-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(Error::internal(format!("writer runtime: {e}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let conn = match options.connect().await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = ready.send(Err(db(e)));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    let writer = Writer {
                        conn,
                        wal: wal.clone(),
                        heads: HashMap::new(),
                        options,
                    };
                    serve(writer, rx, wal).await;
                });
            })
            .map_err(|e| Error::internal(format!("starting the writer thread: {e}")))?;
        started
            .recv()
            .map_err(|_| Error::internal("the writer thread ended while starting"))??;
        Ok(handle)
    }

    /// Return once the commit a job numbered `written` ([`WalSync::written`])
    /// is durable.
    pub(super) async fn durable(&self, written: u64) -> Result<()> {
        self.wal.sync(written).await
    }

    fn send(&self, request: Request) -> Result<()> {
        self.tx
            .send(request)
            .map_err(|_| Error::internal("the SQLite writer thread has stopped"))
    }

    /// Reserve an invocation's charges (all or none).
    pub(super) async fn reserve(
        &self,
        charges: Vec<Charge>,
    ) -> Result<std::result::Result<(), Exceeded>> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Reserve { charges, done })?;
        answer.await.map_err(|_| abandoned())?
    }

    /// Commit an audit batch; returns once it is durable.
    pub(super) async fn append(
        &self,
        batch: Batch,
        signer: Arc<Signer>,
    ) -> Result<Vec<StoredEntry>> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Append {
            batch,
            signer,
            done,
        })?;
        answer.await.map_err(|_| abandoned())?
    }

    /// Run `job` on the writer's connection and return what it returns.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl for<'w> FnOnce(&'w mut Writer) -> BoxFuture<'w, Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Run(Box::new(move |w: &mut Writer| {
            Box::pin(async move {
                let _ = done.send(job(w).await);
            })
        })))?;
        answer.await.map_err(|_| abandoned())?
    }
}

fn abandoned() -> Error {
    Error::internal("the SQLite writer dropped a request")
}

async fn serve(mut writer: Writer, mut rx: mpsc::UnboundedReceiver<Request>, wal: Arc<WalSync>) {
    let mut taken = Vec::with_capacity(MAX_TAKE);
    while rx.recv_many(&mut taken, MAX_TAKE).await > 0 {
        // Reservations first: they hold up invocations that have not run.
        let mut reservations = Vec::new();
        let mut rest = Vec::new();
        for request in taken.drain(..) {
            match request {
                Request::Reserve { charges, done } => reservations.push((charges, done)),
                other => rest.push(other),
            }
        }
        if !reservations.is_empty() {
            reserve_all(&mut writer, reservations).await;
        }
        // Audit commits that arrived together become one transaction.
        let mut appends: Vec<(Batch, Arc<Signer>, AppendDone)> = Vec::new();
        for request in rest {
            match request {
                Request::Reserve { .. } => unreachable!("taken out above"),
                Request::Append {
                    batch,
                    signer,
                    done,
                } => appends.push((batch, signer, done)),
                Request::Run(job) => {
                    commit_all(&mut writer, std::mem::take(&mut appends), &wal).await;
                    job(&mut writer).await;
                }
            }
        }
        commit_all(&mut writer, appends, &wal).await;
    }
}

type AppendDone = oneshot::Sender<Result<Vec<StoredEntry>>>;
type ReserveDone = oneshot::Sender<Result<std::result::Result<(), Exceeded>>>;

/// Commit audit batches in one transaction (those signed by one signer; a
/// batch with another signer starts another), then answer each once the
/// commit is durable, in the background: the next writes go on meanwhile.
async fn commit_all(
    writer: &mut Writer,
    appends: Vec<(Batch, Arc<Signer>, AppendDone)>,
    wal: &Arc<WalSync>,
) {
    let mut appends = appends.into_iter().peekable();
    while let Some((first, signer, done)) = appends.next() {
        let mut batch = first;
        let mut waiters = vec![(batch.entries.len(), done)];
        while let Some((next, next_signer, _)) = appends.peek() {
            if !Arc::ptr_eq(next_signer, &signer)
                || batch.entries.len() + next.entries.len() > MAX_ENTRIES
            {
                break;
            }
            let Some((next, _, done)) = appends.next() else {
                break;
            };
            waiters.push((next.entries.len(), done));
            batch.entries.extend(next.entries);
            batch.sign.extend(next.sign);
            batch.release.extend(next.release);
            batch.charge.extend(next.charge);
            batch.invocations.extend(next.invocations);
            batch.approvals.extend(next.approvals);
            batch.idempotency.extend(next.idempotency);
            batch.cache.extend(next.cache);
        }
        batch.sign.sort_unstable();
        batch.sign.dedup();
        match append(writer, &batch, signer.as_ref()).await {
            Ok(append) => {
                let written = wal.written();
                let wal = wal.clone();
                tokio::spawn(async move {
                    let durable = wal.sync(written).await;
                    let mut stored = append.stored.into_iter();
                    for (n, done) in waiters {
                        let answer = match &durable {
                            Ok(()) => Ok(stored.by_ref().take(n).collect()),
                            Err(e) => Err(e.clone()),
                        };
                        let _ = done.send(answer);
                    }
                });
            }
            Err(e) => {
                for (_, done) in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Reserve for every queued invocation: all in one statement, or, when one
/// of them would pass a limit, one by one.
async fn reserve_all(
    writer: &mut Writer,
    pending: Vec<(Vec<Charge>, ReserveDone)>,
) {
    let rows = Value::Array(
        pending
            .iter()
            .map(|(charges, _)| commit::reservation(charges))
            .collect(),
    );
    let all = sqlx::query(commit::RESERVE)
        .bind(rows.to_string())
        .execute(&mut writer.conn)
        .await;
    if all.is_ok() {
        for (_, done) in pending {
            let _ = done.send(Ok(Ok(())));
        }
        return;
    }
    for (charges, done) in pending {
        let _ = done.send(reserve_one(writer, &charges).await);
    }
}

/// Reserve one invocation's charges, or say which limit it would pass.
async fn reserve_one(
    writer: &mut Writer,
    charges: &[Charge],
) -> Result<std::result::Result<(), Exceeded>> {
    let row = Value::Array(vec![commit::reservation(charges)]).to_string();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let e = match sqlx::query(commit::RESERVE)
            .bind(row.as_str())
            .execute(&mut writer.conn)
            .await
        {
            Ok(_) => return Ok(Ok(())),
            Err(e) if commit::is_over_budget(&e) => e,
            Err(e) => return Err(db(e)),
        };
        for c in charges {
            let Some(limit) = c.limit else { continue };
            let (used, reserved): (i64, i64) = sqlx::query_as(
                "SELECT used, reserved FROM budget WHERE scope = ? AND window = ? AND metric = ?",
            )
            .bind(&c.scope)
            .bind(&c.window)
            .bind(&c.metric)
            .fetch_optional(&mut writer.conn)
            .await
            .map_err(db)?
            .unwrap_or((0, 0));
            if used.saturating_add(reserved).saturating_add(c.amount) > limit {
                return Ok(Err(Exceeded {
                    scope: c.scope.clone(),
                    window: c.window.clone(),
                    metric: c.metric.clone(),
                    limit,
                    used,
                    reserved,
                    requested: c.amount,
                }));
            }
        }
        // Another process settled in between: try again.
        if attempts >= 3 {
            return Err(db(e));
        }
    }
}

/// One audit commit: with the remembered heads in one statement, else
/// (first commit to a chain, another process appended, or any failure)
/// reading the heads inside a transaction.
async fn append(writer: &mut Writer, batch: &Batch, signer: &Signer) -> Result<Append> {
    let mut chains: Vec<&str> = batch.entries.iter().map(|e| e.chain.as_str()).collect();
    chains.sort_unstable();
    chains.dedup();
    if chains.iter().all(|c| writer.heads.contains_key(*c)) {
        let append = commit::prepare(batch, &writer.heads, signer);
        // An error that is not about heads recurs below and is reported
        // from there.
        if bind_append(&append).execute(&mut writer.conn).await.is_ok() {
            writer.heads.extend(append.heads.clone());
            return Ok(append);
        }
    }
    match append_reading_heads(writer, batch, &chains, signer).await {
        Ok(append) => {
            writer.heads.extend(append.heads.clone());
            Ok(append)
        }
        Err(e) => {
            writer.heads.clear();
            rollback(writer).await;
            Err(db(e))
        }
    }
}

async fn append_reading_heads(
    writer: &mut Writer,
    batch: &Batch,
    chains: &[&str],
    signer: &Signer,
) -> std::result::Result<Append, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer.conn)
        .await?;
    let mut heads = HashMap::new();
    if !chains.is_empty() {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT chain, seq, hash FROM audit_heads WHERE chain IN (",
        );
        let mut list = q.separated(", ");
        for c in chains {
            list.push_bind(*c);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut writer.conn).await? {
            heads.insert(row.get(0), (row.get(1), row.get(2)));
        }
    }
    let append = commit::prepare(batch, &heads, signer);
    bind_append(&append).execute(&mut writer.conn).await?;
    sqlx::query("COMMIT").execute(&mut writer.conn).await?;
    Ok(append)
}

/// [`commit::APPEND`] with its parameters.
fn bind_append(append: &Append) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments> {
    let mut q = sqlx::query(commit::APPEND);
    for p in &append.params {
        q = q.bind(p.as_str());
    }
    q
}

/// End a failed transaction; if that fails, replace the connection so that
/// no transaction stays open.
async fn rollback(writer: &mut Writer) {
    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut writer.conn).await {
        let inactive = e
            .as_database_error()
            .is_some_and(|d| d.message().contains("no transaction is active"));
        if !inactive {
            tracing::warn!(error = %e, "rollback failed; reconnecting the SQLite writer");
            if let Ok(conn) = writer.options.connect().await {
                writer.conn = conn;
            }
        }
    }
}
