//! The tamper-evident audit trail.
//!
//! Every record is canonical JSON ([`canonical`]) appended to its tenant's
//! chain: `hash = SHA-256(prev_hash ‖ "\n" ‖ time_ms ‖ "\n" ‖ body)`, from
//! [`GENESIS`]. Every append updates the chain's head row (`seq`, `hash`) in
//! the same transaction; the head's ed25519 signature (data dir key) is
//! refreshed at most every [`SIGN_EVERY`] per chain — by the first commit of a
//! chain in a process, by a deferred signing shortly after, and by
//! [`AuditLog::flush`] — and only ever over a head this process committed.
//! Every [`CHECKPOINT_EVERY`] entries a signed periodic checkpoint is kept
//! (CloudTrail's digest chain is the model). [`verify`] then detects any
//! modified, removed, inserted, reordered or truncated entry and says where.
//!
//! Appends are grouped: every appender queues its batch and then commits
//! whatever is queued (its own, unless a concurrent appender took it along),
//! without waiting for earlier commits to become durable; the storage backend
//! groups concurrent commits further (the SQLite writer commits everything
//! that arrived while it was busy in one transaction, and one fsync covers
//! many). [`AuditLog::append`] returns only once its entries are durable.

pub mod canonical;
pub mod verify;

use crate::error::{Error, Result};
use crate::storage::{Batch, Checkpoint, NewEntry, Signer, Storage, StoredEntry};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;
use std::path::Path;
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

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(chain: &str, seq: i64, hash: &str, time_ms: i64) -> String {
    format!("toolhost-audit-checkpoint/v1\n{chain}\n{seq}\n{hash}\n{time_ms}")
}

