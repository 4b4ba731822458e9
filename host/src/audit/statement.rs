//! Signed statements: everything the audit trail's key signs.
//!
//! A statement is a small typed document ([`Statement`]); what is signed is
//! its canonical JSON after a domain-separation prefix,
//! `"toolhost-audit-statement/v2\n" ‖ canonical_json(statement)`, and that
//! canonical text is stored next to its signature. Invariants:
//!
//! * **Domain separation.** The statement's `kind` is inside the signed
//!   bytes: a periodic checkpoint can never be read as a head, a pruning
//!   anchor or an export, nor any of those as another; nothing else the
//!   key signs (no other format exists) shares the prefix.
//! * **The signed value is the value used.** Verification parses the
//!   stored statement text it checked the signature of, and takes every
//!   value (kind, chain, seq, hash, times, retention) from there. The
//!   database's own columns are only an index: when they disagree with the
//!   statement, that is reported as tampering.
//! * **Pruning proves itself.** A `prune` anchor states what it deleted
//!   (`first_seq..=seq`), when (`pruned_at_ms`), and under which retention
//!   (`retain_days`); it is accepted only if its last deleted entry was
//!   older than the retention period at that time.

use crate::audit::canonical::canonical_json;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The prefix of every signed byte string.
pub const PREFIX: &str = "toolhost-audit-statement/v2\n";

/// A day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Something the audit key vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Statement {
    /// The chain's latest entry, as committed: `seq` and `hash` at
    /// `time_ms` (when it was signed). Signed in the transaction of every
    /// commit that moves the head.
    Head {
        chain: String,
        seq: i64,
        hash: String,
        time_ms: i64,
    },
    /// Entry `seq` of the chain had `hash` (every
    /// [`crate::audit::CHECKPOINT_EVERY`] entries; `time_ms` is the
    /// entry's).
    Periodic {
        chain: String,
        seq: i64,
        hash: String,
        time_ms: i64,
    },
    /// Entries `first_seq..=seq` were deleted at `pruned_at_ms` under a
    /// retention of `retain_days`; entry `seq` had `hash` and `time_ms`.
    /// The chain continues at `seq + 1`, linking to `hash`.
    Prune {
        chain: String,
        first_seq: i64,
        seq: i64,
        hash: String,
        time_ms: i64,
        pruned_at_ms: i64,
        /// `None` only for an anchor written before statements existed and
        /// re-signed on upgrade (`upgraded`).
        retain_days: Option<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        upgraded: bool,
    },
    /// An export file: its last entry (`seq`, `hash`, `time_ms`), where it
    /// starts (`first_seq`, linking to `first_prev_hash`), how many entries
    /// it holds, and the time range it was asked for. A file cut at either
    /// end, or with entries dropped, no longer matches.
    Export {
        chain: String,
        seq: i64,
        hash: String,
        time_ms: i64,
        first_seq: i64,
        first_prev_hash: String,
        entries: u64,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    },
    /// The chains that exist (sorted), as of `time_ms`; `generation` grows
    /// by one with each chain added.
    Registry {
        chains: Vec<String>,
        generation: u64,
        time_ms: i64,
    },
}

impl Statement {
    /// The kind, as stored in the checkpoint rows' `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Statement::Head { .. } => "head",
            Statement::Periodic { .. } => "periodic",
            Statement::Prune { .. } => "prune",
            Statement::Export { .. } => "export",
            Statement::Registry { .. } => "registry",
        }
    }

    /// The chain position it describes: (chain, seq, hash, time_ms).
    pub fn position(&self) -> Option<(&str, i64, &str, i64)> {
        match self {
            Statement::Head {
                chain,
                seq,
                hash,
                time_ms,
            }
            | Statement::Periodic {
                chain,
                seq,
                hash,
                time_ms,
            }
            | Statement::Prune {
                chain,
                seq,
                hash,
                time_ms,
                ..
            }
            | Statement::Export {
                chain,
                seq,
                hash,
                time_ms,
                ..
            } => Some((chain, *seq, hash, *time_ms)),
            Statement::Registry { .. } => None,
        }
    }

    /// The canonical text that is signed (after [`PREFIX`]) and stored.
    pub fn canonical(&self) -> String {
        canonical_json(&serde_json::to_value(self).expect("statements serialize"))
    }

    /// Sign it.
    pub fn sign(&self, key: &SigningKey) -> Signed {
        let statement = self.canonical();
        let signature = hex::encode(key.sign(signed_bytes(&statement).as_bytes()).to_bytes());
        Signed {
            statement,
            signature,
        }
    }
}

