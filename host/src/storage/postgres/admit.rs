//! Admissions ([`PostgresStorage::admit`], group committed): a batch of
//! admissions reserves its budget lines and writes its running rows in one
//! transaction, or, when this replica saw its lines last
//! ([`super::seen`]), in one guarded statement.

use super::commit::{Columns, settle};
use super::seen::{Line, SeenRow};
use super::{PostgresStorage, transact};
use crate::error::Result;
use crate::ids::InvocationId;
use crate::storage::{Admit, Charge, NewRun, Refused, exceeds, reservations};
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, BTreeSet};

/// Most admissions decided in one transaction.
const MAX_ADMITS: usize = 512;

impl PostgresStorage {
    /// Admit, batched with whatever else is queued: up to [`MAX_ADMITS`]
    /// admissions decided by [`admit_in`] in one transaction (committed
    /// without waiting for the WAL flush, see the module docs of
    /// [`super`]), so they share its round trips and its locks on the hot
    /// budget lines.
    pub(super) async fn admit(&self, a: Admit) -> Result<std::result::Result<(), Refused>> {
        type Answer = std::result::Result<(), Refused>;
        let take = |q: &[Admit]| q.len().min(MAX_ADMITS);
        let commit = |batch: Vec<Admit>| -> crate::BoxFuture<'_, Result<Vec<Answer>>> {
            Box::pin(async move {
                if let Some(answers) = self.admit_seen(&batch).await? {
                    return Ok(answers);
                }
                let mut taken = BTreeSet::new();
                loop {
                    let answer = transact!(self, false, |tx| {
                        let out = admit_in(&mut tx, &batch, &taken).await?;
                        let keep = matches!(out, Admitted::Answers { .. });
                        (out, keep)
                    })?;
                    match answer {
                        Admitted::Answers {
                            answers,
                            read,
                            written,
                        } => {
                            self.seen.lines_committed(Some(&read), &written);
                            self.seen.admitted(admitted_rows(&batch, &answers));
                            return Ok(answers);
                        }
                        // Ids found taken when their rows were inserted
                        // (never, with fresh ids): decide again without them.
                        Admitted::Taken(ids) if !ids.is_subset(&taken) => taken.extend(ids),
                        Admitted::Taken(_) => {
                            return Err(crate::Error::internal(
                                "an admission kept finding its invocation id taken",
                            ));
                        }
                    }
                }
            })
        };
        self.admits.submit(a, take, commit).await
    }
}

/// An admission's answer.
type Answer = std::result::Result<(), Refused>;

/// What deciding a batch of admissions came to.
pub(super) enum Admitted {
    /// Each admission's answer, in order (commit), with the lines' balances
    /// as locked (`read`) and after the batch (`written`).
    Answers {
        answers: Vec<Answer>,
        read: BTreeMap<Line, (i64, i64)>,
        written: Vec<(Line, i64, i64)>,
    },
    /// These new rows' ids were found taken when inserted (roll back, and
    /// decide again with them refused).
    Taken(BTreeSet<InvocationId>),
}

/// A charge's line.
fn line_of(c: &Charge) -> Line {
    (
        c.scope.clone(),
        c.window.clone(),
        c.metric.as_str().to_string(),
    )
}

/// The `worst` column of an admission's row.
fn worst_text(a: &Admit) -> String {
    serde_json::to_string(&a.worst).unwrap_or_default()
}

/// The rows a batch admitted, as [`Seen`](super::seen::Seen) keeps them.
fn admitted_rows<'a>(
    admits: &'a [Admit],
    answers: &'a [Answer],
) -> impl Iterator<Item = (InvocationId, SeenRow)> + 'a {
    admits
        .iter()
        .zip(answers)
        .filter(|(_, ok)| ok.is_ok())
        .map(|(a, _)| {
            let row = SeenRow {
                owner: a.run.owner.clone(),
                worst: worst_text(a),
            };
            (a.run.id.clone(), row)
        })
}

/// Each admission's reservations, and every limited line they touch with
/// its limit.
fn wanted_lines(admits: &[Admit]) -> (Vec<Vec<Charge>>, BTreeMap<Line, Option<i64>>) {
    let wanted: Vec<Vec<Charge>> = admits.iter().map(|a| reservations(&a.worst)).collect();
    let limits = wanted
        .iter()
        .flatten()
        .map(|c| (line_of(c), c.limit))
        .collect();
    (wanted, limits)
}

