//! The tamper-evident audit trail.
//!
//! Every record is canonical JSON ([`canonical`]) appended to its tenant's
//! chain: `hash = SHA-256(prev_hash ‖ "\n" ‖ time_ms ‖ "\n" ‖ body)`, from
//! [`GENESIS`]. Every append moves the chain's head row (`seq`, `hash`) and
//! signs it (a `head` [`statement::Statement`]) in the same transaction, so
//! every committed entry is covered by a signature when it becomes durable;
//! every [`CHECKPOINT_EVERY`] entries a signed `periodic` checkpoint is kept
//! (CloudTrail's digest chain is the model); a signed registry lists the
//! chains that exist. Everything the key signs is a domain-separated
//! [`statement::Statement`]. [`verify`] then detects any modified, removed,
//! inserted, reordered or truncated entry, a deleted chain, and a
//! checkpoint passed off as another kind, and says where. (What it cannot
//! detect is in the README's threat model.)
//!
//! Appends are grouped: every appender queues its batch and then commits
//! whatever is queued (its own, unless a concurrent appender took it along),
//! without waiting for earlier commits to become durable; the storage backend
//! groups concurrent commits further (the SQLite writer commits everything
//! that arrived while it was busy in one transaction, and one fsync covers
//! many). One ed25519 signature per touched chain per transaction, not per
//! entry. [`AuditLog::append`] returns only once its entries are durable.

pub mod canonical;
pub mod link;
pub mod statement;
pub mod verify;

use crate::error::{Error, Result};
use crate::storage::{Checkpoint, NewEntry, Storage, StoredEntry, Work};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use statement::{Notary, Statement};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// The `prev_hash` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A periodic checkpoint is kept every this many entries of a chain.
pub const CHECKPOINT_EVERY: i64 = 1000;

/// The key file in the data dir.
pub const KEY_FILE: &str = "audit-signing.key";

/// The hash linking an entry to the one before it:
/// `SHA-256(prev_hash ‖ "\n" ‖ time_ms ‖ "\n" ‖ body)`, lowercase hex.
pub fn chain_hash(prev_hash: &str, time_ms: i64, body: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(time_ms.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `expected_hex` is the [`chain_hash`] of an entry; allocates
/// nothing (the verifier calls it for every entry).
pub fn chain_hash_matches(prev_hash: &str, time_ms: i64, body: &str, expected_hex: &str) -> bool {
    use sha2::{Digest, Sha256};
    use std::io::Write as _;
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(expected_hex, &mut expected).is_err() {
        return false;
    }
    let mut digits = [0u8; 24];
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    if write!(cursor, "{time_ms}").is_err() {
        return false;
    }
    let len = cursor.position() as usize;
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(&digits[..len]);
    h.update(b"\n");
    h.update(body.as_bytes());
    h.finalize().as_slice() == expected
}

/// The bytes a legacy (v1, before statements) checkpoint signature covers:
/// read only to re-sign such checkpoints as statements on upgrade.
pub fn legacy_checkpoint_message(chain: &str, seq: i64, hash: &str, time_ms: i64) -> String {
    format!("toolhost-audit-checkpoint/v1\n{chain}\n{seq}\n{hash}\n{time_ms}")
}

/// The audit chain of a tenant (`_` when there is none): chains are named
/// by their [`crate::ids::TenantId`].
pub fn chain_of(tenant: Option<&str>) -> String {
    crate::ids::TenantId::or_default(tenant).into_string()
}

/// Load the signing key from the data dir, creating it (mode 0600) if absent.
pub fn load_or_create_key(data_dir: &Path) -> Result<SigningKey> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    Error::internal(format!(
                        "{} is not an ed25519 key (64 hex digits)",
                        path.display()
                    ))
                })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::datadir::create(data_dir)?;
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(hex::encode(key.to_bytes()).as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
                    Ok(key)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_key(data_dir)
                }
                Err(e) => Err(Error::internal(format!("creating {}: {e}", path.display()))),
            }
        }
        Err(e) => Err(Error::internal(format!("reading {}: {e}", path.display()))),
    }
}

