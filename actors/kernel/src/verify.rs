//! The vocabulary of `falcon verify`: a [`Violation`] of a money invariant
//! of DESIGN.md, the [`Counts`] a report shows, and the [`Facts`] each
//! actor's check returns. Each actor checks its own records; what one
//! actor's records must agree with in another's (a completed payment has
//! its transfer, a failed one left no hold) is checked by [`cross_check`]
//! over the records both expose ([`SagaRecords`], [`MoneyRecords`]).
//!
//! Memory stays bounded whatever the tables hold: an actor's own checks
//! are SQL aggregates and anti-joins that return only violating rows, read
//! through [`Facts::find`] ([`Finding`]) (the first [`LISTED_PER_KIND_MAX`] of each kind
//! are listed, the rest only counted in [`Facts::unlisted`]); the
//! cross-check pages through the sagas in key order, [`PAGE_ROWS`] at a
//! time, and asks the money's owner about each page by key. No check holds
//! a table, nor more than one page of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use falcon_sagas::SagaKind;
use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement};
use serde::Serialize;

/// Violations of one kind (one `code`) a report lists; the rest are
/// counted in [`Facts::unlisted`]. The first ones in key order (bytewise,
/// on both databases) are listed.
pub const LISTED_PER_KIND_MAX: usize = 100;

/// Rows the cross-check reads per page of sagas (each page is one query to
/// the sagas' owner and a few `IN` lists to the money's owner).
pub const PAGE_ROWS: u64 = 4_096;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The invariant's number in DESIGN.md.
    pub invariant: u8,
    /// A stable machine name, e.g. `movement_unbalanced`.
    pub code: &'static str,
    pub detail: String,
}

/// What a report counts (the shape of `falcon verify --json`'s `counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub wallets: u64,
    pub ledger_entries: u64,
    pub payments_by_state: BTreeMap<String, u64>,
    pub refunds_by_state: BTreeMap<String, u64>,
    pub holds_open: u64,
    pub outbox_backlog: BTreeMap<String, u64>,
    /// Messages in FALCON_DLQ, when the caller read the stream.
    pub dlq_depth: Option<u64>,
}

/// How a saga ended, as the actor that runs it records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not terminal yet.
    InFlight,
    /// Completed (a payment) or refunded (a refund).
    Succeeded,
    /// Failed or rejected.
    Failed,
}

/// A saga as the actor that runs it records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    /// The payment id or refund id.
    pub id: String,
    pub outcome: Outcome,
    /// The state as stored, for messages.
    pub state: String,
}

/// What a saga did to money, as the actor that holds the money records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effect {
    /// Funds are still held for it.
    pub held: bool,
    /// Its hold (or refund) was committed.
    pub committed: bool,
    /// A ledger movement exists for it.
    pub moved: bool,
    /// The state the money's owner records, for messages.
    pub state: Option<String>,
}

/// A page of records read by the cross-check.
pub type Read<'a, T> = BoxFuture<'a, Result<T, DbErr>>;

/// The records of the actor that runs the sagas (the payment actor), read
/// a page at a time.
pub trait SagaRecords: Debug + Send + Sync {
    /// Up to `limit` sagas of `kind` whose id comes after `after` (all from
    /// the first with `None`), in the database's key order.
    fn sagas_after(&self, kind: SagaKind, after: Option<String>, limit: u64)
        -> Read<'_, Vec<Saga>>;

    /// Which of `ids` are payments it records.
    fn payments_known(&self, ids: Vec<String>) -> Read<'_, HashSet<String>>;
}

/// The records of the actor that holds the money (the wallet), read by key.
pub trait MoneyRecords: Debug + Send + Sync {
    /// The effects of the sagas of `kind` among `ids` that have one, by id.
    fn effects(&self, kind: SagaKind, ids: Vec<String>) -> Read<'_, HashMap<String, Effect>>;

    /// How many payments have an effect (a hold).
    fn payment_effects_count(&self) -> Read<'_, u64>;