impl PostgresStorage {
    /// Admit a batch as one statement when its lines are as this replica
    /// last saw them and every admission fits them (see [`super::seen`]):
    /// `None` when it cannot be (the locking path decides), or the database
    /// refused it (nothing was written).
    async fn admit_seen(&self, admits: &[Admit]) -> Result<Option<Vec<Answer>>> {
        if admits.iter().any(|a| a.existing) {
            return Ok(None);
        }
        let (wanted, limits) = wanted_lines(admits);
        let Some(before) = self.seen.lines(limits.keys()) else {
            tracing::trace!("admissions take the locking path: a line is not seen alone");
            return Ok(None);
        };
        let mut lines = before.clone();
        let mut answers = decide_admits(
            admits,
            &wanted,
            &mut BTreeMap::new(),
            &mut lines,
            &BTreeSet::new(),
        );
        // A refusal is decided on the locked balances, never on these.
        if answers.iter().any(Result::is_err) {
            tracing::trace!("admissions take the locking path: one is refused on what was seen");
            return Ok(None);
        }
        let Some(mut conn) = self.seen_connection().await else {
            return Ok(None);
        };
        let change = Change {
            before: &before,
            after: &lines,
            limits: &limits,
            guarded: true,
        };
        let written = write_admits(&mut conn, admits, &answers, &change).await;
        let contended = || self.seen.contended(std::iter::empty(), limits.keys());
        let Some((inserted, written)) = self.seen_outcome(written, "admission", contended)? else {
            return Ok(None);
        };
        self.seen.lines_committed(None, &written);
        if inserted.len() < admits.len() {
            // A fresh id was taken (never, with fresh ids): its reservation
            // is given back, and it is refused.
            let inserted: BTreeSet<InvocationId> = inserted.into_iter().collect();
            let mut release = Vec::new();
            for ((a, want), answer) in admits.iter().zip(&wanted).zip(answers.iter_mut()) {
                if !inserted.contains(&a.run.id) {
                    release.extend(want.iter().cloned());
                    *answer = Err(Refused::Taken);
                }
            }
            self.seen.contended(std::iter::empty(), limits.keys());
            transact!(self, false, |tx| (
                settle(&mut tx, &release, &[]).await?,
                true
            ))?;
        }
        self.seen.admitted(admitted_rows(admits, &answers));
        Ok(Some(answers))
    }
}

