//! The hot writer: a thread of its own that owns one SQLite connection and
//! does this process's hot writes (units of work, admissions, idempotency
//! keys, leases), and a syncer thread that makes units of work durable.
//!
//! Callers send requests and await answers; the writer takes everything
//! queued at once: all waiting admissions ([`commit::admit_in`]) and units
//! of work ([`commit::commit_in`]) become one transaction. It calls
//! SQLite directly (rusqlite, on the same
//! SQLite library sqlx links), so a statement costs no thread handoff, and it
//! never waits on the async runtime that serves requests, so a busy server
//! does not slow its own critical section.
//!
//! Durability: the connection commits with `synchronous = NORMAL` (no fsync
//! while it holds SQLite's write lock). Admissions (reservations with their
//! running rows) and idempotency keys are not fsynced on their own: a
//! process crash keeps them (the kernel has the WAL pages) and the reaper
//! finishes them; a power loss drops them together with everything written
//! after them, so no reservation is left without its row. A unit of work
//! commit is answered only after the syncer ran an `fdatasync` of the WAL
//! file that began after the commit was written: what a caller is told is
//! committed survives power loss exactly as with `synchronous = FULL`, one
//! fsync covers every commit written before it, and the writer goes on with
//! the next writes meanwhile. Once an fsync fails, every later commit is
//! refused (the kernel may have dropped the dirty pages; restart).

use super::commit;
use crate::error::{Error, Result};
use crate::storage::{Admit, Notary, Refused, StoredEntry, Work};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most requests taken from the queue at once.
const MAX_TAKE: usize = 512;

/// Most audit entries committed in one transaction (a unit of work larger
/// than this commits on its own).
const MAX_ENTRIES: usize = 2048;

/// A SQLite error as an [`Error`] that says whether retrying can help (as
/// [`super::db`] does for the pool's errors). The cause is kept.
pub(super) fn db(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let kind = match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen,
        ) => crate::ErrorKind::Unavailable,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => crate::ErrorKind::Corrupt,
        _ => match &e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..) => crate::ErrorKind::Corrupt,
            _ => crate::ErrorKind::Internal,
        },
    };
    Error::new(kind, format!("database: {e}")).caused_by(e)
}

/// The connection, and the way to the syncer.
pub(super) struct Writer {
    pub conn: Connection,
    syncer: mpsc::Sender<Synced>,
}

impl Writer {
    /// Call `then` once everything this connection committed so far is
    /// durable (or with the error that says it may not be).
    pub fn after_sync(&self, then: Synced) {
        if let Err(mpsc::SendError(then)) = self.syncer.send(then) {
            then(Err(Error::internal("the WAL syncer has stopped")));
        }
    }
}

/// What to do once an fsync returned.
pub(super) type Synced = Box<dyn FnOnce(Result<()>) + Send>;

/// Work for the writer thread on its connection.
pub(super) type Job = Box<dyn FnOnce(&mut Writer) + Send>;

/// The answers to a list of units of work.
pub(super) type Committed = Vec<Result<Vec<StoredEntry>>>;
type CommitDone = oneshot::Sender<Result<Committed>>;
type AdmitDone = oneshot::Sender<Result<std::result::Result<(), Refused>>>;

enum Request {
    Admit {
        admit: Box<Admit>,
        done: AdmitDone,
    },
    Commit {
        works: Vec<Work>,
        notary: Arc<Notary>,
        done: CommitDone,
    },
    Run(Job),
}

/// The handle callers hold; both threads end when it is dropped.
pub(super) struct WriterHandle {
    tx: mpsc::Sender<Request>,
}

