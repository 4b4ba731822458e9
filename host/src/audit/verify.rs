//! Verification of an audit chain, in the data dir or in an export file, and
//! the export itself.
//!
//! Both paths feed entries to one [`ChainCheck`], so an independent verifier
//! of an export applies exactly the checks `host audit verify` does.

use super::statement::{DAY_MS, Statement};
use super::{GENESIS, chain_hash_matches};
use crate::error::{Error, Result};
use crate::storage::{Checkpoint, Storage, StoredEntry};
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

/// The result of verifying one chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub chain: String,
    pub entries: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The signed head (seq, hash) verification ended at: keep it somewhere
    /// the store's writers cannot reach, and a later rollback to an older
    /// state shows as a chain whose signed head is behind it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_head: Option<(i64, String)>,
    /// What is wrong, and where. Empty when the chain verifies.
    pub problems: Vec<String>,
}

/// The result of verifying a trail.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub public_key: String,
    pub entries: u64,
    /// What is wrong with the trail as a whole (its registry of chains:
    /// deleted or unlisted chains). Empty when it verifies.
    pub problems: Vec<String>,
    pub chains: Vec<ChainReport>,
}

const MAX_PROBLEMS: usize = 100;

/// Entries read per page while verifying.
const PAGE: i64 = 25_000;

/// Pages read ahead, concurrently, while verifying.
const READ_AHEAD: usize = 2;