/// A batch of admissions in the caller's transaction, decided in order,
/// each seeing the reservations of those admitted before it:
///
/// 1. the rows written before admission (`existing`) locked `FOR UPDATE`
///    in id order (as a batch of units of work locks them): each must still
///    be this owner's unadmitted running row;
/// 2. every limited line any of them reserves locked in line order by one
///    upsert that creates the missing ones (empty) and returns the rest's
///    `used` and `reserved`;
/// 3. each admission decided in memory by the shared rules
///    ([`reservations`], [`exceeds`]): all of its lines fit, or it is
///    refused and reserves nothing;
/// 4. the lines' new reservations and the admitted rows written by one
///    statement.
///
/// Ids in `taken` are refused as [`Refused::Taken`] without a look.
pub(super) async fn admit_in(
    tx: &mut PgConnection,
    admits: &[Admit],
    taken: &BTreeSet<InvocationId>,
) -> std::result::Result<Admitted, sqlx::Error> {
    // 1. Rows written before admission.
    let existing: Vec<&str> = admits
        .iter()
        .filter(|a| a.existing)
        .map(|a| a.run.id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rows: BTreeMap<InvocationId, (String, Option<String>, bool)> = BTreeMap::new();
    if !existing.is_empty() {
        for r in sqlx::query(
            "SELECT id, status, owner, admitted FROM invocations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&existing)
        .fetch_all(&mut *tx)
        .await?
        {
            rows.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
        }
    }

    // 2. The lines, locked in line order (the order `settle` locks them).
    let (wanted, limits) = wanted_lines(admits);
    let mut lines: BTreeMap<Line, (i64, i64)> = BTreeMap::new();
    if !limits.is_empty() {
        let mut k = Columns::default();
        for (scope, window, metric) in limits.keys() {
            k.push(scope, window, metric);
        }
        for r in sqlx::query(
            "INSERT INTO budget AS b (scope, win, metric, used, reserved, lim)
             SELECT s, w, m, 0, 0, l FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
               AS x(s, w, m, l)
             ORDER BY s COLLATE \"C\", w COLLATE \"C\", m COLLATE \"C\"
             ON CONFLICT (scope, win, metric) DO UPDATE SET lim = excluded.lim
             RETURNING scope, win, metric, used, reserved",
        )
        .bind(k.scope)
        .bind(k.window)
        .bind(k.metric)
        .bind(limits.values().copied().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        {
            lines.insert(
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                (r.try_get(3)?, r.try_get(4)?),
            );
        }
    }
    let before = lines.clone();

    // 3. Decide, in order.
    let answers = decide_admits(admits, &wanted, &mut rows, &mut lines, taken);

    // 4. Write.
    let change = Change {
        before: &before,
        after: &lines,
        limits: &limits,
        guarded: false,
    };
    let Some((inserted, written)) = write_admits(tx, admits, &answers, &change).await? else {
        return Err(sqlx::Error::Protocol(
            "an unguarded admission was refused".into(),
        ));
    };
    let fresh = admits
        .iter()
        .zip(&answers)
        .filter(|(a, ok)| ok.is_ok() && !a.existing);
    if inserted.len() < fresh.clone().count() {
        let inserted: BTreeSet<&InvocationId> = inserted.iter().collect();
        return Ok(Admitted::Taken(
            fresh
                .filter(|(a, _)| !inserted.contains(&a.run.id))
                .map(|(a, _)| a.run.id.clone())
                .collect(),
        ));
    }
    Ok(Admitted::Answers {
        answers,
        read: before,
        written,
    })
}

/// Each admission decided in order against `lines` (the balances, which it
/// updates as it admits) and `rows` (rows written before admission):
/// all of its lines fit, or it is refused and reserves nothing.
fn decide_admits(
    admits: &[Admit],
    wanted: &[Vec<Charge>],
    rows: &mut BTreeMap<InvocationId, (String, Option<String>, bool)>,
    lines: &mut BTreeMap<Line, (i64, i64)>,
    taken: &BTreeSet<InvocationId>,
) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(admits.len());
    let mut fresh_ids: BTreeSet<&str> = BTreeSet::new();
    for (a, want) in admits.iter().zip(wanted) {
        let mine = !taken.contains(&a.run.id)
            && (a.existing || fresh_ids.insert(&a.run.id))
            && (!a.existing
                || rows
                    .get(&a.run.id)
                    .is_some_and(|(status, owner, admitted)| {
                        status == "running" && !admitted && owner.as_deref() == Some(&a.run.owner)
                    }));
        if !mine {
            answers.push(Err(Refused::Taken));
            continue;
        }
        let refusal = want.iter().find_map(|c| {
            let (used, held) = lines.get(&line_of(c)).copied().unwrap_or((0, 0));
            exceeds(c, used, held)
        });
        if let Some(e) = refusal {
            answers.push(Err(Refused::Exceeded(e)));
            continue;
        }
        for c in want {
            let line = lines.entry(line_of(c)).or_default();
            line.1 = line.1.saturating_add(c.amount);
        }
        if a.existing {
            // Admitted once: a second admission of the same row is not.
            if let Some(row) = rows.get_mut(&a.run.id) {
                row.2 = true;
            }
        }
        answers.push(Ok(()));
    }
    answers
}

/// What a batch of admissions does to its lines.
struct Change<'a> {
    /// The balances it was decided on.
    before: &'a BTreeMap<Line, (i64, i64)>,
    /// The balances after it.
    after: &'a BTreeMap<Line, (i64, i64)>,
    limits: &'a BTreeMap<Line, Option<i64>>,
    /// Whether the balances were seen rather than locked: then every line
    /// in `before` must not have grown past it (or nothing is written).
    guarded: bool,
}

/// The lines' new reservations, the existing rows admitted and the new
/// rows, as one statement (committed without waiting for the WAL flush).
/// `None`: a guarded line had grown, nothing was written; else the ids of
/// the new rows inserted and the lines' balances after.
async fn write_admits(
    tx: &mut PgConnection,
    admits: &[Admit],
    answers: &[Answer],
    change: &Change<'_>,
) -> std::result::Result<Option<(Vec<InvocationId>, Vec<(Line, i64, i64)>)>, sqlx::Error> {
    let mut k = Columns::default();
    let (mut delta, mut seen, mut limit) = (Vec::new(), Vec::new(), Vec::new());
    for (key, (_, reserved)) in change.after {
        let (used0, reserved0) = change.before.get(key).copied().unwrap_or((0, 0));
        // Guarded, every line decided on is checked, those it reserves
        // nothing on too (a zero charge on a limited line is refused once
        // the line is past its limit).
        if change.guarded || reserved0 != *reserved {
            k.push(&key.0, &key.1, &key.2);
            delta.push(reserved.saturating_sub(reserved0));
            seen.push(change.guarded.then(|| used0.saturating_add(reserved0)));
            limit.push(change.limits.get(key).copied().flatten());
        }
    }
    let admitted: Vec<&Admit> = admits
        .iter()
        .zip(answers)
        .filter(|(_, ok)| ok.is_ok())
        .map(|(a, _)| a)
        .collect();
    let fresh: Vec<&Admit> = admitted.iter().copied().filter(|a| !a.existing).collect();
    let old: Vec<&Admit> = admitted.iter().copied().filter(|a| a.existing).collect();
    let s = |f: fn(&NewRun) -> &str, v: &[&Admit]| -> Vec<String> {
        v.iter().map(|a| f(&a.run).to_owned()).collect()
    };
    let o = |f: fn(&NewRun) -> &Option<String>, v: &[&Admit]| -> Vec<Option<String>> {
        v.iter().map(|a| f(&a.run).clone()).collect()
    };
    // `b` locks the lines in line order; every write waits for `ok`, which
    // reads them all. A row per line after, and per new row inserted.
    let rows = sqlx::query(
        "WITH x AS (
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
             AS x(s, w, m, d, seen, lim)
         ), b AS (
           SELECT b.scope, b.win, b.metric, b.used, b.reserved
           FROM budget b JOIN x ON b.scope = x.s AND b.win = x.w AND b.metric = x.m
           ORDER BY b.scope COLLATE \"C\", b.win COLLATE \"C\", b.metric COLLATE \"C\" FOR UPDATE OF b
         ), ok AS MATERIALIZED (
           SELECT (SELECT count(*) FROM b JOIN x ON b.scope = x.s AND b.win = x.w AND b.metric = x.m
                   WHERE x.seen IS NULL OR b.used::numeric + b.reserved <= x.seen)
                  = cardinality($1::text[]) AS ok
         ), lines AS (
           UPDATE budget t SET reserved = LEAST(t.reserved::numeric + x.d, 9223372036854775807)::bigint,
             lim = x.lim
           FROM x WHERE (SELECT ok FROM ok) AND t.scope = x.s AND t.win = x.w AND t.metric = x.m
           RETURNING t.scope, t.win, t.metric, t.used, t.reserved
         ), old AS (
           UPDATE invocations i SET admitted = true, worst = x.w, lease_until = x.l
           FROM UNNEST($7::text[], $8::text[], $9::bigint[]) AS x(id, w, l)
           WHERE (SELECT ok FROM ok) AND i.id = x.id
         ), new AS (
           INSERT INTO invocations (id, tenant, tool, function, version, workflow, task_id, principal,
                                    status, created_ms, response, owner, lease_until, admitted, worst,
                                    transport, idempotency_key, record_version)
           SELECT id, te, tl, f, v, wf, t, p, 'running', c, '{}', ow, l, true, w, tr, k, $24
           FROM UNNEST($10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                       $16::text[], $17::text[], $18::bigint[], $19::text[], $20::bigint[], $21::text[],
                       $22::text[], $23::text[])
             AS x(id, te, tl, f, v, wf, t, p, c, ow, l, w, tr, k)
           WHERE (SELECT ok FROM ok)
           ON CONFLICT (id) DO NOTHING
           RETURNING id
         )
         SELECT 0 AS k, ok::int AS n, NULL AS s, NULL AS w, NULL AS m, NULL::bigint AS u, NULL::bigint AS r,
                set_config('synchronous_commit', 'off', true) AS id
         FROM ok
         UNION ALL
         SELECT 1, 0, scope, win, metric, used, reserved, NULL FROM lines
         UNION ALL
         SELECT 2, 0, NULL, NULL, NULL, NULL, NULL, id FROM new",
    )
    .bind(k.scope)
    .bind(k.window)
    .bind(k.metric)
    .bind(delta)
    .bind(seen)
    .bind(limit)
    .bind(s(|r| &r.id, &old))
    .bind(old.iter().map(|a| worst_text(a)).collect::<Vec<_>>())
    .bind(old.iter().map(|a| a.run.lease_until).collect::<Vec<_>>())
    .bind(s(|r| &r.id, &fresh))
    .bind(s(|r| &r.tenant, &fresh))
    .bind(s(|r| &r.tool, &fresh))
    .bind(s(|r| &r.function, &fresh))
    .bind(o(|r| &r.version, &fresh))
    .bind(o(|r| &r.workflow, &fresh))
    .bind(o(|r| &r.task_id, &fresh))
    .bind(o(|r| &r.principal, &fresh))
    .bind(fresh.iter().map(|a| a.run.created_ms).collect::<Vec<_>>())
    .bind(s(|r| &r.owner, &fresh))
    .bind(fresh.iter().map(|a| a.run.lease_until).collect::<Vec<_>>())
    .bind(fresh.iter().map(|a| worst_text(a)).collect::<Vec<_>>())
    .bind(s(|r| &r.transport, &fresh))
    .bind(o(|r| &r.idempotency_key, &fresh))
    .bind(i32::try_from(crate::record::RECORD_VERSION).unwrap_or(i32::MAX))
    .fetch_all(&mut *tx)
    .await?;
    let (mut ok, mut inserted, mut written) = (false, Vec::new(), Vec::new());
    for r in &rows {
        match r.try_get::<i32, _>(0)? {
            0 => ok = r.try_get::<i32, _>(1)? == 1,
            1 => written.push((
                (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?),
                r.try_get(5)?,
                r.try_get(6)?,
            )),
            _ => inserted.push(r.try_get(7)?),
        }
    }
    Ok(ok.then_some((inserted, written)))
}