impl WriterHandle {
    /// Open `db_path` on a new thread and start serving.
    pub(super) fn start(db_path: &Path) -> Result<WriterHandle> {
        let path = db_path.to_path_buf();
        let (tx, rx) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        std::thread::Builder::new()
            .name("toolhost-sqlite-writer".into())
            .spawn(move || {
                let (syncer, synced) = mpsc::channel();
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                let wal = PathBuf::from(wal);
                let started = open(&path).and_then(|conn| {
                    std::thread::Builder::new()
                        .name("toolhost-wal-sync".into())
                        .spawn(move || sync_loop(&wal, synced))
                        .map_err(|e| Error::internal(format!("starting the WAL syncer: {e}")))?;
                    Ok(conn)
                });
                match started {
                    Ok(conn) => {
                        let _ = ready.send(Ok(()));
                        serve(Writer { conn, syncer }, rx);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::internal(format!("starting the SQLite writer: {e}")))?;
        started
            .recv()
            .map_err(|_| Error::internal("the SQLite writer ended while starting"))??;
        Ok(WriterHandle { tx })
    }

    fn send(&self, request: Request) -> Result<()> {
        self.tx
            .send(request)
            .map_err(|_| Error::internal("the SQLite writer has stopped"))
    }

    /// Admit an invocation (reserve, and write its row running).
    pub(super) async fn admit(&self, admit: Admit) -> Result<std::result::Result<(), Refused>> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Admit {
            admit: Box::new(admit),
            done,
        })?;
        answer.await.map_err(|_| abandoned())?
    }

    /// Commit units of work; returns once they are durable.
    pub(super) async fn commit(&self, works: Vec<Work>, notary: Arc<Notary>) -> Result<Committed> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Commit {
            works,
            notary,
            done,
        })?;
        answer.await.map_err(|_| abandoned())?
    }

    /// Run `job` on the writer's connection and return what it returns.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Run(Box::new(move |w: &mut Writer| {
            let _ = done.send(job(w));
        })))?;
        answer.await.map_err(|_| abandoned())?
    }

    /// Like [`WriterHandle::run`], returning once what the job committed is
    /// durable.
    pub(super) async fn run_durable<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Run(Box::new(move |w: &mut Writer| match job(w) {
            Ok(value) => w.after_sync(Box::new(move |synced| {
                let _ = done.send(synced.map(|()| value));
            })),
            Err(e) => {
                let _ = done.send(Err(e));
            }
        })))?;
        answer.await.map_err(|_| abandoned())?
    }
}

fn abandoned() -> Error {
    Error::internal("the SQLite writer dropped a request")
}

fn open(path: &Path) -> Result<Connection> {
    let opening = |e: rusqlite::Error| {
        Error::internal(format!("opening {} for writing: {e}", path.display()))
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(opening)?;
    // Checkpoints run between transactions, on a timer ([`serve`]).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         PRAGMA wal_autocheckpoint = 0;",
    )
    .map_err(opening)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Run fsyncs of the WAL file for whoever waits: one fsync for everything
/// queued when it starts. The file stays open: SQLite removes the WAL only
/// when the last connection to the database closes, and the writer's stays
/// open as long as this thread runs.
fn sync_loop(wal: &Path, requests: mpsc::Receiver<Synced>) {
    let mut failed: Option<String> = None;
    let mut file: Option<std::fs::File> = None;
    while let Ok(first) = requests.recv() {
        let mut waiting = vec![first];
        waiting.extend(requests.try_iter());
        if file.is_none() && failed.is_none() {
            match std::fs::File::open(wal) {
                Ok(f) => file = Some(f),
                // Not created yet: nothing was written to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let e = format!("opening {} to sync it: {e}", wal.display());
                    for then in waiting {
                        then(Err(Error::internal(e.clone())));
                    }
                    continue;
                }
            }
        }
        let result = match (&failed, &file) {
            (Some(e), _) => Err(e.clone()),
            (None, None) => Ok(()),
            (None, Some(f)) => f.sync_data().map_err(|e| {
                let message = format!(
                    "fsync of {} failed: {e}; committed audit records may not be durable, restart the host",
                    wal.display()
                );
                failed = Some(message.clone());
                message
            }),
        };
        for then in waiting {
            then(result.clone().map_err(Error::internal));
        }
    }
}

/// How often the WAL is copied into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

