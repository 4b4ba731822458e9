//! `subscriptions/listen`: telling MCP clients that a tenant's tool list
//! changed (`notifications/tools/list_changed`).
//!
//! The registry is the truth: one watcher task per tenant that has open
//! listen streams (none otherwise) reads the tenant's registry entries
//! (names, current versions, disabled flags) and the stored policy's
//! version (it decides the tools' annotations) every `every`, and when they
//! differ from its last read bumps the tenant's generation; every stream of
//! the tenant waits on that generation. So a tool registered, deployed,
//! rolled back or disabled through any replica, the CLI or the console
//! reaches the tenant's listeners on every replica within `every` (plus the
//! read), and no replica needs to remember anything for a client: a
//! client reconnects to any of them.
//!
//! Invariants:
//! * A watcher runs only while its tenant has listeners: the last
//!   listener's departure is seen at the next tick, and the watcher
//!   removes itself under the same lock [`Changes::listen`] takes, so a
//!   listener never waits on a watcher that has ended.
//! * Bounded: at most [`MAX_PER_TENANT`] streams a tenant and
//!   [`MAX_STREAMS`] in all (past either, the listen request is refused);
//!   one registry read per tenant per tick, whatever the number of
//!   streams.
//! * [`Changes::stop`] (server shutdown) ends every stream: each one's
//!   `subscriptions/listen` gets its final result, so no connection is
//!   held open past shutdown.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::TenantId;
use crate::storage::Storage;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Open listen streams one tenant may have.
pub const MAX_PER_TENANT: usize = 32;
/// Open listen streams in all.
pub const MAX_STREAMS: usize = 1024;

/// The tenants' tool-list generations, for listen streams.
pub struct Changes {
    storage: Arc<dyn Storage>,
    every: Duration,
    stop: CancellationToken,
    tenants: Mutex<HashMap<TenantId, watch::Sender<u64>>>,
}

/// One stream's view of its tenant's tool list.
pub struct Listener {
    rx: watch::Receiver<u64>,
}

impl Listener {
    /// Wait until the tenant's tool list changed since this listener last
    /// looked (or it was made). False: no more changes will come (the
    /// watcher stopped).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Changes {
    /// Watch the registry in `storage`, reading it every `every` while
    /// anyone listens.
    pub fn new(storage: Arc<dyn Storage>, every: Duration) -> Arc<Changes> {
        Arc::new(Changes {
            storage,
            every: every.max(Duration::from_millis(50)),
            stop: CancellationToken::new(),
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// A listener for `tenant`'s tool list: `tenant_overloaded` or
    /// `overloaded` past the bounds.
    pub fn listen(self: &Arc<Self>, tenant: &TenantId) -> Result<Listener> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = tenants.values().map(watch::Sender::receiver_count).sum();
        if total >= MAX_STREAMS {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "the server has {MAX_STREAMS} subscriptions/listen streams open; retry later"
                ),
            ));
        }
        if let Some(tx) = tenants.get(tenant) {
            if tx.receiver_count() >= MAX_PER_TENANT {
                return Err(Error::new(
                    ErrorKind::TenantOverloaded,
                    format!(
                        "tenant `{tenant}` has {MAX_PER_TENANT} subscriptions/listen streams open; \
                         close one (one stream per client is enough)"
                    ),
                ));
            }
            return Ok(Listener { rx: tx.subscribe() });
        }
        let (tx, rx) = watch::channel(0);
        tenants.insert(tenant.clone(), tx);
        tokio::spawn(self.clone().watch(tenant.clone()));
        Ok(Listener { rx })
    }

    /// End every stream (shutdown) and every watcher.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Resolves once [`Changes::stop`] was called.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// What a tenant's tool list is now, as a hash of its registry entries
    /// and the stored policy's version (the policy decides the tools'
    /// annotations).
    async fn fingerprint(&self, tenant: &TenantId) -> Result<u64> {
        let policy = self.storage.policy_current().await?.map(|p| p.version);
        let mut entries: Vec<(String, String, bool)> = self
            .storage
            .tool_list(tenant)
            .await?
            .into_iter()
            .map(|e| (e.name, e.current, e.disabled))
            .collect();
        entries.sort();
        let mut h = std::hash::DefaultHasher::new();
        (entries, policy).hash(&mut h);
        Ok(h.finish())
    }

    async fn watch(self: Arc<Self>, tenant: TenantId) {
        let mut last = self.fingerprint(&tenant).await.ok();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                () = self.stop.cancelled() => break,
            }
            {
                let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
                if tenants
                    .get(&tenant)
                    .is_none_or(|tx| tx.receiver_count() == 0)
                {
                    tenants.remove(&tenant);
                    return;
                }
            }
            match self.fingerprint(&tenant).await {
                // A first read that failed leaves no baseline: the first
                // that succeeds tells (a spare notice costs a re-list; a
                // missed one leaves a stale list).
                Ok(now) => {
                    if last != Some(now)
                        && let Some(tx) = self
                            .tenants
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&tenant)
                    {
                        tx.send_modify(|g| *g += 1);
                    }
                    last = Some(now);
                }
                // The database is away: the next tick reads again.
                Err(e) => tracing::debug!(%tenant, "tool list for listeners: {}", e.message),
            }
        }
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tenant);
    }
}
