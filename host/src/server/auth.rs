//! Who is calling: `Authorization: Bearer <key>` → the stored key, its
//! tenant and roles. [`super::limit`] authenticates every API request from
//! its headers (and checks the route's [`Access`]) before reading its body;
//! every handler takes the resulting [`Caller`]; each resource is looked up
//! within the caller's tenant, so another tenant's resources are simply not
//! found (404, never 403).

use super::App;
use super::problem::ApiError;
use crate::error::ErrorKind;
use crate::ids::{KeyId, TenantId};
use crate::keys::{self, Role};
use crate::storage::ApiKeyRecord;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stored keys, remembered for a short time so that a request does not
/// read the key table: a key created or revoked by `host keys` takes effect
/// within the TTL. Every use still checks the secret.
///
/// Ids that have no key are remembered for the TTL too, so that a client
/// retrying a deleted or mistyped key does not cost a read per request.
/// That map is bounded ([`MAX_MISSING`] ids): past it, expired ids are
/// dropped, and if it is still full the id is not remembered, so random ids
/// cannot grow memory. The map of keys that exist is bounded by the key
/// table.
pub struct KeyCache {
    ttl: Duration,
    keys: Mutex<HashMap<KeyId, (ApiKeyRecord, Instant)>>,
    missing: Mutex<HashMap<String, Instant>>,
}

/// Most unknown key ids remembered at once.
pub const MAX_MISSING: usize = 4096;

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            keys: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
        }
    }

    /// The stored key `presented` matches, if valid and not revoked.
    pub async fn authenticate(
        &self,
        storage: &dyn crate::storage::Storage,
        presented: &str,
    ) -> crate::Result<ApiKeyRecord> {
        let bad = || crate::Error::new(ErrorKind::Unauthenticated, "the API key is not valid");
        let id = keys::key_id(presented).ok_or_else(bad)?;
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(k, _)| k.clone());
        if let Some(record) = cached {
            keys::check(&record, presented)?;
            return Ok(record);
        }
        let known_missing = self
            .missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|at| at.elapsed() < self.ttl);
        if known_missing {
            return Err(bad());
        }
        let Some(record) = storage.key_get(&KeyId::from(id)).await? else {
            self.remember_missing(id);
            return Err(bad());
        };
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), (record.clone(), Instant::now()));
        keys::check(&record, presented)?;
        Ok(record)
    }

    fn remember_missing(&self, id: &str) {
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        if missing.len() >= MAX_MISSING {
            missing.retain(|_, at| at.elapsed() < self.ttl);
        }
        if missing.len() < MAX_MISSING {
            missing.insert(id.to_string(), Instant::now());
        }
    }
}

/// Who may use a route: checked from the headers before its body is read
/// (by [`super::limit`]), and again by its handler.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Any valid key of the tenant.
    AnyKey,
    /// A key with one of these roles (`admin` holds them all).
    OneOf(&'static [Role]),
}

/// Authenticate `Authorization: Bearer <key>` (exactly one such header).
pub async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "send an API key as `Authorization: Bearer <key>` (make one with `host keys create`)",
        )
    })?;
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "send one Authorization header, not several",
        ));
    }
    let value = value.to_str().map_err(|_| {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "the Authorization header is not text",
        )
    })?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "the Authorization scheme must be Bearer",
        ));
    }
    let key = app
        .keys
        .authenticate(app.storage.as_ref(), token.trim())
        .await?;
    tracing::Span::current().record("key", key.id.as_str());
    Ok(Caller { key })
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKeyRecord,
}

impl Caller {
    pub fn tenant(&self) -> &TenantId {
        &self.key.tenant
    }

    /// Refuse unless the key holds `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if keys::has_role(&self.key, role) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "this needs a key with the `{}` role; key {} has {}",
                    role.as_str(),
                    self.key.id,
                    self.key.roles.join(", ")
                ),
            ))
        }
    }

    /// Refuse unless the key holds one of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.iter().any(|r| keys::has_role(&self.key, *r)) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "this needs a key with one of the roles {}; key {} has {}",
                names.join(", "),
                self.key.id,
                self.key.roles.join(", ")
            ),
        ))
    }
}

impl Caller {
    /// Refuse unless this caller may use a route with `access`.
    pub fn allowed(&self, access: Access) -> Result<(), ApiError> {
        match access {
            Access::AnyKey => Ok(()),
            Access::OneOf([role]) => self.require(*role),
            Access::OneOf(roles) => self.require_any(roles),
        }
    }
}

/// The caller [`super::limit`] authenticated (in the request's
/// extensions), or, for a route it did not see, authenticated here.
impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Caller, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        authenticate(app, &parts.headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    fn unknown(i: usize) -> String {
        format!("thk_{i:016x}_{}", "0".repeat(64))
    }

    #[tokio::test]
    async fn unknown_ids_remembered_are_bounded() {
        let storage = MemoryStorage::new();
        let cache = KeyCache::new(Duration::from_secs(3600));
        for i in 0..MAX_MISSING + 10 {
            assert!(cache.authenticate(&storage, &unknown(i)).await.is_err());
        }
        assert_eq!(cache.missing.lock().unwrap().len(), MAX_MISSING);
        // Expired ids make room.
        let cache = KeyCache::new(Duration::ZERO);
        for i in 0..MAX_MISSING + 10 {
            assert!(cache.authenticate(&storage, &unknown(i)).await.is_err());
        }
        assert!(cache.missing.lock().unwrap().len() <= MAX_MISSING);
        assert!(
            cache
                .missing
                .lock()
                .unwrap()
                .contains_key(&format!("{:016x}", MAX_MISSING + 9))
        );
    }
}