fn serve(mut writer: Writer, rx: mpsc::Receiver<Request>) {
    let mut checkpointed = std::time::Instant::now();
    // Whether anything was written since the last checkpoint (an idle
    // writer sleeps until the next request).
    let mut written = false;
    loop {
        // Copy the WAL into the database file every CHECKPOINT_INTERVAL
        // while writes come in: from this connection, between its own
        // transactions, so the checkpoint completes and the next
        // transaction starts the WAL over (SQLite's own size-triggered
        // checkpoint would run far more often, inside commits).
        let first = if written {
            let wait = CHECKPOINT_INTERVAL.saturating_sub(checkpointed.elapsed());
            match rx.recv_timeout(wait) {
                Ok(first) => Some(first),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(first) => Some(first),
                Err(mpsc::RecvError) => return,
            }
        };
        if written && checkpointed.elapsed() >= CHECKPOINT_INTERVAL {
            checkpointed = std::time::Instant::now();
            written = false;
            if !writer.conn.is_autocommit() {
                tracing::error!("the SQLite writer was left inside a transaction");
            } else if let Err(e) =
                writer
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
        let Some(first) = first else { continue };
        written = true;
        let mut taken = vec![first];
        taken.extend(rx.try_iter().take(MAX_TAKE));
        let mut admissions = Vec::new();
        let mut commits = Vec::new();
        let mut jobs = Vec::new();
        for request in taken {
            match request {
                Request::Admit { admit, done } => admissions.push((*admit, done)),
                Request::Commit {
                    works,
                    notary,
                    done,
                } => commits.push((works, notary, done)),
                Request::Run(job) => jobs.push(job),
            }
        }
        write_round(&mut writer, admissions, group(commits));
        for job in jobs {
            job(&mut writer);
        }
    }
}

/// Units of work merged for one transaction, and who waits for which.
struct Group {
    works: Vec<Work>,
    notary: Arc<Notary>,
    /// Each waiter's number of works, in order.
    waiters: Vec<(usize, CommitDone)>,
}

/// Merge the units of work that arrived together (those signed by one
/// notary, up to [`MAX_ENTRIES`] entries each).
fn group(commits: Vec<(Vec<Work>, Arc<Notary>, CommitDone)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let entries = |works: &[Work]| works.iter().map(|w| w.entries.len()).sum::<usize>();
    for (works, notary, done) in commits {
        if let Some(g) = groups.last_mut()
            && Arc::ptr_eq(&g.notary, &notary)
            && entries(&g.works) + entries(&works) <= MAX_ENTRIES
        {
            g.waiters.push((works.len(), done));
            g.works.extend(works);
            continue;
        }
        groups.push(Group {
            waiters: vec![(works.len(), done)],
            works,
            notary,
        });
    }
    groups
}

/// One round's admissions and units of work in one transaction (one
/// commit, each shared page written once); if that fails, each on its own,
/// so one bad request fails only its own callers.
fn write_round(writer: &mut Writer, admissions: Vec<(Admit, AdmitDone)>, groups: Vec<Group>) {
    if admissions.is_empty() && groups.is_empty() {
        return;
    }
    let (admits, admitted): (Vec<_>, Vec<_>) = admissions.into_iter().unzip();
    let together = (|| {
        let tx = writer
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let answers = commit::admit_in(&tx, &admits)?;
        let committed = groups
            .iter()
            .map(|g| commit::commit_in(&tx, &g.works, g.notary.as_ref()))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok::<_, rusqlite::Error>((answers, committed))
    })();
    match together {
        Ok((answers, committed)) => {
            for (answer, done) in answers.into_iter().zip(admitted) {
                let _ = done.send(Ok(answer));
            }
            for (g, committed) in groups.into_iter().zip(committed) {
                answer_when_durable(writer, g.waiters, Ok(committed));
            }
        }
        Err(_) => {
            for (a, done) in admits.into_iter().zip(admitted) {
                let answer = commit::admit(&mut writer.conn, std::slice::from_ref(&a))
                    .map_err(db)
                    .and_then(|mut v| v.pop().ok_or_else(abandoned));
                let _ = done.send(answer);
            }
            for g in groups {
                let committed = commit::commit(&mut writer.conn, &g.works, g.notary.as_ref());
                answer_when_durable(writer, g.waiters, committed.map_err(db));
            }
        }
    }
}

/// Answer the callers of a committed group once it is durable (or at once
/// with the error).
fn answer_when_durable(
    writer: &Writer,
    waiters: Vec<(usize, CommitDone)>,
    committed: Result<Committed>,
) {
    match committed {
        Ok(committed) => writer.after_sync(Box::new(move |synced| {
            let mut committed = committed.into_iter();
            for (n, done) in waiters {
                let answer = match &synced {
                    Ok(()) => Ok(committed.by_ref().take(n).collect()),
                    Err(e) => Err(e.clone()),
                };
                let _ = done.send(answer);
            }
        })),
        Err(e) => {
            for (_, done) in waiters {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}
