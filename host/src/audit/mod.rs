//! The tamper-evident audit trail.
//!
//! Every record is canonical JSON ([`canonical`]) appended to its tenant's
//! chain: `hash = SHA-256(prev_hash ‖ "\n" ‖ time_ms ‖ "\n" ‖ body)`, from
//! [`GENESIS`]. In the same transaction as every append, the chain's head
//! (`seq`, `hash`) is signed with the data dir's ed25519 key, and every
//! [`CHECKPOINT_EVERY`] entries a periodic checkpoint is kept (CloudTrail's
//! digest chain is the model). [`verify`] then detects any modified, removed,
//! inserted, reordered or truncated entry and says where.
//!
//! Appends go through one writer task that commits whatever has queued up in
//! one transaction (group commit); [`AuditLog::append`] returns only once its
//! entries are durable.

pub mod canonical;
pub mod verify;

use crate::error::{Error, Result};
use crate::storage::{Batch, Charge, Checkpoint, NewEntry, Signer, Storage, StoredEntry};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

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
    queue: mpsc::Sender<Pending>,
}

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
        let (queue, mut rx) = mpsc::channel::<Pending>(4096);
        let writer_storage = storage.clone();
        let signer = signer_for(key.clone());
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut pending = vec![first];
                let mut count = pending[0].batch.entries.len();
                while count < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => {
                            count += p.batch.entries.len();
                            pending.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let mut batch = Batch::default();
                let mut waiters = Vec::with_capacity(pending.len());
                for p in pending {
                    waiters.push((p.batch.entries.len(), p.done));
                    batch.entries.extend(p.batch.entries);
                    batch.release.extend(p.batch.release);
                    batch.charge.extend(p.batch.charge);
                }
                match writer_storage.audit_append(batch, signer.as_ref()).await {
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
        });
        Ok(Arc::new(AuditLog {
            storage,
            key,
            queue,
        }))
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
        self.append_settling(records, Vec::new(), Vec::new()).await
    }

    /// [`AuditLog::append`], settling budget lines in the same transaction:
    /// `release` reservations, record `charge` as used.
    pub async fn append_settling(
        &self,
        records: Vec<(String, i64, Value)>,
        release: Vec<Charge>,
        charge: Vec<Charge>,
    ) -> Result<Vec<StoredEntry>> {
        if records.is_empty() && release.is_empty() && charge.is_empty() {
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
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending {
                batch: Batch {
                    entries,
                    release,
                    charge,
                },
                done,
            })
            .await
            .map_err(|_| Error::internal("the audit writer has stopped"))?;
        wait.await
            .map_err(|_| Error::internal("the audit writer has stopped"))?
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