    /// Up to `limit` ids of payments with an effect after `after`, in the
    /// database's key order.
    fn payment_effects_after(&self, after: Option<String>, limit: u64) -> Read<'_, Vec<String>>;
}

/// What one actor's check found and records.
#[derive(Debug, Default)]
pub struct Facts {
    /// The violations listed: at most [`LISTED_PER_KIND_MAX`] of a kind.
    pub violations: Vec<Violation>,
    /// Violations found beyond those listed, by code.
    pub unlisted: BTreeMap<&'static str, u64>,
    pub counts: Counts,
    /// The sagas, when this actor runs them, for the cross-check.
    pub sagas: Option<Arc<dyn SagaRecords>>,
    /// The money, when this actor holds it, for the cross-check.
    pub money: Option<Arc<dyn MoneyRecords>>,
}

impl Facts {
    pub fn violate(&mut self, invariant: u8, code: &'static str, detail: String) {
        self.violations.push(Violation {
            invariant,
            code,
            detail,
        });
    }

    /// Lists the violations of one kind that a query finds: the first
    /// [`LISTED_PER_KIND_MAX`] in bytewise order of its `order_by`
    /// columns, each described by its `detail`, and the rest counted (a
    /// second query counts them only when the listing is full).
    pub async fn find(
        &mut self,
        db: &impl ConnectionTrait,
        finding: &Finding,
    ) -> Result<(), DbErr> {
        let backend = db.get_database_backend();
        let select = &finding.select;
        let order: Vec<String> = finding
            .order_by
            .iter()
            .map(|c| bytewise(backend, c))
            .collect();
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                format!(
                    "{select} ORDER BY {} LIMIT {LISTED_PER_KIND_MAX}",
                    order.join(", ")
                ),
            ))
            .await?;
        let listed = rows.len() as u64;
        let total = if rows.len() < LISTED_PER_KIND_MAX {
            listed
        } else {
            count(
                db,
                &format!("SELECT COUNT(*) AS n FROM ({select}) AS found"),
            )
            .await?
        };
        for row in &rows {
            self.violate(finding.invariant, finding.code, (finding.detail)(row)?);
        }
        self.count_unlisted(finding.code, total.saturating_sub(listed));
        Ok(())
    }

    /// [`Facts::find`] for each of `findings`, all at once (each query on
    /// a connection of the pool's, so that a database's cores share the
    /// scans), listed in the order given.
    pub async fn find_all(
        &mut self,
        db: &impl ConnectionTrait,
        findings: &[Finding],
    ) -> Result<(), DbErr> {
        let found = futures::future::try_join_all(findings.iter().map(|finding| async move {
            let mut facts = Facts::default();
            facts.find(db, finding).await?;
            Ok::<_, DbErr>(facts)
        }))
        .await?;
        for facts in found {
            self.merge(facts);
        }
        Ok(())
    }

    fn count_unlisted(&mut self, code: &'static str, n: u64) {
        if n > 0 {
            *self.unlisted.entry(code).or_default() += n;
        }
    }

    /// Adds another actor's facts to these.
    pub fn merge(&mut self, other: Facts) {
        self.violations.extend(other.violations);
        for (code, n) in other.unlisted {
            self.count_unlisted(code, n);
        }
        let (c, o) = (&mut self.counts, other.counts);
        c.wallets += o.wallets;
        c.ledger_entries += o.ledger_entries;
        c.holds_open += o.holds_open;
        for (k, v) in o.payments_by_state {
            *c.payments_by_state.entry(k).or_default() += v;
        }
        for (k, v) in o.refunds_by_state {
            *c.refunds_by_state.entry(k).or_default() += v;
        }
        c.outbox_backlog.extend(o.outbox_backlog);
        c.dlq_depth = c.dlq_depth.or(o.dlq_depth);
        self.sagas = self.sagas.take().or(other.sagas);
        self.money = self.money.take().or(other.money);
    }
}

