//! API keys: who may call `host serve`, for which tenant, in which roles.
//!
//! A key reads `thk_<id>_<secret>`: the id (16 hex digits) is public and
//! names the key in records; the secret (64 hex digits, 256 random bits) is
//! shown once when the key is made and stored only as its SHA-256. A random
//! 256-bit secret needs no slow hash: SHA-256 is preimage-resistant for it.

use crate::audit::canonical::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::TenantId;
use crate::storage::{ApiKeyRecord, Storage};
use rand_core::RngCore;
use serde::Serialize;

/// What a key may do. `admin` includes every other role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// List tools, invoke them, read invocation records, report token usage.
    Invoke,
    /// Decide approvals.
    Approve,
    /// Register, deploy, disable tools; everything the other roles may do.
    Admin,
    /// Read invocation records and the audit trail.
    Audit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Invoke => "invoke",
            Role::Approve => "approve",
            Role::Admin => "admin",
            Role::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Invoke, Role::Approve, Role::Admin, Role::Audit]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A new key: the secret to hand over once, and what is stored.
pub struct NewKey {
    pub key: String,
    pub record: ApiKeyRecord,
}

/// Make a key for `tenant` with `roles`, and store it.
pub async fn create(
    storage: &dyn Storage,
    tenant: &str,
    roles: &[Role],
    label: Option<&str>,
) -> Result<NewKey> {
    let tenant = TenantId::parse(tenant)?;
    if roles.is_empty() {
        return Err(Error::invalid_args("a key needs at least one role"));
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut id);
    rand_core::OsRng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let mut names: Vec<String> = roles.iter().map(|r| r.as_str().to_string()).collect();
    names.sort();
    names.dedup();
    let record = ApiKeyRecord {
        id: id.clone().into(),
        tenant,
        roles: names,
        hash: sha256_hex(secret.as_bytes()),
        label: label.map(str::to_string),
        created_ms: crate::clock::now_ms(),
        revoked_ms: None,
    };
    storage.key_put(record.clone()).await?;
    Ok(NewKey {
        key: format!("thk_{id}_{secret}"),
        record,
    })
}

/// The id of a presented key (`thk_<id>_<secret>`), if it has that shape.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix("thk_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(id)
}

/// Check a presented key against its stored record: the secret's hash
/// (compared in constant time) and revocation.
pub fn check(record: &ApiKeyRecord, presented: &str) -> Result<()> {
    let bad = || Error::new(ErrorKind::Unauthenticated, "the API key is not valid");
    if key_id(presented) != Some(record.id.as_str()) {
        return Err(bad());
    }
    let secret = &presented[4 + 16 + 1..];
    let hash = sha256_hex(secret.as_bytes());
    let diff = hash
        .bytes()
        .zip(record.hash.bytes())
        .fold(hash.len() ^ record.hash.len(), |acc, (a, b)| {
            acc | usize::from(a ^ b)
        });
    if diff != 0 {
        return Err(bad());
    }
    if record.revoked_ms.is_some() {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            format!("API key {} was revoked", record.id),
        ));
    }
    Ok(())
}

/// The stored key a presented key matches, if it is valid and not revoked.
pub async fn authenticate(storage: &dyn Storage, presented: &str) -> Result<ApiKeyRecord> {
    let bad = || Error::new(ErrorKind::Unauthenticated, "the API key is not valid");
    let id = key_id(presented).ok_or_else(bad)?;
    let record = storage.key_get(&id.into()).await?.ok_or_else(bad)?;
    check(&record, presented)?;
    Ok(record)
}

/// Whether a key holds `role` (`admin` holds every role).
pub fn has_role(key: &ApiKeyRecord, role: Role) -> bool {
    key.roles
        .iter()
        .any(|r| r == role.as_str() || r == Role::Admin.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KeyStore;
    use crate::storage::memory::MemoryStorage;

    #[tokio::test]
    async fn a_key_authenticates_only_as_itself() {
        let storage = MemoryStorage::new();
        let k = create(&storage, "acme", &[Role::Invoke], None)
            .await
            .unwrap();
        assert!(k.key.starts_with(&format!("thk_{}_", k.record.id)));
        let found = authenticate(&storage, &k.key).await.unwrap();
        assert_eq!(found.tenant, "acme");
        assert!(has_role(&found, Role::Invoke));
        assert!(!has_role(&found, Role::Approve));
        // One changed character of the secret, a foreign prefix, garbage.
        let mut wrong = k.key.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        for bad in [wrong.as_str(), "Bearer x", "", "thk_", "thk_zz_zz"] {
            let e = authenticate(&storage, bad).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unauthenticated, "{bad}");
        }
        assert!(storage.key_revoke(&k.record.id, 1).await.unwrap());
        let e = authenticate(&storage, &k.key).await.unwrap_err();
        assert!(e.message.contains("revoked"));
    }

    #[test]
    fn admin_holds_every_role() {
        let key = ApiKeyRecord {
            id: "0".repeat(16).into(),
            tenant: "t".into(),
            roles: vec!["admin".into()],
            hash: String::new(),
            label: None,
            created_ms: 0,
            revoked_ms: None,
        };
        for r in [Role::Invoke, Role::Approve, Role::Admin, Role::Audit] {
            assert!(has_role(&key, r));
        }
    }
}
