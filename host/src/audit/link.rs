//! Chain linking: the one decision every storage backend makes when it
//! appends, as a pure function.
//!
//! A backend reads, inside its write transaction, the heads of the chains a
//! batch touches (and the chain registry when a chain is new), calls
//! [`link`], and writes what it returns in the same transaction: the
//! entries, the new heads with their signed `head` statements, the signed
//! `periodic` checkpoints, and a new signed registry when chains were
//! added. Because the head statement is signed in the transaction that
//! moves the head, every committed (and so every acknowledged) entry is
//! covered by a signature the moment it is durable.

use super::statement::{Notary, Signed, Statement};
use super::{CHECKPOINT_EVERY, GENESIS, chain_hash};
use crate::storage::{Checkpoint, NewEntry, StoredEntry};
use std::collections::BTreeMap;

/// A chain's head as stored: its last entry's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
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

/// Link `entries` onto `heads` (`None`: the chain has no entries yet).
/// `registry` is the stored registry (only read when a chain is new): a
/// valid one is extended; a missing or invalid one is not repaired from
/// what the database says (that would sign whatever an intruder left) but
/// started anew with just the new chains, so verification keeps reporting
/// the chains it does not list.
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