/// Where the audit signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `<data dir>/audit-signing.key`, created (mode 0600) on a fresh
    /// store: one node's own key.
    DataDir(PathBuf),
    /// A key file shared by every replica of one database (`--audit-key`):
    /// 64 hex digits, never created or replaced by Toolhost.
    File(PathBuf),
}

impl From<&Path> for KeySource {
    fn from(data_dir: &Path) -> KeySource {
        KeySource::DataDir(data_dir.to_path_buf())
    }
}

impl From<&PathBuf> for KeySource {
    fn from(data_dir: &PathBuf) -> KeySource {
        KeySource::DataDir(data_dir.clone())
    }
}

impl KeySource {
    /// The key file.
    pub fn path(&self) -> PathBuf {
        match self {
            KeySource::DataDir(dir) => dir.join(KEY_FILE),
            KeySource::File(file) => file.clone(),
        }
    }

    /// Load the key; a data dir's is created if absent, unless `pinned`
    /// (the store already has a key, so a new one could only be refused).
    fn load(&self, pinned: Option<&str>) -> Result<SigningKey> {
        match self {
            KeySource::DataDir(dir) => {
                if let Some(pinned) = pinned
                    && !dir.join(KEY_FILE).exists()
                {
                    return Err(Error::internal(format!(
                        "{} does not exist, and the store's audit trail is signed with the key {pinned}: give this node that key (a replica of a shared database: --audit-key FILE, the same file on every replica); a new key is never made for a store that has one",
                        dir.join(KEY_FILE).display()
                    )));
                }
                load_or_create_key(dir)
            }
            KeySource::File(file) => load_key_file(file),
        }
    }
}

/// Read an ed25519 signing key (64 hex digits) from a file.
pub fn load_key_file(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid_args(format!("cannot read the audit key {}: {e}", path.display()))
    })?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(|b| SigningKey::from_bytes(&b))
        .ok_or_else(|| {
            Error::invalid_args(format!(
                "{} is not an ed25519 key (64 hex digits)",
                path.display()
            ))
        })
}

struct Pending {
    work: Work,
    done: oneshot::Sender<Result<Vec<StoredEntry>>>,
}

/// The audit trail of one store.
pub struct AuditLog {
    storage: Arc<dyn Storage>,
    notary: Arc<Notary>,
    /// Batches waiting for a commit.
    queue: Mutex<Vec<Pending>>,
}

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 2048;

/// The `meta` key recording that the store's signatures are statements
/// (set on a fresh store, or by an operator's upgrade of a legacy one).
const FORMAT_KEY: &str = "audit.format";

/// Its value.
const FORMAT: &str = "statements/v2";

fn key_mismatch(source: &KeySource, pinned: &str) -> Error {
    Error::internal(format!(
        "{} does not match the key this store's audit trail was signed with ({pinned}); refusing to sign with another key (every replica of a shared database must use the same --audit-key file)",
        source.path().display()
    ))
}

/// What [`AuditLog::upgrade_legacy`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Upgraded {
    /// Chains whose legacy signatures verified and were re-signed.
    pub chains: Vec<String>,
    /// Chains left as they are, and why (`host audit verify` reports them).
    pub refused: Vec<(String, String)>,
    pub checkpoints: usize,
}

impl AuditLog {
    /// Open the trail: load (or create) the key and pin its public key in the
    /// store. A fresh store (no chain, no registry) gets its signed, empty
    /// registry. Nothing else is ever signed on opening: a store whose chains
    /// carry only legacy (v1) signatures is refused until an operator runs
    /// `host audit upgrade` ([`AuditLog::upgrade_legacy`]) — re-signing on
    /// its own would bless whatever an intruder left. Must run inside a
    /// tokio runtime.
    pub async fn open(
        storage: Arc<dyn Storage>,
        key: impl Into<KeySource>,
    ) -> Result<Arc<AuditLog>> {
        let log = Self::open_unchecked(storage, &key.into()).await?;
        if log.storage.meta_get(FORMAT_KEY).await?.is_some() {
            return Ok(log);
        }
        let chains = log.storage.audit_chains().await?;
        if chains.is_empty() && log.storage.audit_registry().await?.is_none() {
            let registry = log.notary.sign(&Statement::Registry {
                chains: Vec::new(),
                generation: 0,
                time_ms: crate::clock::now_ms(),
            });
            log.storage.audit_registry_put(registry).await?;
            log.storage.meta_init(FORMAT_KEY, FORMAT).await?;
            return Ok(log);
        }
        Err(Error::corrupt(
            "the audit store has chains but no statement format mark: either it was written by a Toolhost before signed statements (run `host audit upgrade`, which re-signs what its legacy signatures still vouch for), or it was altered (then do not upgrade: run `host audit verify`)",
        ))
    }

