//! Memory for request bodies in flight, bounded in all and per tenant.
//!
//! Before a request's body is read, its size is reserved: the declared
//! `Content-Length` (as hyper parsed it: the body's exact size hint), or the
//! largest body the server takes (`max_body`) when the size is not known
//! in advance (chunked). A body declared larger than `max_body` is refused
//! at once (413) without reading it. The reservation is held until the
//! request is answered, so the bytes held by bodies never exceed
//! `capacity` (`--max-body-memory`) plus what hyper buffers per connection.
//!
//! Invariants: one tenant holds at most `tenant_share` bytes of it (half the
//! capacity, at least one largest body), so that one tenant sending slowly
//! on many connections cannot take all of it; past its share a tenant is
//! refused at once (429). A request that cannot get its bytes because
//! others hold them waits, within its deadline, in arrival order (the
//! semaphore is fair), then is refused (503). Requests are authenticated
//! before they reserve anything: an unauthenticated client never makes the
//! server hold body bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why bytes for a body were not reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Declared larger than the largest body taken.
    TooLarge,
    /// The tenant holds its share.
    Tenant,
    /// Others held the bytes until the deadline.
    Deadline,
}

/// The body memory pool.
pub struct BodyMemory {
    total: Arc<Semaphore>,
    max_body: usize,
    tenant_share: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// Bytes reserved for one body; dropping it gives them back.
pub struct Reserved {
    _permit: Option<OwnedSemaphorePermit>,
    held: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
    bytes: usize,
}

impl BodyMemory {
    /// A pool of `capacity` bytes for bodies of at most `max_body` bytes
    /// (`capacity` is raised to `max_body` if smaller).
    pub fn new(capacity: usize, max_body: usize) -> BodyMemory {
        let capacity = capacity
            .max(max_body)
            .clamp(1, u32::MAX as usize)
            .min(Semaphore::MAX_PERMITS);
        let max_body = max_body.min(capacity);
        BodyMemory {
            total: Arc::new(Semaphore::new(capacity)),
            max_body,
            tenant_share: (capacity / 2).max(max_body),
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Bytes for the body of a request of `tenant` whose size is `declared`
    /// (None: not known before reading it).
    pub async fn reserve(
        &self,
        tenant: &str,
        declared: Option<u64>,
        deadline: Instant,
    ) -> Result<Reserved, Refusal> {
        let bytes = match declared {
            Some(n) if n > self.max_body as u64 => return Err(Refusal::TooLarge),
            Some(n) => n as usize,
            None => self.max_body,
        };
        let mut reserved = Reserved {
            _permit: None,
            held: self.held.clone(),
            tenant: tenant.to_string(),
            bytes: 0,
        };
        if bytes == 0 {
            return Ok(reserved);
        }
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let mine = held.entry(tenant.to_string()).or_default();
            if *mine + bytes > self.tenant_share {
                if *mine == 0 {
                    held.remove(tenant);
                }
                return Err(Refusal::Tenant);
            }
            *mine += bytes;
            reserved.bytes = bytes;
        }
        // `bytes` <= max_body <= capacity <= u32::MAX.
        let n = bytes as u32;
        if let Ok(p) = self.total.clone().try_acquire_many_owned(n) {
            reserved._permit = Some(p);
            return Ok(reserved);
        }
        tracing::debug!(tenant, bytes, "waiting for body memory");
        let permit =
            tokio::time::timeout_at(deadline, self.total.clone().acquire_many_owned(n)).await;
        match permit {
            Ok(Ok(p)) => {
                reserved._permit = Some(p);
                Ok(reserved)
            }
            // `reserved` drops: the tenant's share is given back.
            _ => Err(Refusal::Deadline),
        }
    }

    /// The largest body taken.
    pub fn max_body(&self) -> usize {
        self.max_body
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = held.get_mut(&self.tenant) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn bytes_are_bounded_in_all_and_per_tenant() {
        // 100 bytes, bodies of at most 30: a tenant's share is 50.
        let m = BodyMemory::new(100, 30);
        assert_eq!(
            m.reserve("a", Some(31), soon()).await.err(),
            Some(Refusal::TooLarge)
        );
        let a1 = m.reserve("a", Some(30), soon()).await.unwrap();
        // Unknown size: the largest body is reserved, past a's share.
        assert_eq!(
            m.reserve("a", None, soon()).await.err(),
            Some(Refusal::Tenant)
        );
        let _a2 = m.reserve("a", Some(20), soon()).await.unwrap();
        let _b = m.reserve("b", None, soon()).await.unwrap();
        // 80 of 100 held: c waits, and gives up at its deadline.
        assert_eq!(
            m.reserve("c", Some(25), Instant::now()).await.err(),
            Some(Refusal::Deadline)
        );
        assert!(!m.held.lock().unwrap().contains_key("c"));
        drop(a1);
        let _c = m.reserve("c", Some(25), soon()).await.unwrap();
        assert_eq!(m.reserve("d", Some(0), soon()).await.unwrap().bytes, 0);
        assert_eq!(m.held.lock().unwrap()["a"], 20);
    }
}
