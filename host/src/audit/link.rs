//! Chain linking: the one decision every storage backend makes when it
//! appends, as a pure function.
//!
//! A backend reads, inside its write transaction, the head rows of the
//! chains a batch touches (and the chain registry when a chain has none),
//! has [`vet`] decide what each chain's head really is, calls [`link`], and
//! writes what it returns in the same transaction: the entries, the new
//! heads with their signed `head` statements, the signed `periodic`
//! checkpoints, and a new signed registry when chains were added. Because
//! the head statement is signed in the transaction that moves the head,
//! every committed (and so every acknowledged) entry is covered by a
//! signature the moment it is durable.
//!
//! Invariant: a commit only ever continues a chain from its **signed** head
//! (never the row's unsigned columns, which anyone who can write the
//! database can set), and only starts a chain the signed registry does not
//! list. A chain whose head row lost or fails its signature, or that the
//! registry lists but has no head, is refused: signing over it would bless
//! whatever an intruder left.

use super::statement::{Notary, Signed, Statement};

use super::{CHECKPOINT_EVERY, GENESIS, chain_hash};
use crate::storage::{Checkpoint, NewEntry, StoredEntry};
use std::collections::BTreeMap;

/// A chain's head: its last entry's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// A chain's head row as stored: the unsigned columns and the signed head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRow {
    pub seq: i64,
    pub hash: String,
    pub signed: Option<Signed>,
}

/// What each touched chain's head is, decided from what is signed: a
/// verified head statement (whose unsigned columns agree), or none for a
/// chain the verified registry does not list. The chains that fail are
/// returned with why (their works are refused, `corrupt`).
pub fn vet(
    rows: &BTreeMap<String, Option<HeadRow>>,
    registry: Option<&Signed>,
    notary: &Notary,
) -> (BTreeMap<String, Option<Head>>, BTreeMap<String, String>) {
    let listed = || match registry.map(|r| notary.verify(r)) {
        Some(Ok(Statement::Registry { chains, .. })) => Ok(chains),
        Some(Ok(_)) | Some(Err(_)) => Err("the registry of chains is not a valid signed statement"),
        None => Err("the registry of chains is missing"),
    };
    let mut heads = BTreeMap::new();
    let mut bad = BTreeMap::new();
    let mut registry_chains: Option<Result<Vec<String>, &str>> = None;
    for (chain, row) in rows {
        match row {
            Some(row) => {
                let signed = row.signed.as_ref().ok_or("its head row has no signed head");
                let head = signed.and_then(|s| match notary.verify_head(chain, s) {
                    Ok(Statement::Head {
                        chain: c,
                        seq,
                        hash,
                        ..
                    }) if c == *chain => Ok(Head { seq, hash }),
                    Ok(_) => Err("its signed head is not a head statement of this chain"),
                    Err(_) => Err("its signed head does not verify"),
                });
                match head {
                    Ok(h) if h.seq == row.seq && h.hash == row.hash => {
                        heads.insert(chain.clone(), Some(h));
                    }
                    Ok(_) => {
                        bad.insert(
                            chain.clone(),
                            "its head row disagrees with its signed head".into(),
                        );
                    }
                    Err(why) => {
                        bad.insert(chain.clone(), why.to_string());
                    }
                }
            }
            None => {
                let listed = registry_chains.get_or_insert_with(listed);
                match listed {
                    Ok(chains) if chains.contains(chain) => {
                        bad.insert(
                            chain.clone(),
                            "the signed registry lists it but it has no head (deleted)".into(),
                        );
                    }
                    Ok(_) => {
                        heads.insert(chain.clone(), None);
                    }
                    Err(why) => {
                        bad.insert(chain.clone(), format!("a new chain cannot start: {why}"));
                    }
                }
            }
        }
    }
    (heads, bad)
}

/// The answer to a work that touches a chain [`vet`] refused.
pub fn refused(chain: &str, why: &str) -> crate::Error {
    crate::Error::corrupt(format!(
        "the audit chain `{chain}` cannot be continued: {why}; the store was altered outside Toolhost (`host audit verify` says where)"
    ))
}

/// What to write.
#[derive(Debug, Default)]
pub struct Linked {
    /// The entries, linked, in order.
    pub entries: Vec<StoredEntry>,
    /// Every touched chain's new head and its signed `head` statement.
    pub heads: Vec<(String, Head, Signed)>,
    /// Signed `periodic` checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// The new registry, when the batch created chains.
    pub registry: Option<Signed>,
}

/// Link `entries` onto `heads` (as [`vet`] decided them; `None`: a new
/// chain). `registry` is the stored registry (only read when a chain is
/// new; [`vet`] refused new chains unless it verifies), extended with the
/// new chains.
pub fn link(
    entries: &[NewEntry],
    heads: &BTreeMap<String, Option<Head>>,
    registry: Option<&Signed>,
    notary: &Notary,
    now_ms: i64,
) -> Linked {
    let mut current: BTreeMap<&str, Head> = BTreeMap::new();
    let mut created: Vec<String> = Vec::new();
    let mut out = Linked {
        entries: Vec::with_capacity(entries.len()),
        ..Linked::default()
    };
    for e in entries {
        let head = current.entry(e.chain.as_str()).or_insert_with(|| {
            heads.get(&e.chain).cloned().flatten().unwrap_or_else(|| {
                created.push(e.chain.clone());
                Head {
                    seq: 0,
                    hash: GENESIS.to_string(),
                }
            })
        });
        let seq = head.seq + 1;
        let hash = chain_hash(&head.hash, e.time_ms, &e.body);
        let prev_hash = std::mem::replace(
            head,
            Head {
                seq,
                hash: hash.clone(),
            },
        )
        .hash;
        if seq % CHECKPOINT_EVERY == 0 {
            let statement = Statement::Periodic {
                chain: e.chain.clone(),
                seq,
                hash: hash.clone(),
                time_ms: e.time_ms,
            };
            out.checkpoints.push(checkpoint(&statement, notary));
        }
        out.entries.push(StoredEntry {
            chain: e.chain.clone(),
            seq,
            time_ms: e.time_ms,
            body: e.body.clone(),
            prev_hash,
            hash,
        });
    }
    for (chain, head) in current {
        let signed = notary.sign(&Statement::Head {
            chain: chain.to_string(),
            seq: head.seq,
            hash: head.hash.clone(),
            time_ms: now_ms,
        });
        out.heads.push((chain.to_string(), head, signed));
    }
    if !created.is_empty() {
        let (mut chains, generation) = match registry.map(|r| notary.verify(r)) {
            Some(Ok(Statement::Registry {
                chains, generation, ..
            })) => (chains, generation + 1),
            _ => (Vec::new(), 0),
        };
        chains.extend(created);
        chains.sort();
        chains.dedup();
        out.registry = Some(notary.sign(&Statement::Registry {
            chains,
            generation,
            time_ms: now_ms,
        }));
    }
    out
}

/// A checkpoint row for a signed statement about a chain position.
pub fn checkpoint(statement: &Statement, notary: &Notary) -> Checkpoint {
    let signed = notary.sign(statement);
    let (chain, seq, hash, time_ms) = statement
        .position()
        .expect("checkpoints are statements about a chain position");
    Checkpoint {
        chain: chain.to_string(),
        seq,
        hash: hash.to_string(),
        time_ms,
        kind: statement.kind().to_string(),
        signature: signed.signature,
        statement: signed.statement,
    }
}
