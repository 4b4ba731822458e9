//! Identifiers: which tenant, invocation, approval request, API key or
//! budget ledger (its scope and window) a value names.
//!
//! Each is a newtype over its text, so a function that takes a tenant cannot
//! be handed an invocation id. They read as `&str` (through `Deref`) for
//! formatting, SQL parameters and comparisons; what the types fix is what a
//! value *is* where it is made and where it is passed.
//!
//! Invariants:
//! * A [`TenantId`] that data is made under is checked by
//!   [`TenantId::parse`]; one that only reaches stored data
//!   ([`TenantId::existing`]) or is read back from storage is taken as given. [`TenantId::default`] is `_`, the tenant of
//!   calls made without one: the one way to say "no tenant". It is a tenant
//!   like any other to everything downstream: its audit chain, its ledgers,
//!   its registry and the policy documents that name it are `_`'s.
//! * An approval request's id is its invocation's, `inv_` replaced by
//!   `apr_` ([`InvocationId::approval`]); nothing else derives one.
//!
//! This module imports nothing of the crate but its error type: every layer
//! may use it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<&$name> for $name {
            fn eq(&self, other: &&$name) -> bool {
                self.0 == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

id! {
    /// A tenant: whose keys, tools, ledgers, audit chain and records a value
    /// belongs to. `_` ([`TenantId::default`]) is the tenant of calls made
    /// without one.
    TenantId
}

id! {
    /// An invocation: `inv_` and 32 hex digits.
    InvocationId
}

id! {
    /// A human-approval request: its invocation's id with `apr_` for `inv_`.
    ApprovalId
}

id! {
    /// An API key's public id (16 hex digits; `thk_<id>_<secret>`).
    KeyId
}

id! {
    /// A budget ledger's scope: whose spending it counts
    /// (`task:<tenant>/<task>`, `workflow:<tenant>/<workflow>`,
    /// `tenant:<tenant>`). Made by [`crate::budget`]'s constructors, or
    /// read back from storage.
    LedgerScope
}

id! {
    /// A budget ledger's window: `all`, `day:2026-11-26` or `month:2026-11`
    /// (UTC). Made by [`crate::budget`]'s constructors, or read back from
    /// storage.
    Window
}

/// The name of the tenant of calls made without one.
pub const DEFAULT_TENANT: &str = "_";

impl Default for TenantId {
    fn default() -> Self {
        TenantId(DEFAULT_TENANT.to_string())
    }
}

impl TenantId {
    /// Check a tenant name from outside: 1 to 64 letters, digits, `-`, `_`
    /// or `.`, starting with a letter or digit; or `_`, the default tenant.
    pub fn parse(tenant: &str) -> Result<TenantId> {
        let ok = tenant == DEFAULT_TENANT
            || !tenant.is_empty()
                && tenant.len() <= 64
                && tenant.starts_with(|c: char| c.is_ascii_alphanumeric())
                && tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(TenantId(tenant.to_string()))
        } else {
            Err(Error::invalid_args(format!(
                "tenant `{tenant}`: use 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
            )))
        }
    }

    /// A tenant named to reach what is already stored under it (listing,
    /// deciding, disabling): any name that is not empty, since data stored
    /// before names were checked must stay reachable. Data is made only
    /// under names [`TenantId::parse`] accepts.
    pub fn existing(tenant: &str) -> Result<TenantId> {
        if tenant.is_empty() {
            return Err(Error::invalid_args("tenant: the name is empty"));
        }
        Ok(TenantId(tenant.to_string()))
    }

    /// The tenant of a value that may name none (`None` or empty: `_`).
    pub fn or_default(tenant: Option<&str>) -> TenantId {
        match tenant {
            Some(t) if !t.is_empty() => TenantId(t.to_string()),
            _ => TenantId::default(),
        }
    }

    /// Whether this is `_`, the tenant of calls made without one.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_TENANT
    }
}

impl InvocationId {
    /// A fresh id: `inv_` and 32 hex digits, of which the first 12 are the
    /// creation time in milliseconds and the rest 80 random bits (the layout
    /// of UUIDv7 and ULID): ids sort by time, and records written together
    /// land together in the store's index instead of on one random page each.
    pub fn generate() -> InvocationId {
        let mut bytes = [0u8; 16];
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        bytes[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes[6..]);
        InvocationId(format!("inv_{}", hex::encode(bytes)))
    }

    /// The id of the approval request this invocation waits on.
    pub fn approval(&self) -> ApprovalId {
        ApprovalId(self.0.replacen("inv_", "apr_", 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked_and_underscore_is_the_default() {
        assert!(TenantId::parse("acme-1").is_ok());
        assert!(TenantId::parse("_").unwrap().is_default());
        for bad in ["", "__", "-a", "a b", &"a".repeat(65)] {
            let err = TenantId::parse(bad).unwrap_err().to_string();
            assert!(err.contains("tenant"), "{bad:?}: {err}");
        }
        assert_eq!(TenantId::existing("Acme Corp").unwrap(), "Acme Corp");
        assert!(TenantId::existing("").is_err());
        assert_eq!(TenantId::or_default(None), TenantId::default());
        assert_eq!(TenantId::or_default(Some("")), TenantId::default());
        assert_eq!(TenantId::or_default(Some("acme")), "acme");
    }

    #[test]
    fn an_approval_is_named_after_its_invocation() {
        let id = InvocationId::generate();
        assert!(id.starts_with("inv_") && id.len() == 36, "{id}");
        let apr = id.approval();
        assert_eq!(apr.as_str(), format!("apr_{}", &id[4..]));
        assert_eq!(InvocationId::from("inv_ab").approval(), "apr_ab");
    }

    #[test]
    fn ids_serialize_as_their_text() {
        let t: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"acme\"");
        assert_eq!(format!("{t} {t:?}"), "acme \"acme\"");
    }
}