fn signed_bytes(statement: &str) -> String {
    format!("{PREFIX}{statement}")
}

/// A statement's canonical text and its signature (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub statement: String,
    pub signature: String,
}

impl Signed {
    /// Check the signature and parse the statement it covers: the only way
    /// to read a statement.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Statement, String> {
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or("its signature is malformed")?;
        key.verify(signed_bytes(&self.statement).as_bytes(), &sig)
            .map_err(|_| "its signature is invalid")?;
        let parsed: Statement = serde_json::from_str(&self.statement)
            .map_err(|e| format!("its signed statement does not parse: {e}"))?;
        // The signed text is canonical: nothing else could have been meant.
        if parsed.canonical() != self.statement {
            return Err("its signed statement is not canonical".into());
        }
        Ok(parsed)
    }
}

/// Holds the audit key: signs statements (inside storage transactions too)
/// and verifies them.
pub struct Notary {
    key: SigningKey,
    public: VerifyingKey,
    /// The head statements this notary signed last, per chain: a head row
    /// that still holds one needs no signature check (the hot path).
    signed_heads: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Chains whose last signed head is remembered (beyond it, all are forgotten
/// and checked again).
const REMEMBERED_HEADS: usize = 65_536;

impl Notary {
    pub fn new(key: SigningKey) -> Notary {
        Notary {
            public: key.verifying_key(),
            key,
            signed_heads: Default::default(),
        }
    }

    pub fn sign(&self, statement: &Statement) -> Signed {
        let signed = statement.sign(&self.key);
        if let Statement::Head { chain, .. } = statement {
            let mut heads = self.signed_heads.lock().unwrap_or_else(|e| e.into_inner());
            if heads.len() >= REMEMBERED_HEADS {
                heads.clear();
            }
            heads.insert(chain.clone(), signed.statement.clone());
        }
        signed
    }

    pub fn verify(&self, signed: &Signed) -> Result<Statement, String> {
        signed.verify(&self.public)
    }

    /// [`Notary::verify`], skipping the signature check for a head statement
    /// this notary itself signed last for its chain (same text, same key).
    pub fn verify_head(&self, chain: &str, signed: &Signed) -> Result<Statement, String> {
        let known = self
            .signed_heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(chain)
            .is_some_and(|s| *s == signed.statement);
        if known && !signed.signature.is_empty() {
            // Parsed, not verified: the text is one this key signed.
            if let Ok(s) = serde_json::from_str::<Statement>(&signed.statement) {
                return Ok(s);
            }
        }
        self.verify(signed)
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.public
    }
}

impl std::fmt::Debug for Notary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Notary({})", hex::encode(self.public.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn a_statement_verifies_only_as_itself() {
        let k = key();
        let periodic = Statement::Periodic {
            chain: "acme".into(),
            seq: 1000,
            hash: "ab".into(),
            time_ms: 5,
        };
        let signed = periodic.sign(&k);
        assert_eq!(signed.verify(&k.verifying_key()), Ok(periodic));
        // Relabelling the kind inside the text breaks the signature.
        let relabelled = Signed {
            statement: signed.statement.replace("periodic", "head"),
            signature: signed.signature.clone(),
        };
        assert!(relabelled.verify(&k.verifying_key()).is_err());
        // Another key's statement is not ours.
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(signed.verify(&other.verifying_key()).is_err());
    }

    #[test]
    fn unknown_fields_and_kinds_do_not_parse() {
        let k = key();
        for text in [
            r#"{"chain":"a","hash":"h","kind":"periodic","seq":1,"time_ms":1,"x":1}"#,
            r#"{"chain":"a","hash":"h","kind":"tip","seq":1,"time_ms":1}"#,
        ] {
            let signature = hex::encode(k.sign(signed_bytes(text).as_bytes()).to_bytes());
            let s = Signed {
                statement: text.into(),
                signature,
            };
            assert!(s.verify(&k.verifying_key()).is_err(), "{text}");
        }
    }
}