    /// Open the trail to read it (verify, export): the key is loaded and
    /// checked against the pinned one; nothing is written.
    pub async fn open_for_reading(
        storage: Arc<dyn Storage>,
        key: impl Into<KeySource>,
    ) -> Result<Arc<AuditLog>> {
        let source = key.into();
        let pinned = storage.meta_get("audit.public_key").await?;
        let key = source.load(pinned.as_deref())?;
        let public = hex::encode(key.verifying_key().to_bytes());
        if let Some(pinned) = pinned
            && pinned != public
        {
            return Err(key_mismatch(&source, &pinned));
        }
        Ok(Arc::new(AuditLog {
            storage,
            notary: Arc::new(Notary::new(key)),
            queue: Mutex::new(Vec::new()),
        }))
    }

    async fn open_unchecked(
        storage: Arc<dyn Storage>,
        source: &KeySource,
    ) -> Result<Arc<AuditLog>> {
        let existing = storage.meta_get("audit.public_key").await?;
        let key = source.load(existing.as_deref())?;
        let public = hex::encode(key.verifying_key().to_bytes());
        let pinned = storage.meta_init("audit.public_key", &public).await?;
        if pinned != public {
            return Err(key_mismatch(source, &pinned));
        }
        Ok(Arc::new(AuditLog {
            storage,
            notary: Arc::new(Notary::new(key)),
            queue: Mutex::new(Vec::new()),
        }))
    }

    /// `host audit upgrade`: re-sign, as statements, what a store written
    /// before statements existed still vouches for with its legacy (v1)
    /// signatures — an operator's decision, never automatic. A chain is
    /// upgraded only if its head row's v1 signature verifies and the entry
    /// it names is still there with that hash; then its v1-signed periodic
    /// checkpoints and pruning anchors are re-signed, and its current end
    /// (which may extend past the v1 head by a few unsigned records: the
    /// one thing this trusts) gets a signed head. The registry lists the
    /// chains upgraded. Refuses a store that already has statements.
    pub async fn upgrade_legacy(
        storage: Arc<dyn Storage>,
        key: impl Into<KeySource>,
    ) -> Result<Upgraded> {
        let log = Self::open_unchecked(storage, &key.into()).await?;
        if log.storage.meta_get(FORMAT_KEY).await?.is_some()
            || log.storage.audit_registry().await?.is_some()
        {
            return Err(Error::new(
                crate::ErrorKind::Conflict,
                "the audit store already has signed statements: nothing to upgrade",
            ));
        }
        let key = *log.notary.public_key();
        let now = crate::clock::now_ms();
        let mut report = Upgraded::default();
        let mut resign = Vec::new();
        for chain in log.storage.audit_chains().await? {
            let rows = log.storage.checkpoints(&chain).await?;
            if rows.iter().any(|c| !c.statement.is_empty()) {
                report
                    .refused
                    .push((chain, "it already has signed statements".into()));
                continue;
            }
            let head = rows.iter().find(|c| c.kind == "head");
            let tip = rows.iter().find(|c| c.kind == "tip");
            let (Some(head), Some(tip)) = (head, tip) else {
                report
                    .refused
                    .push((chain, "it has no legacy-signed head".into()));
                continue;
            };
            if !legacy_signature_ok(&key, head) {
                report
                    .refused
                    .push((chain, "its legacy head signature does not verify".into()));
                continue;
            }
            let at_head = log
                .storage
                .audit_range(&chain, head.seq - 1, head.seq)
                .await?;
            if tip.seq < head.seq || at_head.first().is_none_or(|e| e.hash != head.hash) {
                report.refused.push((
                    chain,
                    "its entries do not reach its legacy-signed head".into(),
                ));
                continue;
            }
            let mut mine = vec![link::checkpoint(
                &Statement::Head {
                    chain: chain.clone(),
                    seq: tip.seq,
                    hash: tip.hash.clone(),
                    time_ms: now,
                },
                &log.notary,
            )];
            for c in &rows {
                if !legacy_signature_ok(&key, c) {
                    continue;
                }
                let statement = match c.kind.as_str() {
                    "periodic" => Statement::Periodic {
                        chain: c.chain.clone(),
                        seq: c.seq,
                        hash: c.hash.clone(),
                        time_ms: c.time_ms,
                    },
                    "prune" => Statement::Prune {
                        chain: c.chain.clone(),
                        first_seq: 1,
                        seq: c.seq,
                        hash: c.hash.clone(),
                        time_ms: c.time_ms,
                        pruned_at_ms: now,
                        retain_days: None,
                        upgraded: true,
                    },
                    _ => continue,
                };
                let mut row = link::checkpoint(&statement, &log.notary);
                row.kind = c.kind.clone();
                mine.push(row);
            }
            report.checkpoints += mine.len();
            resign.extend(mine);
            report.chains.push(chain);
        }
        if !resign.is_empty() {
            log.storage.audit_resign(resign).await?;
        }
        let registry = log.notary.sign(&Statement::Registry {
            chains: report.chains.clone(),
            generation: 0,
            time_ms: now,
        });
        log.storage.audit_registry_put(registry).await?;
        log.storage.meta_init(FORMAT_KEY, FORMAT).await?;
        Ok(report)
    }

