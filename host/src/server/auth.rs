//! Who is calling: `Authorization: Bearer <key>` → the stored key, its
//! tenant and roles. Every handler takes a [`Caller`]; each resource is
//! looked up within the caller's tenant, so another tenant's resources are
//! simply not found (404, never 403).

use super::App;
use super::problem::ApiError;
use crate::error::ErrorKind;
use crate::keys::{self, Role};
use crate::storage::ApiKeyRecord;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stored keys, remembered for a short time so that a request does not
/// read the key table: a key created or revoked by `host keys` takes effect
/// within the TTL. Only keys that exist are remembered (the map is bounded
/// by the key table); every use still checks the secret.
pub struct KeyCache {
    ttl: Duration,
    keys: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            keys: Mutex::new(HashMap::new()),
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
        let record = storage.key_get(id).await?.ok_or_else(bad)?;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), (record.clone(), Instant::now()));
        keys::check(&record, presented)?;
        Ok(record)
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKeyRecord,
}

impl Caller {
    pub fn tenant(&self) -> &str {
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

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Caller, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unauthenticated,
                    "send an API key as `Authorization: Bearer <key>` (make one with `host keys create`)",
                )
            })?
            .to_str()
            .map_err(|_| ApiError::new(ErrorKind::Unauthenticated, "the Authorization header is not text"))?;
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
}