/// One query that finds the violations of one kind, for [`Facts::find`].
pub struct Finding {
    /// The invariant's number in DESIGN.md.
    pub invariant: u8,
    /// The violations' code.
    pub code: &'static str,
    /// A whole `SELECT`, without `ORDER BY` or `LIMIT`, that returns one
    /// row per violation.
    pub select: String,
    /// The columns its violations are listed by (bytewise).
    pub order_by: &'static [&'static str],
    /// A violation's detail, from its row.
    pub detail: fn(&QueryResult) -> Result<String, DbErr>,
}

/// `column` ordered bytewise (as Rust orders strings): SQLite compares
/// text bytewise already; PostgreSQL's default collation may not.
pub fn bytewise(backend: DbBackend, column: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("{column} COLLATE \"C\""),
        _ => column.to_owned(),
    }
}

/// An SQL string literal, for the fixed strings of an enum (state names).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Literals for an `IN (…)` list.
pub fn literals<'s>(strings: impl IntoIterator<Item = &'s str>) -> String {
    strings
        .into_iter()
        .map(literal)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The count a `SELECT COUNT(*) AS n …` returns.
pub async fn count(db: &impl ConnectionTrait, select: &str) -> Result<u64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            select.to_owned(),
        ))
        .await?;
    let n = match row {
        Some(row) => row.try_get::<i64>("", "n")?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The violations of one kind the cross-check finds: the
/// [`LISTED_PER_KIND_MAX`] first by id (bytewise, whatever order the pages
/// came in) and how many in all.
struct Kind {
    invariant: u8,
    code: &'static str,
    kept: BTreeMap<String, String>,
    total: u64,
}

impl Kind {
    fn new(invariant: u8, code: &'static str) -> Kind {
        Kind {
            invariant,
            code,
            kept: BTreeMap::new(),
            total: 0,
        }
    }

    fn add(&mut self, id: &str, detail: impl FnOnce() -> String) {
        self.total += 1;
        let full = self.kept.len() >= LISTED_PER_KIND_MAX;
        if full
            && self
                .kept
                .last_key_value()
                .is_some_and(|(k, _)| k.as_str() <= id)
        {
            return;
        }
        self.kept.insert(id.to_owned(), detail());
        if self.kept.len() > LISTED_PER_KIND_MAX {
            self.kept.pop_last();
        }
    }
}

/// Lists the kinds' violations in id order, one id's in the kinds' order,
/// and counts the rest.
fn list(facts: &mut Facts, kinds: Vec<Kind>) {
    let mut listed: Vec<(String, usize, u8, &'static str, String)> = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        facts.count_unlisted(kind.code, kind.total.saturating_sub(kind.kept.len() as u64));
        listed.extend(
            kind.kept
                .into_iter()
                .map(|(id, detail)| (id, i, kind.invariant, kind.code, detail)),
        );
    }
    listed.sort();
    for (_, _, invariant, code, detail) in listed {
        facts.violate(invariant, code, detail);
    }
}

/// Walks every saga of `kind` in key order, a page at a time, with its
/// effect (`None` when the money's owner has none); the next page is read
/// while the money's owner answers for this one. Returns how many of the
/// sagas had an effect.
async fn walk(
    sagas: &dyn SagaRecords,
    money: &dyn MoneyRecords,
    kind: SagaKind,
    mut judge: impl FnMut(&Saga, Option<&Effect>),
) -> Result<u64, DbErr> {
    let mut with_effect = 0;
    let mut page = sagas.sagas_after(kind, None, PAGE_ROWS).await?;
    while let Some(last) = page.last() {
        let after = Some(last.id.clone());
        let ids = page.iter().map(|s| s.id.clone()).collect();
        let (next, effects) = futures::try_join!(
            sagas.sagas_after(kind, after, PAGE_ROWS),
            money.effects(kind, ids)
        )?;
        with_effect += effects.len() as u64;
        for saga in &page {
            judge(saga, effects.get(&saga.id));
        }
        page = next;
    }
    Ok(with_effect)
}

/// Invariants 3 and 4 across actors: each saga's outcome agrees with what
/// happened to its money. Runs only when both sides were checked (the
/// sagas' owner and the money's owner).
pub async fn cross_check(facts: &mut Facts) -> Result<(), DbErr> {
    let (Some(sagas), Some(money)) = (facts.sagas.clone(), facts.money.clone()) else {
        return Ok(());
    };
    let none = Effect::default();
    let mut completed = Kind::new(4, "completed_without_transfer");
    let mut left_open = Kind::new(4, "hold_left_open");
    let mut failed_moved = Kind::new(4, "failed_but_moved");
    let with_hold = walk(&*sagas, &*money, SagaKind::Payment, |saga, effect| {
        let (id, state) = (&saga.id, &saga.state);
        let e = effect.unwrap_or(&none);
        let hold = e.state.as_deref();
        match saga.outcome {
            Outcome::Succeeded if !e.committed || !e.moved => completed.add(id, || {
                format!(
                    "payment {id} completed but hold is {hold:?}, transfer posted: {}",
                    e.moved
                )
            }),
            Outcome::Failed => {
                if e.held {
                    left_open.add(id, || {
                        format!("payment {id} is {state} but its hold is still reserved")
                    });
                }
                if e.committed || e.moved {
                    failed_moved.add(id, || {
                        format!("payment {id} is {state} but money moved (hold {hold:?})")
                    });
                }
            }
            _ => {}
        }
    })
    .await?;
    list(facts, vec![completed, left_open, failed_moved]);

    // Every hold belongs to a payment, unless fewer holds matched a
    // payment than there are: then find those that did not.
    let mut orphans = Kind::new(3, "hold_without_payment");
    if with_hold != money.payment_effects_count().await? {
        let mut after = None;
        loop {
            let page = money.payment_effects_after(after, PAGE_ROWS).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let known = sagas.payments_known(page.clone()).await?;
            for id in page.iter().filter(|id| !known.contains(*id)) {
                orphans.add(id, || format!("hold for unknown payment {id}"));
            }
        }
    }
    list(facts, vec![orphans]);

    let mut unmoved = Kind::new(3, "refunded_without_movement");
    let mut failed_moved = Kind::new(3, "failed_refund_moved");
    walk(&*sagas, &*money, SagaKind::Refund, |saga, effect| {
        let id = &saga.id;
        let e = effect.unwrap_or(&none);
        match saga.outcome {
            Outcome::Succeeded if !e.moved || !e.committed => unmoved.add(id, || {
                format!("refund {id} refunded but wallet shows {:?}", e.state)
            }),
            Outcome::Failed if e.moved => {
                failed_moved.add(id, || format!("refund {id} failed but money moved"))
            }
            _ => {}
        }
    })
    .await?;
    list(facts, vec![unmoved, failed_moved]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind keeps the first ids bytewise, whatever order they come in,
    /// and counts every one.
    #[test]
    fn a_kind_lists_the_first_ids_and_counts_all() {
        let mut kind = Kind::new(3, "x");
        let n = LISTED_PER_KIND_MAX + 50;
        for i in (0..n).rev() {
            kind.add(&format!("p{i:04}"), || format!("d{i}"));
        }
        assert_eq!(kind.total, n as u64);
        assert_eq!(kind.kept.len(), LISTED_PER_KIND_MAX);
        assert_eq!(kind.kept.keys().next().map(String::as_str), Some("p0000"));
        let last = format!("p{:04}", LISTED_PER_KIND_MAX - 1);
        assert_eq!(kind.kept.keys().last(), Some(&last));
        let mut facts = Facts::default();
        list(&mut facts, vec![kind]);
        assert_eq!(facts.violations.len(), LISTED_PER_KIND_MAX);
        assert_eq!(facts.unlisted["x"], 50);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literals(["a", "o'k"]), "'a', 'o''k'");
    }
}
