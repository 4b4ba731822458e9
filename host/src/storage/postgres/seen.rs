//! What this replica last saw of the hot rows it writes: its chains' heads,
//! its budget lines' balances and the running rows it admitted.
//!
//! A batch whose hot rows are all here, and that nobody else touched
//! lately, is decided against these values and written as **one
//! statement** (no `BEGIN`, no locking read, no `COMMIT`): the statement
//! locks the rows in the batch order (heads, invocation rows, lines),
//! checks that each still is what was seen, and writes only if all are
//! ([`Guard`]). When one is not (another replica or the reaper moved it),
//! nothing is written and the batch takes the locking path, which reads
//! under lock, decides and writes in a transaction; its reads refresh what
//! is seen here.
//!
//! Invariants:
//! * nothing here is trusted for a decision the database has not
//!   confirmed: a speculative write carries the values it was decided on,
//!   and the database refuses it whole unless they hold;
//! * a budget line is trusted only while its `used + reserved` has not
//!   grown past what was seen (settlements only shrink it; another
//!   replica's reservations grow it), so a budget decided here never
//!   admits what the locked balances would refuse;
//! * an entry is marked contended (`alone: false`) when the locking path
//!   read a value other than the one this replica last wrote, or a
//!   speculative write was refused: hot rows several replicas share take
//!   the locking path at once, not after a wasted round trip each time;
//! * every map is bounded: when one is full it is emptied (what is gone
//!   takes the locking path once).

use crate::audit::link::Head;
use crate::ids::InvocationId;
use crate::storage::Signed;
use crate::storage::{LedgerScope, Window};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A budget line's key.
pub(super) type Line = (LedgerScope, Window, String);

/// Most entries in each map.
const MAX_SEEN: usize = 1 << 16;

/// Who signs a batch's heads: its public key.
pub(super) type NotaryKey = [u8; 32];

/// A chain head this replica committed.
#[derive(Debug, Clone)]
struct SeenHead {
    head: Head,
    /// Its signed statement as written (the guard checks it too: a head
    /// whose signature was edited is vetted on the locking path, never
    /// overwritten).
    signed: Signed,
    /// The notary that signed it: a head is continued only by the one
    /// that signed it.
    notary: NotaryKey,
    alone: bool,
}

/// A budget line's balance as this replica last read or wrote it.
#[derive(Debug, Clone, Copy)]
struct SeenLine {
    used: i64,
    reserved: i64,
    alone: bool,
}

/// A running row this replica admitted.
#[derive(Debug, Clone)]
pub(super) struct SeenRow {
    pub owner: String,
    /// The `worst` column as written (its charges, as JSON).
    pub worst: String,
}

/// What a speculative write must find under its locks to go ahead: the
/// heads and the rows as they were seen. Empty on the locking path (which
/// holds its locks already).
#[derive(Debug, Default)]
pub(super) struct Guard {
    /// (chain, seq, hash, signed head) as this replica wrote them.
    pub heads: Vec<(String, Head, Signed)>,
    /// (id, owner, worst) of rows that must still be running.
    pub rows: Vec<(InvocationId, String, String)>,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Seen {
    heads: Mutex<HashMap<String, SeenHead>>,
    lines: Mutex<HashMap<Line, SeenLine>>,
    rows: Mutex<HashMap<InvocationId, SeenRow>>,
    /// Batches written as seen, and those of them the database refused.
    written: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bounded<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() >= MAX_SEEN {
        map.clear();
    }
}

impl Seen {
    /// The heads of `chains` with their signed statements, if this replica
    /// committed each last, with `notary`, and nobody else is writing them.
    pub(super) fn heads(
        &self,
        chains: &[String],
        notary: &NotaryKey,
    ) -> Option<BTreeMap<String, (Head, Signed)>> {
        let heads = lock(&self.heads);
        chains
            .iter()
            .map(|c| {
                let s = heads.get(c).filter(|s| s.alone && s.notary == *notary)?;
                Some((c.clone(), (s.head.clone(), s.signed.clone())))
            })
            .collect()
    }