/// Whether each entry's hash matches its content, computed on all cores.
fn hash_all(page: &[StoredEntry]) -> Vec<bool> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = page.len().div_ceil(threads).max(1);
    let check = |part: &[StoredEntry]| -> Vec<bool> {
        part.iter()
            .map(|e| chain_hash_matches(&e.prev_hash, e.time_ms, &e.body, &e.hash))
            .collect()
    };
    if threads == 1 || page.len() < 1024 {
        return check(page);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = page
            .chunks(chunk)
            .map(|part| s.spawn(move || check(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Checks one chain, entry by entry.
pub struct ChainCheck {
    report: ChainReport,
    expected_seq: i64,
    /// The hash the next entry must link to: the last entry's hash.
    expected_prev: String,
    /// Signed positions the entries must match: seq → (kind, hash).
    checkpoints: BTreeMap<i64, Vec<(&'static str, String)>>,
    dropped: usize,
}

/// A stored checkpoint's signed statement, checked: the signature is valid,
/// the statement is about `chain`, and the row's columns say what the
/// statement says (else the row was edited: a relabelled kind, a moved
/// position). Returns the statement, or what is wrong with the row.
pub fn checked(
    key: &VerifyingKey,
    chain: &str,
    c: &Checkpoint,
) -> std::result::Result<Statement, String> {
    let what = format!("the {} checkpoint at entry {}", c.kind, c.seq);
    if c.statement.is_empty() {
        return Err(format!("{what} is not a signed statement"));
    }
    let statement = c.signed().verify(key).map_err(|e| format!("{what}: {e}"))?;
    if statement.kind() != c.kind {
        return Err(format!(
            "{what} is signed as a {} checkpoint (relabelled)",
            statement.kind()
        ));
    }
    match statement.position() {
        Some((ch, seq, hash, time_ms))
            if ch == chain
                && ch == c.chain
                && seq == c.seq
                && hash == c.hash
                && time_ms == c.time_ms =>
        {
            Ok(statement)
        }
        Some((ch, seq, ..)) => Err(format!(
            "{what} disagrees with its signed statement (chain `{ch}`, entry {seq})"
        )),
        None => Err(format!("{what} is not about a chain position")),
    }
}

/// Whether a prune anchor proves that what it deleted had passed its
/// retention period when it was deleted.
fn retention_proven(s: &Statement) -> bool {
    match s {
        Statement::Prune {
            time_ms,
            pruned_at_ms,
            retain_days,
            upgraded,
            ..
        } => match retain_days {
            Some(days) => time_ms.saturating_add(i64::from(*days) * DAY_MS) <= *pruned_at_ms,
            None => *upgraded,
        },
        _ => false,
    }
}

impl ChainCheck {
    /// Start a chain at `seq`, whose previous hash must be `prev_hash`.
    pub fn new(chain: &str, seq: i64, prev_hash: &str) -> Self {
        ChainCheck {
            report: ChainReport {
                chain: chain.to_string(),
                entries: 0,
                first_seq: None,
                last_seq: None,
                signed_head: None,
                problems: Vec::new(),
            },
            expected_seq: seq,
            expected_prev: prev_hash.to_string(),
            checkpoints: BTreeMap::new(),
            dropped: 0,
        }
    }

    fn problem(&mut self, p: String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(p);
        } else {
            self.dropped += 1;
        }
    }

    /// Signed positions (periodic checkpoints, the head, a prune anchor) to
    /// compare against the entries as they pass.
    pub fn expect(&mut self, statements: impl IntoIterator<Item = Statement>) {
        for s in statements {
            if let Some((_, seq, hash, _)) = s.position() {
                self.checkpoints
                    .entry(seq)
                    .or_default()
                    .push((s.kind(), hash.to_string()));
            }
        }
    }

    /// Check the next entry.
    pub fn push(&mut self, e: StoredEntry) {
        let hash_ok = chain_hash_matches(&e.prev_hash, e.time_ms, &e.body, &e.hash);
        self.push_hashed(e, hash_ok);
    }

    /// Check the next entry, whose own hash was already checked (`hash_ok`).
    pub fn push_hashed(&mut self, e: StoredEntry, hash_ok: bool) {
        self.report.entries += 1;
        self.report.first_seq.get_or_insert(e.seq);
        self.report.last_seq = Some(e.seq);
        if e.seq > self.expected_seq {
            let gap = if e.seq - 1 == self.expected_seq {
                format!("entry {} is missing (removed)", self.expected_seq)
            } else {
                format!(
                    "entries {} to {} are missing (removed)",
                    self.expected_seq,
                    e.seq - 1
                )
            };
            self.problem(gap);
        } else if e.seq < self.expected_seq {
            self.problem(format!(
                "entry {} appears after entry {} (inserted or reordered)",
                e.seq,
                self.expected_seq - 1
            ));
        }
        if e.prev_hash != self.expected_prev {
            self.problem(format!(
                "entry {}: does not link to the entry before it (an entry was modified, removed, inserted or reordered before it)",
                e.seq
            ));
        }
        if !hash_ok {
            self.problem(format!(
                "entry {}: its content does not match its hash (modified)",
                e.seq
            ));
        }
        if let Some(cps) = self.checkpoints.get(&e.seq)
            && let Some((kind, _)) = cps.iter().find(|(_, hash)| *hash != e.hash)
        {
            self.problem(format!(
                "entry {}: differs from the signed {kind} checkpoint at it (modified)",
                e.seq
            ));
        }
        self.expected_seq = e.seq + 1;
        self.expected_prev = e.hash;
    }

    /// Finish, checking the end of the chain against its current head row
    /// (`tip`: unsigned seq and hash) and its signed head statement.
    pub fn finish(mut self, tip: Option<(i64, &str)>, head: Option<&Statement>) -> ChainReport {
        let last = self.report.last_seq.unwrap_or(self.expected_seq - 1);
        let missing = |from: i64, to: i64| {
            if from == to {
                format!("entry {from} is missing")
            } else {
                format!("entries {from} to {to} are missing")
            }
        };
        match tip {
            None if self.report.entries > 0 => {
                self.problem("the chain has no head row: its end cannot be checked".into())
            }
            None => {}
            Some((seq, _)) if seq > last => self.problem(format!(
                "{}: the chain ends before its head (truncated)",
                missing(last + 1, seq)
            )),
            Some((seq, _)) if seq < last => self.problem(format!(
                "entries {} to {last} are past the chain's head (appended outside Toolhost)",
                seq + 1
            )),
            Some((_, hash)) if self.report.entries > 0 && self.expected_prev != hash => self
                .problem(format!(
                    "entry {last}: differs from the chain's head (modified)"
                )),
            Some(_) => {}
        }
        self.report.signed_head = head
            .and_then(Statement::position)
            .map(|(_, seq, hash, _)| (seq, hash.to_string()));
        match head.and_then(Statement::position) {
            None if self.report.entries > 0 || tip.is_some() => {
                self.problem("no signed head: the chain's end is not signed".into())
            }
            None => {}
            Some((_, seq, _, _)) if seq > last => self.problem(format!(
                "{}: the chain ends before its signed head (truncated)",
                missing(last + 1, seq)
            )),
            Some((_, seq, _, _)) if seq < last => self.problem(format!(
                "entries {} to {last} are past the chain's signed head (appended outside Toolhost)",
                seq + 1
            )),
            // At the end: compared with its entry as it passed.
            Some(_) => {}
        }
        if self.dropped > 0 {
            let n = self.dropped;
            self.report
                .problems
                .push(format!("… and {n} more problems"));
        }
        self.report
    }
}

/// Verify every chain (or one) in the store, and (for all) the signed
/// registry of chains against the chains there are and the tenants that
/// have invocation records.
pub async fn verify(
    storage: &Arc<dyn Storage>,
    key: &VerifyingKey,
    only: Option<&str>,
) -> Result<Report> {
    let present = storage.audit_chains().await?;
    let mut problems = Vec::new();
    let audited = storage.audited_tenants().await?;
    let registered: Option<Vec<String>> = match storage.audit_registry().await? {
        // A store no trail was ever opened on (tools registered and keys
        // made, nothing invoked): no key pinned, no chain, no record. (The
        // first opening pins the key and signs the registry together.)
        None if present.is_empty()
            && audited.is_empty()
            && storage.meta_get("audit.public_key").await?.is_none() =>
        {
            Some(Vec::new())
        }
        None => {
            problems.push("the signed registry of chains is missing (deleted)".to_string());
            None
        }
        Some(signed) => match signed.verify(key) {
            Ok(Statement::Registry { chains, .. }) => Some(chains),
            Ok(other) => {
                problems.push(format!(
                    "the registry of chains is signed as a {} statement (forged)",
                    other.kind()
                ));
                None
            }
            Err(e) => {
                problems.push(format!("the registry of chains: {e}"));
                None
            }
        },
    };
    let chains = match only {
        Some(c) => vec![c.to_string()],
        None => {
            let mut all = present.clone();
            all.extend(registered.iter().flatten().cloned());
            all.extend(audited.iter().cloned());
            all.sort();
            all.dedup();
            all
        }
    };
    if let Some(registered) = &registered {
        for chain in &chains {
            let listed = registered.contains(chain);
            let exists = present.contains(chain);
            if !listed && exists {
                problems.push(format!(
                    "chain `{chain}` is not in the signed registry of chains (created outside Toolhost)"
                ));
            }
        }
    }
    for chain in &chains {
        if present.contains(chain) {
            continue;
        }
        if registered.as_ref().is_some_and(|r| r.contains(chain)) {
            problems.push(format!(
                "chain `{chain}` is in the signed registry but has no entries or head (deleted)"
            ));
        } else if audited.contains(chain) {
            problems.push(format!(
                "tenant `{chain}` has invocation records but no audit chain (deleted)"
            ));
        }
    }
    let mut reports = Vec::new();
    for chain in chains.into_iter().filter(|c| present.contains(c)) {
        reports.push(verify_chain(storage, key, &chain, &[], false).await?.0);
    }
    let entries = reports.iter().map(|r| r.entries).sum();
    Ok(Report {
        ok: problems.is_empty() && reports.iter().all(|r| r.problems.is_empty()),
        public_key: hex::encode(key.to_bytes()),
        entries,
        problems,
        chains: reports,
    })
}

/// An entry as verification read it: what the host may sign about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub time_ms: i64,
}

/// Verify `chain`, and return the entries at `probes` as that verification
/// read them. `to_head`: only up to the head read at the start (entries a
/// live host commits meanwhile are not read, nor reported as past it).
async fn verify_chain(
    storage: &Arc<dyn Storage>,
    key: &VerifyingKey,
    chain: &str,
    probes: &[i64],
    to_head: bool,
) -> Result<(ChainReport, Vec<Seen>)> {
    let mut seen = Vec::new();
    let mut probe = |e: &StoredEntry| {
        if probes.contains(&e.seq) {
            seen.push(Seen {
                seq: e.seq,
                prev_hash: e.prev_hash.clone(),
                hash: e.hash.clone(),
                time_ms: e.time_ms,
            });
        }
    };
    let rows = storage.checkpoints(chain).await?;
    let mut row_problems = Vec::new();
    let mut statements = Vec::new();
    let mut tip = None;
    for c in &rows {
        if c.kind == "tip" {
            tip = Some((c.seq, c.hash.clone()));
            continue;
        }
        match checked(key, chain, c) {
            Ok(s) => statements.push(s),
            Err(problem) => row_problems.push(problem),
        }
    }
    let mut anchor: Option<Statement> = None;
    for s in &statements {
        if let Statement::Prune { seq, .. } = s {
            if !retention_proven(s) {
                row_problems.push(format!(
                    "the prune anchor at entry {seq} does not prove its retention period had passed"
                ));
                continue;
            }
            if anchor
                .as_ref()
                .and_then(Statement::position)
                .is_none_or(|(_, a, _, _)| *seq > a)
            {
                anchor = Some(s.clone());
            }
        }
    }
    let head = statements
        .iter()
        .find(|s| matches!(s, Statement::Head { .. }))
        .cloned();
    let (start, prev) = match anchor.as_ref().and_then(Statement::position) {
        Some((_, seq, hash, _)) => (seq + 1, hash.to_string()),
        None => (1, GENESIS.to_string()),
    };
    let mut check = ChainCheck::new(chain, start, &prev);
    for p in row_problems {
        check.problem(p);
    }
    check.expect(
        statements
            .iter()
            .filter(|s| matches!(s, Statement::Periodic { .. } | Statement::Head { .. }))
            .cloned(),
    );
    // Entries up to a pruning anchor are gone by design, not "missing".
    // Read pages of the range up to the head row on several connections at
    // once (a page is a seq range, so gaps cannot shift pages), hash each
    // page on all cores, and walk the links in order. Whatever lies past
    // it is read after it.
    let read = |after: i64, upto: i64| {
        let (storage, chain) = (storage.clone(), chain.to_string());
        tokio::spawn(async move {
            let page = storage.audit_range(&chain, after, upto).await?;
            tokio::task::spawn_blocking(move || {
                let ok = hash_all(&page);
                (page, ok)
            })
            .await
            .map_err(|e| Error::internal(format!("verifier task: {e}")))
        })
    };
    let joined = |e: tokio::task::JoinError| Error::internal(format!("verifier task: {e}"));
    let end = tip.as_ref().map_or(start - 1, |(seq, _)| *seq);
    let mut ranges = (start - 1..end)
        .step_by(PAGE as usize)
        .map(|a| (a, (a + PAGE).min(end)));
    let mut inflight = std::collections::VecDeque::new();
    for r in ranges.by_ref().take(READ_AHEAD) {
        inflight.push_back(read(r.0, r.1));
    }
    while let Some(pending) = inflight.pop_front() {
        if let Some(r) = ranges.next() {
            inflight.push_back(read(r.0, r.1));
        }
        let (page, ok) = pending.await.map_err(joined)??;
        for (e, ok) in page.into_iter().zip(ok) {
            probe(&e);
            check.push_hashed(e, ok);
        }
    }
    let mut after = end.max(start - 1);
    while !(to_head && tip.is_some()) {
        let page = storage.audit_read(chain, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page {
            probe(&e);
            check.push(e);
        }
    }
    let report = check.finish(
        tip.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
        head.as_ref(),
    );
    Ok((report, seen))
}

/// Verify `chain` before the host signs something about it (a prune
/// anchor, an export): the whole chain, up to its signed head, and the
/// entries at `probes` exactly as the statement will name them. A store
/// someone edited is refused (`corrupt`), never vouched for: a signature
/// over a forged or emptied chain would make the forgery verify.
pub(crate) async fn vouch(
    storage: &Arc<dyn Storage>,
    key: &VerifyingKey,
    chain: &str,
    probes: &[&StoredEntry],
) -> Result<()> {
    let seqs: Vec<i64> = probes.iter().map(|e| e.seq).collect();
    // Up to the head as it is now: a host appending meanwhile is not
    // tampering (what it appends is not what is being vouched for).
    let (report, seen) = verify_chain(storage, key, chain, &seqs, true).await?;
    if let Some(problem) = report.problems.first() {
        return Err(Error::corrupt(format!(
            "the audit chain `{chain}` does not verify ({problem}{}); nothing was signed: run `host audit verify`",
            match report.problems.len() {
                1 => String::new(),
                n => format!(", and {} more problems", n - 1),
            }
        )));
    }
    for e in probes {
        let as_read = Seen {
            seq: e.seq,
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
            time_ms: e.time_ms,
        };
        if !seen.contains(&as_read) {
            return Err(Error::corrupt(format!(
                "the audit chain `{chain}`: entry {} changed while it was being read; nothing was signed",
                e.seq
            )));
        }
    }
    Ok(())
}

/// Write an export of `chain`'s entries with `since_ms <= time_ms < until_ms`
/// as JSON lines: a header, the entries, the checkpoints that fall inside,
/// and a fresh `export` checkpoint signed over the last entry written, so the
/// file verifies on its own ([`verify_export`]).
pub async fn export<W: Write + ?Sized>(
    log: &super::AuditLog,
    chain: &str,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    out: &mut W,
) -> Result<u64> {
    let storage = log.storage();
    let io = |e: std::io::Error| Error::internal(format!("writing the export: {e}"));
    let header = json!({
        "type": "header",
        "format": "toolhost-audit-export/v1",
        "chain": chain,
        "public_key": log.public_key(),
        "hash": "sha256(prev_hash + \"\\n\" + time_ms + \"\\n\" + body), lowercase hex; the first entry of a chain links to 64 zeros",
        "checkpoint": "ed25519 (hex `signature`) over \"toolhost-audit-statement/v2\\n\" + `statement`, the canonical JSON of {kind, chain, seq, hash, time_ms, ...}; only what the statement says counts",
    });
    writeln!(out, "{header}").map_err(io)?;
    let mut after = 0;
    let mut written = 0u64;
    let mut first: Option<StoredEntry> = None;
    let mut last: Option<StoredEntry> = None;
    'pages: loop {
        let page = storage.audit_read(chain, after, 20_000).await?;
        let Some(tail) = page.last() else { break };
        after = tail.seq;
        for e in page {
            if since_ms.is_some_and(|s| e.time_ms < s) {
                continue;
            }
            if until_ms.is_some_and(|u| e.time_ms >= u) {
                break 'pages;
            }
            let line = json!({
                "type": "entry", "chain": e.chain, "seq": e.seq, "time_ms": e.time_ms,
                "prev_hash": e.prev_hash, "hash": e.hash, "body": e.body,
            });
            writeln!(out, "{line}").map_err(io)?;
            written += 1;
            if first.is_none() {
                first = Some(e.clone());
            }
            last = Some(e);
        }
    }
    if let (Some(first), Some(last)) = (&first, &last) {
        for c in storage.checkpoints(chain).await? {
            if (c.kind == "periodic" || c.kind == "prune")
                && c.seq >= first.seq
                && c.seq <= last.seq
            {
                writeln!(out, "{}", json!({"type": "checkpoint", "checkpoint": c})).map_err(io)?;
            }
        }
    }
    // Signed only over a chain that verifies, and over these very entries.
    let ends: Vec<&StoredEntry> = first.iter().chain(last.iter()).collect();
    vouch(storage, log.notary().public_key(), chain, &ends).await?;
    // Always signed, an empty range too: a file without its statement, or
    // cut at either end, does not verify.
    let c = log.sign_export(
        chain,
        first.as_ref(),
        last.as_ref(),
        written,
        (since_ms, until_ms),
    );
    writeln!(out, "{}", json!({"type": "checkpoint", "checkpoint": c})).map_err(io)?;
    Ok(written)
}

/// Verify an export file on its own. `trusted_key` (hex) should be the
/// public key obtained independently; without it, the file's own is used
/// and the report says so.
pub fn verify_export(input: &mut dyn BufRead, trusted_key: Option<&str>) -> Result<Report> {
    let bad = |line: usize, why: String| Error::invalid_args(format!("export line {line}: {why}"));
    let mut key: Option<VerifyingKey> = None;
    let mut chain = String::new();
    let mut entries: Vec<StoredEntry> = Vec::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
        match v["type"].as_str() {
            Some("header") => {
                chain = v["chain"].as_str().unwrap_or_default().to_string();
                let hexkey = trusted_key.or(v["public_key"].as_str()).unwrap_or_default();
                key = Some(parse_key(hexkey).map_err(|e| bad(n, e))?);
            }
            Some("entry") => entries.push(StoredEntry {
                chain: v["chain"].as_str().unwrap_or_default().into(),
                seq: v["seq"]
                    .as_i64()
                    .ok_or_else(|| bad(n, "entry without seq".into()))?,
                time_ms: v["time_ms"]
                    .as_i64()
                    .ok_or_else(|| bad(n, "entry without time_ms".into()))?,
                body: v["body"].as_str().unwrap_or_default().into(),
                prev_hash: v["prev_hash"].as_str().unwrap_or_default().into(),
                hash: v["hash"].as_str().unwrap_or_default().into(),
            }),
            Some("checkpoint") => checkpoints.push(
                serde_json::from_value(v["checkpoint"].clone())
                    .map_err(|e| bad(n, e.to_string()))?,
            ),
            other => return Err(bad(n, format!("unknown line type {other:?}"))),
        }
    }
    let key = key.ok_or_else(|| Error::invalid_args("the export has no header"))?;
    let (start, prev) = entries
        .first()
        .map(|e| (e.seq, e.prev_hash.clone()))
        .unwrap_or((1, GENESIS.to_string()));
    let mut check = ChainCheck::new(&chain, start, &prev);
    let mut export: Option<Statement> = None;
    let mut expected = Vec::new();
    for c in &checkpoints {
        if c.kind == "export" {
            // An export statement for an empty range names no position.
            match c.signed().verify(&key) {
                Ok(s @ Statement::Export { .. }) if export.is_none() => export = Some(s),
                Ok(Statement::Export { .. }) => {
                    check.problem("the export has more than one export statement".into())
                }
                Ok(other) => check.problem(format!(
                    "the export statement is signed as a {} statement (relabelled)",
                    other.kind()
                )),
                Err(e) => check.problem(format!("the export statement: {e}")),
            }
            continue;
        }
        match checked(&key, &chain, c) {
            Ok(s @ Statement::Periodic { .. }) => expected.push(s),
            Ok(_) => {}
            Err(problem) => check.problem(problem),
        }
    }
    let mut tip = None;
    match &export {
        None => check
            .problem("the export has no signed export statement (cut, or not an export)".into()),
        Some(Statement::Export {
            chain: c,
            seq,
            hash,
            first_seq,
            first_prev_hash,
            entries: count,
            ..
        }) => {
            if *c != chain {
                check.problem(format!(
                    "the export statement is about chain `{c}`, not `{chain}`"
                ));
            }
            if *count != entries.len() as u64 {
                check.problem(format!(
                    "the export holds {} entries; its signed statement says {count} (entries removed or added)",
                    entries.len()
                ));
            }
            match entries.first() {
                Some(e) if e.seq != *first_seq || e.prev_hash != *first_prev_hash => check.problem(format!(
                    "the export starts at entry {}; its signed statement says entry {first_seq} (cut at the front)",
                    e.seq
                )),
                _ => {}
            }
            if *count > 0 {
                tip = Some((*seq, hash.clone()));
                expected.push(export.clone().expect("matched above"));
            }
        }
        Some(_) => unreachable!("only export statements are kept"),
    }
    check.expect(expected);
    for e in entries {
        if e.chain != chain {
            check.problem(format!(
                "entry {} belongs to chain `{}`, not `{chain}`",
                e.seq, e.chain
            ));
        }
        check.push(e);
    }
    let signed_end = export.as_ref().filter(|_| tip.is_some());
    let report = check.finish(
        tip.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
        signed_end,
    );
    Ok(Report {
        ok: report.problems.is_empty(),
        public_key: hex::encode(key.to_bytes()),
        entries: report.entries,
        problems: Vec::new(),
        chains: vec![report],
    })
}

/// Parse a hex ed25519 public key.
pub fn parse_key(hexkey: &str) -> std::result::Result<VerifyingKey, String> {
    hex::decode(hexkey.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| format!("`{hexkey}` is not an ed25519 public key (64 hex digits)"))
}