/// The audit chain of a tenant (`_` when there is none).
pub fn chain_of(tenant: Option<&str>) -> String {
    tenant.filter(|t| !t.is_empty()).unwrap_or("_").to_string()
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
            std::fs::create_dir_all(data_dir)
                .map_err(|e| Error::internal(format!("creating {}: {e}", data_dir.display())))?;
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

fn signer_for(key: SigningKey) -> Arc<Signer> {
    Arc::new(move |chain: &str, seq: i64, hash: &str, time_ms: i64| {
        hex::encode(
            key.sign(checkpoint_message(chain, seq, hash, time_ms).as_bytes())
                .to_bytes(),
        )
    })
}

struct Pending {
    batch: Batch,
    done: oneshot::Sender<Result<Vec<StoredEntry>>>,
}

/// The audit trail of one data dir.
pub struct AuditLog {
    storage: Arc<dyn Storage>,
    key: SigningKey,
    signer: Arc<Signer>,
    /// When this process last signed each chain's head.
    signed_at: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Chains committed since their last signature, with the head this
    /// process committed (only that is ever signed).
    unsigned: Mutex<std::collections::HashMap<String, (i64, String)>>,
    /// Held while signing deferred heads.
    signing: tokio::sync::Mutex<()>,
    /// Whether a deferred signing is scheduled.
    deferred: std::sync::atomic::AtomicBool,
    me: std::sync::Weak<AuditLog>,
    /// Batches waiting for a commit.
    queue: Mutex<Vec<Pending>>,
}

/// A chain's head is signed at most this often (and always by the first
/// commit to it in a process, and by [`AuditLog::flush`]).
pub const SIGN_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 2048;

impl AuditLog {
    /// Open the trail: load (or create) the key, pin its public key in the
    /// store, and start the writer task. Must run inside a tokio runtime.
    pub async fn open(storage: Arc<dyn Storage>, data_dir: &Path) -> Result<Arc<AuditLog>> {
        let key = load_or_create_key(data_dir)?;
        let public = hex::encode(key.verifying_key().to_bytes());
        let pinned = storage.meta_init("audit.public_key", &public).await?;
        if pinned != public {
            return Err(Error::internal(format!(
                "{} does not match the key this data dir's audit trail was signed with ({pinned})",
                data_dir.join(KEY_FILE).display()
            )));
        }
        Ok(Arc::new_cyclic(|me| AuditLog {
            storage,
            signer: signer_for(key.clone()),
            key,
            signed_at: Mutex::default(),
            unsigned: Mutex::default(),
            signing: tokio::sync::Mutex::new(()),
            deferred: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
            queue: Mutex::new(Vec::new()),
        }))
    }

    /// Commit everything queued, in batches of at most [`MAX_BATCH`]
    /// entries, answering each waiter.
    async fn commit_queued(&self) {
        loop {
            let pending: Vec<Pending> = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let (mut count, mut take) = (0, 0);
                for p in q.iter() {
                    if take > 0 && count + p.batch.entries.len() > MAX_BATCH {
                        break;
                    }
                    count += p.batch.entries.len();
                    take += 1;
                }
                q.drain(..take).collect()
            };
            if pending.is_empty() {
                return;
            }
            let mut batch = Batch::default();
            let mut waiters = Vec::with_capacity(pending.len());
            for p in pending {
                waiters.push((p.batch.entries.len(), p.done));
                batch.entries.extend(p.batch.entries);
                batch.release.extend(p.batch.release);
                batch.charge.extend(p.batch.charge);
                batch.invocations.extend(p.batch.invocations);
                batch.approvals.extend(p.batch.approvals);
                batch.idempotency.extend(p.batch.idempotency);
                batch.cache.extend(p.batch.cache);
            }
            // Sign each chain's head at most every SIGN_EVERY: the first
            // commit of a chain in this process always signs; later ones
            // within the interval leave it to a deferred signing.
            let now = std::time::Instant::now();
            let mut chains: Vec<String> = batch.entries.iter().map(|e| e.chain.clone()).collect();
            chains.sort_unstable();
            chains.dedup();
            {
                let signed_at = self.signed_at.lock().unwrap_or_else(|e| e.into_inner());
                batch.sign = chains
                    .iter()
                    .filter(|c| {
                        signed_at
                            .get(*c)
                            .is_none_or(|t| now.duration_since(*t) >= SIGN_EVERY)
                    })
                    .cloned()
                    .collect();
            }
            let signing = batch.sign.clone();
            let result = self.storage.audit_append(batch, self.signer.clone()).await;
            if let Ok(stored) = &result {
                let mut signed_at = self.signed_at.lock().unwrap_or_else(|e| e.into_inner());
                let mut unsigned = self.unsigned.lock().unwrap_or_else(|e| e.into_inner());
                for c in &chains {
                    // Commits may finish out of order: a signature covers
                    // only heads up to its own, and the newest unsigned head
                    // is the one kept for signing.
                    let Some(last) = stored.iter().rev().find(|e| &e.chain == c) else {
                        continue;
                    };
                    let pending = unsigned.get(c).map(|(seq, _)| *seq);
                    if signing.contains(c) {
                        signed_at.insert(c.clone(), now);
                        if pending.is_some_and(|seq| seq <= last.seq) {
                            unsigned.remove(c);
                        }
                    } else if pending.is_none_or(|seq| seq < last.seq) {
                        unsigned.insert(c.clone(), (last.seq, last.hash.clone()));
                    }
                }
                if !unsigned.is_empty() {
                    self.schedule_signing();
                }
            }
            match result {
                Ok(stored) => {
                    let mut stored = stored.into_iter();
                    for (n, done) in waiters {
                        let _ = done.send(Ok(stored.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    for (_, done) in waiters {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Sign, soon, the heads of chains committed without a signature.
    fn schedule_signing(&self) {
        use std::sync::atomic::Ordering;
        if self.deferred.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.deferred.store(false, Ordering::SeqCst);
            return;
        };
        handle.spawn(async move {
            tokio::time::sleep(SIGN_EVERY).await;
            me.deferred.store(false, Ordering::SeqCst);
            let _ = me.flush().await;
        });
    }

    /// Sign the heads this process committed since their last signature,
    /// if they are still the chains' heads. Call before exiting.
    pub async fn flush(&self) -> Result<()> {
        let _signing = self.signing.lock().await;
        let heads: Vec<(String, (i64, String))> = {
            let mut unsigned = self.unsigned.lock().unwrap_or_else(|e| e.into_inner());
            unsigned.drain().collect()
        };
        for (chain, (seq, hash)) in heads {
            let c = self.sign(&chain, seq, &hash, crate::gate::governed::now_ms(), "head");
            // A later commit may have moved the head on (and signed it, or
            // queued it here again): then there is nothing to do.
            if self
                .storage
                .head_sign(&chain, c.seq, &c.hash, c.time_ms, &c.signature)
                .await?
            {
                self.signed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(chain, std::time::Instant::now());
            }
        }
        Ok(())
    }

    /// The public key that verifies this trail's checkpoints (hex).
    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Append records (canonicalised here) and wait until they are durable.
    pub async fn append(&self, records: Vec<(String, i64, Value)>) -> Result<Vec<StoredEntry>> {
        self.append_settling(records, Batch::default()).await
    }

    /// [`AuditLog::append`], committing `with` in the same transaction: its
    /// budget settlement (`release` reservations, record `charge` as used),
    /// invocation records, approvals, idempotency answers and cache entries.
    /// (`with.entries` and `with.sign` are ignored.)
    pub async fn append_settling(
        &self,
        records: Vec<(String, i64, Value)>,
        with: Batch,
    ) -> Result<Vec<StoredEntry>> {
        let Batch {
            release,
            charge,
            invocations,
            approvals,
            idempotency,
            cache,
            ..
        } = with;
        if records.is_empty()
            && release.is_empty()
            && charge.is_empty()
            && invocations.is_empty()
            && approvals.is_empty()
            && idempotency.is_empty()
            && cache.is_empty()
        {
            return Ok(Vec::new());
        }
        let entries: Vec<NewEntry> = records
            .into_iter()
            .map(|(chain, time_ms, body)| NewEntry {
                chain,
                time_ms,
                body: canonical::canonical_json(&body),
            })
            .collect();
        let (done, mut wait) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                batch: Batch {
                    entries,
                    sign: Vec::new(),
                    release,
                    charge,
                    invocations,
                    approvals,
                    idempotency,
                    cache,
                },
                done,
            });
        // Commit everything queued (ours, unless a concurrent caller took
        // it: then its answer comes from there).
        self.commit_queued().await;
        if let Ok(answer) = wait.try_recv() {
            return answer;
        }
        wait.await
            .map_err(|_| Error::internal("the audit commit was abandoned"))?
    }

    /// Sign a checkpoint now.
    pub fn sign(&self, chain: &str, seq: i64, hash: &str, time_ms: i64, kind: &str) -> Checkpoint {
        Checkpoint {
            chain: chain.to_string(),
            seq,
            hash: hash.to_string(),
            time_ms,
            signature: hex::encode(
                self.key
                    .sign(checkpoint_message(chain, seq, hash, time_ms).as_bytes())
                    .to_bytes(),
            ),
            kind: kind.to_string(),
        }
    }

    /// Delete entries older than `cutoff_ms` from `chain`, keeping
    /// verification of the rest intact with a signed `prune` anchor.
    /// Returns how many entries were deleted.
    pub async fn prune(&self, chain: &str, cutoff_ms: i64) -> Result<u64> {
        let mut last_old: Option<StoredEntry> = None;
        let mut after = self.first_seq(chain).await? - 1;
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
        self.storage
            .checkpoint_put(self.sign(chain, anchor.seq, &anchor.hash, anchor.time_ms, "prune"))
            .await?;
        self.storage.audit_prune(chain, anchor.seq).await
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
        Ok(anchor.unwrap_or(0) + 1)
    }
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