    /// Count a batch written as seen (`refused`: the database refused it).
    pub(super) fn count(&self, refused: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.written.fetch_add(1, Relaxed);
        if refused {
            self.refused.fetch_add(1, Relaxed);
        }
    }

    /// Batches written as seen so far, and how many of them were refused.
    pub(super) fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.written.load(Relaxed), self.refused.load(Relaxed))
    }

    /// A batch committed: `read` is what its locks found (`None`: read
    /// nothing, a speculative write that was confirmed), `written` its new
    /// heads.
    pub(super) fn heads_committed(
        &self,
        notary: &NotaryKey,
        read: Option<&BTreeMap<String, Option<Head>>>,
        written: &[(String, Head, Signed)],
    ) {
        let mut heads = lock(&self.heads);
        for (chain, head, signed) in written {
            let alone = match read {
                None => true,
                // Nobody appended since this replica did.
                Some(read) => heads.get(chain).is_some_and(|s| {
                    s.notary == *notary && read.get(chain).and_then(Option::as_ref) == Some(&s.head)
                }),
            };
            bounded(&mut heads);
            heads.insert(
                chain.clone(),
                SeenHead {
                    head: head.clone(),
                    signed: signed.clone(),
                    notary: *notary,
                    alone,
                },
            );
        }
    }

    /// The balances of `lines`, if each was seen and nobody else is
    /// reserving on it.
    pub(super) fn lines<'a>(
        &self,
        keys: impl Iterator<Item = &'a Line>,
    ) -> Option<BTreeMap<Line, (i64, i64)>> {
        let lines = lock(&self.lines);
        keys.map(|k| {
            let s = lines.get(k).filter(|s| s.alone)?;
            Some((k.clone(), (s.used, s.reserved)))
        })
        .collect()
    }

    /// An admission batch committed: `read` is what its locks found
    /// (`None`: a speculative write, confirmed), `written` the lines'
    /// balances after it.
    pub(super) fn lines_committed(
        &self,
        read: Option<&BTreeMap<Line, (i64, i64)>>,
        written: &[(Line, i64, i64)],
    ) {
        let mut lines = lock(&self.lines);
        for (key, used, reserved) in written {
            bounded(&mut lines);
            let alone = match read {
                None => true,
                // Not grown since this replica saw it: nobody else reserved.
                Some(read) => lines.get(key).is_some_and(|s| {
                    read.get(key).is_some_and(|(u, r)| {
                        u.saturating_add(*r) <= s.used.saturating_add(s.reserved)
                    })
                }),
            };
            lines.insert(
                key.clone(),
                SeenLine {
                    used: *used,
                    reserved: *reserved,
                    alone,
                },
            );
        }
    }

    /// A speculative write was refused: what it relied on is contended.
    pub(super) fn contended<'a>(
        &self,
        chains: impl Iterator<Item = &'a String>,
        keys: impl Iterator<Item = &'a Line>,
    ) {
        let mut heads = lock(&self.heads);
        for c in chains {
            if let Some(s) = heads.get_mut(c) {
                s.alone = false;
            }
        }
        drop(heads);
        let mut lines = lock(&self.lines);
        for k in keys {
            if let Some(s) = lines.get_mut(k) {
                s.alone = false;
            }
        }
    }

    /// Rows this replica admitted (running, its own, with this worst case).
    pub(super) fn admitted(&self, rows: impl Iterator<Item = (InvocationId, SeenRow)>) {
        let mut seen = lock(&self.rows);
        for (id, row) in rows {
            bounded(&mut seen);
            seen.insert(id, row);
        }
    }

    /// The rows `ids`, if this replica admitted each.
    pub(super) fn rows(&self, ids: &[InvocationId]) -> Option<Vec<SeenRow>> {
        let seen = lock(&self.rows);
        ids.iter().map(|id| seen.get(id).cloned()).collect()
    }

    /// Rows ended (or found moved): forget them.
    pub(super) fn ended<'a>(&self, ids: impl Iterator<Item = &'a InvocationId>) {
        let mut seen = lock(&self.rows);
        for id in ids {
            seen.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(task: &str) -> Line {
        (LedgerScope::task("t", task), Window::all(), "calls".into())
    }

    #[test]
    fn a_head_another_replica_moved_is_contended_until_seen_alone_again() {
        let seen = Seen::default();
        let h = |seq| Head {
            seq,
            hash: format!("h{seq}"),
        };
        let w = |chain: &String, seq| {
            let signed = Signed {
                statement: format!("s{seq}"),
                signature: format!("g{seq}"),
            };
            [(chain.clone(), h(seq), signed)]
        };
        let (one, two) = ([1u8; 32], [2u8; 32]);
        let chain = "t".to_string();
        // First commit on the locking path: nothing was seen before.
        seen.heads_committed(
            &one,
            Some(&BTreeMap::from([(chain.clone(), None)])),
            &w(&chain, 1),
        );
        assert!(seen.heads(std::slice::from_ref(&chain), &one).is_none());
        // The next finds the head this replica wrote: alone.
        seen.heads_committed(
            &one,
            Some(&BTreeMap::from([(chain.clone(), Some(h(1)))])),
            &w(&chain, 2),
        );
        assert_eq!(
            seen.heads(std::slice::from_ref(&chain), &one).unwrap()[&chain].0,
            h(2)
        );
        // Another notary does not continue it.
        assert!(seen.heads(std::slice::from_ref(&chain), &two).is_none());
        // Someone else appended (read 5, not 2): contended.
        seen.heads_committed(
            &one,
            Some(&BTreeMap::from([(chain.clone(), Some(h(5)))])),
            &w(&chain, 6),
        );
        assert!(seen.heads(std::slice::from_ref(&chain), &one).is_none());
        // A refused speculative write marks it too.
        seen.heads_committed(
            &one,
            Some(&BTreeMap::from([(chain.clone(), Some(h(6)))])),
            &w(&chain, 7),
        );
        assert!(seen.heads(std::slice::from_ref(&chain), &one).is_some());
        seen.contended(std::iter::once(&chain), std::iter::empty());
        assert!(seen.heads(std::slice::from_ref(&chain), &one).is_none());
    }

    #[test]
    fn a_line_is_trusted_only_while_it_has_not_grown() {
        let seen = Seen::default();
        let k = line("a");
        seen.lines_committed(Some(&BTreeMap::new()), &[(k.clone(), 0, 1)]);
        assert!(
            seen.lines(std::iter::once(&k)).is_none(),
            "first seen: not yet alone"
        );
        // Read smaller than seen (a settlement released): alone.
        seen.lines_committed(
            Some(&BTreeMap::from([(k.clone(), (1, 0))])),
            &[(k.clone(), 1, 1)],
        );
        assert_eq!(seen.lines(std::iter::once(&k)).unwrap()[&k], (1, 1));
        // Read larger (another replica reserved): contended.
        seen.lines_committed(
            Some(&BTreeMap::from([(k.clone(), (1, 3))])),
            &[(k.clone(), 1, 4)],
        );
        assert!(seen.lines(std::iter::once(&k)).is_none());
        // Unknown lines are never trusted.
        assert!(seen.lines(std::iter::once(&line("b"))).is_none());
    }

    #[test]
    fn rows_are_forgotten_when_ended() {
        let seen = Seen::default();
        let id = InvocationId::generate();
        let row = SeenRow {
            owner: "me".into(),
            worst: "[]".into(),
        };
        seen.admitted(std::iter::once((id.clone(), row)));
        assert_eq!(seen.rows(std::slice::from_ref(&id)).unwrap()[0].owner, "me");
        seen.ended(std::iter::once(&id));
        assert!(seen.rows(std::slice::from_ref(&id)).is_none());
    }
}