    /// Commit everything queued, in transactions of at most [`MAX_BATCH`]
    /// entries, answering each waiter with its own work's answer.
    async fn commit_queued(&self) {
        loop {
            let pending: Vec<Pending> = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let (mut count, mut take) = (0, 0);
                for p in q.iter() {
                    if take > 0 && count + p.work.entries.len() > MAX_BATCH {
                        break;
                    }
                    count += p.work.entries.len();
                    take += 1;
                }
                q.drain(..take).collect()
            };
            if pending.is_empty() {
                return;
            }
            let (works, waiters): (Vec<Work>, Vec<_>) =
                pending.into_iter().map(|p| (p.work, p.done)).unzip();
            match self.storage.audit_commit(works, self.notary.clone()).await {
                Ok(answers) => {
                    for (answer, done) in answers.into_iter().zip(waiters) {
                        let _ = done.send(answer);
                    }
                }
                Err(e) => {
                    for done in waiters {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The public key that verifies this trail's statements (hex).
    pub fn public_key(&self) -> String {
        hex::encode(self.notary.public_key().to_bytes())
    }

    pub fn notary(&self) -> &Arc<Notary> {
        &self.notary
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Append records (canonicalised here) and wait until they are durable.
    pub async fn append(&self, records: Vec<(String, i64, Value)>) -> Result<Vec<StoredEntry>> {
        self.commit(records, Work::default()).await
    }

    /// Commit a unit of work: `records` (canonicalised here) become its
    /// entries, committed with everything `work` carries, or not at all (a
    /// precondition that failed is `Conflict`). Waits until durable.
    /// (`work.entries` is replaced.)
    pub async fn commit(
        &self,
        records: Vec<(String, i64, Value)>,
        mut work: Work,
    ) -> Result<Vec<StoredEntry>> {
        work.entries = records
            .into_iter()
            .map(|(chain, time_ms, body)| NewEntry {
                chain,
                time_ms,
                body: canonical::canonical_json(&body),
            })
            .collect();
        if work.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let (done, mut wait) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending { work, done });
        // Commit everything queued (ours, unless a concurrent caller took
        // it: then its answer comes from there).
        self.commit_queued().await;
        let answer = match wait.try_recv() {
            Ok(answer) => answer,
            Err(_) => wait
                .await
                .map_err(|_| Error::internal("the audit commit was abandoned"))?,
        };
        crate::observe::metrics::audit_commit(started.elapsed(), answer.is_ok());
        answer
    }

    /// Sign an export: its first and last entries (none: an empty range of
    /// `chain`), how many it holds, and the range asked for.
    pub fn sign_export(
        &self,
        chain: &str,
        first: Option<&StoredEntry>,
        last: Option<&StoredEntry>,
        entries: u64,
        range: (Option<i64>, Option<i64>),
    ) -> Checkpoint {
        link::checkpoint(
            &Statement::Export {
                chain: chain.to_string(),
                seq: last.map_or(0, |e| e.seq),
                hash: last.map_or_else(String::new, |e| e.hash.clone()),
                time_ms: last.map_or(0, |e| e.time_ms),
                first_seq: first.map_or(0, |e| e.seq),
                first_prev_hash: first.map_or_else(String::new, |e| e.prev_hash.clone()),
                entries,
                since_ms: range.0,
                until_ms: range.1,
            },
            &self.notary,
        )
    }

    /// Delete entries older than `retain_days` from `chain`, keeping
    /// verification of the rest intact with a signed `prune` anchor that
    /// states what was deleted, when, and under which retention. Returns
    /// how many entries were deleted. A chain that does not verify (up to
    /// its signed head) is not pruned: `corrupt`. This reads the whole chain.
    pub async fn prune(&self, chain: &str, retain_days: u32, now_ms: i64) -> Result<u64> {
        let cutoff_ms = now_ms.saturating_sub(i64::from(retain_days) * statement::DAY_MS);
        let first_seq = self.first_seq(chain).await?;
        let mut last_old: Option<StoredEntry> = None;
        let mut after = first_seq - 1;
        loop {
            let page = self.storage.audit_read(chain, after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut stop = false;
            for e in page {
                if e.time_ms < cutoff_ms {
                    last_old = Some(e);
                } else {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
        }
        let Some(anchor) = last_old else { return Ok(0) };
        // Only a chain that verifies is pruned, at an anchor as verification
        // read it: `time_ms` edited by hand (to age recent records) or a
        // forged prune row must not be signed over as a retention.
        verify::vouch(&self.storage, self.notary.public_key(), chain, &[&anchor]).await?;
        let statement = Statement::Prune {
            chain: chain.to_string(),
            first_seq,
            seq: anchor.seq,
            hash: anchor.hash.clone(),
            time_ms: anchor.time_ms,
            pruned_at_ms: now_ms,
            retain_days: Some(retain_days),
            upgraded: false,
        };
        self.storage
            .audit_prune(link::checkpoint(&statement, &self.notary))
            .await
    }

    async fn first_seq(&self, chain: &str) -> Result<i64> {
        let anchor = self
            .storage
            .checkpoints(chain)
            .await?
            .into_iter()
            .filter(|c| c.kind == "prune")
            .map(|c| c.seq)
            .max();
        Ok(anchor.unwrap_or(0).saturating_add(1))
    }
}

/// Whether a legacy (v1) checkpoint's signature is valid.
fn legacy_signature_ok(key: &ed25519_dalek::VerifyingKey, c: &Checkpoint) -> bool {
    use ed25519_dalek::{Signature, Verifier};
    hex::decode(&c.signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .is_some_and(|sig| {
            key.verify(
                legacy_checkpoint_message(&c.chain, c.seq, &c.hash, c.time_ms).as_bytes(),
                &sig,
            )
            .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_hash_check_agrees_with_chain_hash() {
        for (prev, time, body) in [
            (GENESIS, 0, "{}"),
            ("ab", -5, "{\"x\":1}"),
            ("", i64::MAX, ""),
        ] {
            let h = chain_hash(prev, time, body);
            let later = time.wrapping_add(1);
            assert!(chain_hash_matches(prev, time, body, &h));
            assert!(!chain_hash_matches(prev, later, body, &h));
            assert!(!chain_hash_matches(prev, time, "{ }", &h));
            assert!(!chain_hash_matches(prev, time, body, "not hex"));
        }
    }
}
