//! One reconciliation round ([`reconcile`]):
//!
//! 1. the lease: one process reconciles at a time (a row of `recon_state`
//!    held until a deadline, taken over once it passed);
//! 2. the provider's list, from the checkpoint on, a page at a time, each
//!    page's records written into the facts and the checkpoint advanced in
//!    one transaction;
//! 3. the comparison: the marked rows whose facts have been quiet for
//!    `recon.settle_s`, oldest first, `recon.check_max` at a time until
//!    none is left or the round has run for `recon.interval_s`. The
//!    provider is compared only when its list was read to the end in this
//!    round; a standing charge for a failed payment is voided at the
//!    provider first (`recon.void_unexpected`); then, in one transaction,
//!    every new mismatch is recorded and published, the ones no longer
//!    found are resolved, and the rows are unmarked unless a fact changed
//!    meanwhile;
//! 4. the run's row, and the gauges.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use falcon_kernel::store::{begin_write, Outbox};
use falcon_schemas::event::{MismatchData, MismatchKind};
use falcon_schemas::EventData;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::Condition;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use crate::entity::{fact, mismatch, run, state};
use crate::provider::{self, Client};
use crate::rules::{self, CHARGED, FAILED};
use crate::settings::ReconSettings;

/// Runs kept in `recon_runs`.
pub const RUNS_KEPT: i64 = 1000;
/// The provider checkpoint's row in `recon_state`.
const CHECKPOINT: &str = "provider";
/// The lease's row.
const LEASE: &str = "lease";
/// The rows one statement names at most.
const CHUNK: usize = 500;

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub provider_read: i64,
    /// `synced`, `behind`, `failed` or `none`.
    pub provider: &'static str,
    pub checked: i64,
    pub opened: i64,
    pub resolved: i64,
    pub open: i64,
    /// Payments still marked after the round (changed, waiting to settle
    /// or to be compared).
    pub pending: u64,
    pub error: Option<String>,
}

/// One round at `now`, as `holder`; `None` when another process holds the
/// lease. `provider` is `None` when there is none to reconcile.
pub async fn reconcile(
    db: &DatabaseConnection,
    provider: Option<&Client>,
    s: &ReconSettings,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<Option<Outcome>, DbErr> {
    let lease = Duration::from_secs(s.interval_s.saturating_mul(3).max(30));
    if !take_lease(db, holder, now, lease).await? {
        return Ok(None);
    }
    let mut outcome = Outcome {
        provider: "none",
        ..Outcome::default()
    };
    if let Some(client) = provider {
        match read_provider(db, client, s, now).await {
            Ok((read, synced)) => {
                outcome.provider_read = read;
                outcome.provider = if synced { "synced" } else { "behind" };
            }
            Err((read, e)) => {
                outcome.provider_read = read;
                outcome.provider = "failed";
                tracing::warn!(error = %e, "reconciliation: the provider's list could not be read; the provider is compared next run");
                outcome.error = Some(e);
            }
        }
    }
    // The provider is compared only once its list was read to the end; a
    // row whose provider facts may be behind waits, marked.
    // Chunks of `check_max` until none is left or the round has used its
    // budget, so that the comparison keeps up with any rate of payments
    // (a chunk a round would cap it at check_max / interval_s).
    if outcome.provider == "synced" || outcome.provider == "none" {
        let started = std::time::Instant::now();
        let budget = Duration::from_secs(s.interval_s.max(1));
        loop {
            let checked = compare(
                db,
                provider,
                s,
                now,
                outcome.provider == "synced",
                &mut outcome,
            )
            .await?;
            if checked < s.check_max || started.elapsed() >= budget {
                break;
            }
        }
    }
    outcome.open = mismatch::Entity::find()
        .filter(mismatch::Column::ResolvedAt.is_null())
        .count(db)
        .await?
        .try_into()
        .unwrap_or(i64::MAX);
    outcome.pending = pending(db).await?;
    record_run(db, &outcome, now).await?;
    Ok(Some(outcome))
}

/// Takes (or renews) the lease for `holder` until `now + lease`.
async fn take_lease(
    db: &DatabaseConnection,
    holder: &str,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<bool, DbErr> {
    ensure_state(db, LEASE).await?;
    let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::hours(1));
    let taken = state::Entity::update_many()
        .col_expr(state::Column::Holder, Expr::value(holder))
        .col_expr(state::Column::Until, Expr::value(until))
        .filter(state::Column::Name.eq(LEASE))
        .filter(
            Condition::any()
                .add(state::Column::Until.is_null())
                .add(state::Column::Until.lt(now))
                .add(state::Column::Holder.eq(holder)),
        )
        .exec(db)
        .await?;
    Ok(taken.rows_affected == 1)
}

async fn ensure_state(db: &impl sea_orm::ConnectionTrait, name: &str) -> Result<(), DbErr> {
    state::Entity::insert(state::ActiveModel {
        name: Set(name.to_owned()),
        position: Set(0),
        holder: Set(None),
        until: Set(None),
    })
    .on_conflict_do_nothing_on([state::Column::Name])
    .exec(db)
    .await?;
    Ok(())
}

/// Payments whose facts changed since they were last compared.
pub async fn pending(db: &DatabaseConnection) -> Result<u64, DbErr> {
    fact::Entity::find()
        .filter(fact::Column::Dirty.eq(true))
        .count(db)
        .await
}

/// The provider checkpoint: the last rev read.
pub async fn checkpoint(db: &DatabaseConnection) -> Result<i64, DbErr> {
    Ok(state::Entity::find_by_id(CHECKPOINT.to_owned())
        .one(db)
        .await?
        .map_or(0, |s| s.position))
}

/// Reads the provider's list on from the checkpoint: how many records,
/// and whether it reached the end.
async fn read_provider(
    db: &DatabaseConnection,
    client: &Client,
    s: &ReconSettings,
    now: DateTime<Utc>,
) -> Result<(i64, bool), (i64, String)> {
    let mut read = 0;
    let db_err = |read, e: DbErr| (read, format!("the reconciliation database: {e}"));
    ensure_state(db, CHECKPOINT)
        .await
        .map_err(|e| db_err(read, e))?;
    for _ in 0..s.pages_per_run_max {
        let after = checkpoint(db).await.map_err(|e| db_err(read, e))?;
        let page = client
            .page(after, s.page_max)
            .await
            .map_err(|e: provider::Error| (read, e.to_string()))?;
        let n = page.records.len();
        let Some(next) = page.next else {
            return Ok((read, true));
        };
        write_page(db, &page.records, after, next, now)
            .await
            .map_err(|e| db_err(read, e))?;
        read += i64::try_from(n).unwrap_or(i64::MAX);
        if n < s.page_max as usize {
            return Ok((read, true));
        }
    }
    Ok((read, false))
}

/// The facts key of a provider record: its key when it is a payment id,
/// otherwise `provider-<seq>`.
pub fn provider_key(r: &provider::Record) -> String {
    if falcon_schemas::ids::is_valid_id(&r.key) {
        r.key.clone()
    } else {
        format!("provider-{}", r.seq)
    }
}

/// One page into the facts, and the checkpoint from `after` to `next`, in
/// one transaction (a checkpoint moved by another process meanwhile rolls
/// it back).
async fn write_page(
    db: &DatabaseConnection,
    records: &[provider::Record],
    after: i64,
    next: i64,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let txn = begin_write(db).await?;
    for r in records {
        let key = provider_key(r);
        crate::handler::ensure_row(&*txn, &key, now).await?;
        fact::Entity::update_many()
            .col_expr(fact::Column::ProviderSeq, Expr::value(r.seq))
            .col_expr(fact::Column::ProviderStatus, Expr::value(r.status))
            .col_expr(fact::Column::ProviderMinor, Expr::value(r.amount_minor))
            .col_expr(
                fact::Column::ProviderCurrency,
                Expr::value(r.currency.as_str()),
            )
            .col_expr(fact::Column::ChangedAt, Expr::value(now))
            .col_expr(fact::Column::Dirty, Expr::value(true))
            .filter(fact::Column::Key.eq(key))
            .exec(&*txn)
            .await?;
    }
    let moved = state::Entity::update_many()
        .col_expr(state::Column::Position, Expr::value(next))
        .filter(state::Column::Name.eq(CHECKPOINT))
        .filter(state::Column::Position.eq(after))
        .exec(&*txn)
        .await?;
    if moved.rows_affected != 1 {
        txn.rollback().await?;
        return Err(DbErr::Custom(format!(
            "the provider checkpoint moved from {after} meanwhile"
        )));
    }
    txn.commit().await
}

/// Compares at most `check_max` of the marked rows quiet since
/// `now - settle_s`, oldest first; how many it compared.
async fn compare(
    db: &DatabaseConnection,
    client: Option<&Client>,
    s: &ReconSettings,
    now: DateTime<Utc>,
    with_provider: bool,
    outcome: &mut Outcome,
) -> Result<u64, DbErr> {
    let quiet_since = now
        - chrono::Duration::from_std(Duration::from_secs(s.settle_s))
            .unwrap_or(chrono::Duration::zero());
    let rows = fact::Entity::find()
        .filter(fact::Column::Dirty.eq(true))
        .filter(fact::Column::ChangedAt.lte(quiet_since))
        .order_by_asc(fact::Column::ChangedAt)
        .order_by_asc(fact::Column::Key)
        .limit(s.check_max)
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let checked = rows.len() as u64;
    outcome.checked = outcome
        .checked
        .saturating_add(i64::try_from(rows.len()).unwrap_or(i64::MAX));
    let mut found: Vec<(fact::Model, Vec<MismatchData>)> = rows
        .into_iter()
        .map(|row| {
            let m = rules::mismatches(&row, with_provider);
            (row, m)
        })
        .collect();
    // Voids first, outside any transaction: a standing charge for a
    // payment that failed is money taken for nothing.
    if s.void_unexpected {
        if let Some(client) = client {
            for (row, ms) in &mut found {
                for m in ms.iter_mut().filter(|m| {
                    m.kind == MismatchKind::ProviderUnexpected
                        && row.payment_state.as_deref() == Some(FAILED)
                        && row.provider_status.as_deref() == Some(CHARGED)
                }) {
                    match client.void(&row.key).await {
                        Ok(()) => {
                            tracing::error!(payment_id = %row.key, amount_minor = ?row.provider_minor, "reconciliation: a standing charge for a failed payment; voided at the provider");
                            m.action = Some("voided".to_owned());
                            m.message.push_str("; voided at the provider");
                        }
                        Err(e) => {
                            tracing::error!(payment_id = %row.key, error = %e, "reconciliation: a standing charge for a failed payment could not be voided");
                            m.message.push_str(&format!("; the void failed: {e}"));
                        }
                    }
                }
            }
        }
    }
    let txn = begin_write(db).await?;
    // The kinds open for each key compared.
    let mut open: HashMap<String, HashSet<String>> = HashMap::new();
    let keys: Vec<String> = found.iter().map(|(r, _)| r.key.clone()).collect();
    for chunk in keys.chunks(CHUNK) {
        for m in mismatch::Entity::find()
            .filter(mismatch::Column::Key.is_in(chunk.iter().cloned()))
            .filter(mismatch::Column::ResolvedAt.is_null())
            .all(&*txn)
            .await?
        {
            open.entry(m.key).or_default().insert(m.kind);
        }
    }
    let mut out = Outbox::standalone(crate::SOURCE, "recon".to_owned(), now);
    let mut opened_by_kind: BTreeMap<MismatchKind, u64> = BTreeMap::new();
    for (row, ms) in &found {
        let mut still: HashSet<&'static str> = HashSet::new();
        for m in ms {
            let kind = m.kind.as_str();
            still.insert(kind);
            let data = serde_json::to_string(m).map_err(|e| DbErr::Custom(e.to_string()))?;
            if open.get(&row.key).is_some_and(|kinds| kinds.contains(kind)) {
                mismatch::Entity::update_many()
                    .col_expr(mismatch::Column::LastSeenAt, Expr::value(now))
                    .col_expr(
                        mismatch::Column::DifferenceMinor,
                        Expr::value(m.difference_minor),
                    )
                    .col_expr(mismatch::Column::Data, Expr::value(data))
                    .filter(mismatch::Column::Key.eq(row.key.as_str()))
                    .filter(mismatch::Column::Kind.eq(kind))
                    .exec(&*txn)
                    .await?;
                continue;
            }
            // New, or found again after it was resolved: opened (again).
            let resolved_now = m.action.as_deref() == Some("voided");
            mismatch::Entity::insert(mismatch::ActiveModel {
                key: Set(row.key.clone()),
                kind: Set(kind.to_owned()),
                difference_minor: Set(m.difference_minor),
                data: Set(data),
                opened_at: Set(now),
                last_seen_at: Set(now),
                resolved_at: Set(resolved_now.then_some(now)),
                action: Set(m.action.clone()),
            })
            .on_conflict(
                OnConflict::columns([mismatch::Column::Key, mismatch::Column::Kind])
                    .update_columns([
                        mismatch::Column::DifferenceMinor,
                        mismatch::Column::Data,
                        mismatch::Column::OpenedAt,
                        mismatch::Column::LastSeenAt,
                        mismatch::Column::ResolvedAt,
                        mismatch::Column::Action,
                    ])
                    .to_owned(),
            )
            .exec(&*txn)
            .await?;
            tracing::error!(key = %row.key, kind, difference_minor = m.difference_minor, message = %m.message, "reconciliation mismatch");
            *opened_by_kind.entry(m.kind).or_default() += 1;
            outcome.opened += 1;
            out.causation_id = format!("recon:{}", row.key);
            out.push(EventData::ReconMismatch(m.clone()));
        }
        for kind in open.get(&row.key).into_iter().flatten() {
            if !still.contains(kind.as_str()) {
                let key = &row.key;
                mismatch::Entity::update_many()
                    .col_expr(mismatch::Column::ResolvedAt, Expr::value(now))
                    .filter(mismatch::Column::Key.eq(key.as_str()))
                    .filter(mismatch::Column::Kind.eq(kind.as_str()))
                    .exec(&*txn)
                    .await?;
                tracing::info!(key = %key, kind = %kind, "reconciliation mismatch resolved");
                outcome.resolved += 1;
            }
        }
        // Unmarked unless a fact changed since it was read.
        fact::Entity::update_many()
            .col_expr(fact::Column::Dirty, Expr::value(false))
            .filter(fact::Column::Key.eq(row.key.as_str()))
            .filter(fact::Column::ChangedAt.eq(row.changed_at))
            .exec(&*txn)
            .await?;
    }
    out.write(&*txn).await?;
    txn.commit().await?;
    for (kind, n) in opened_by_kind {
        metrics::counter!(falcon_kernel::telemetry::names::RECON_MISMATCHES, "kind" => kind.as_str())
            .increment(n);
    }
    Ok(checked)
}

/// When the last run on record finished.
pub async fn last_finished(db: &DatabaseConnection) -> Result<Option<DateTime<Utc>>, DbErr> {
    Ok(run::Entity::find()
        .order_by_desc(run::Column::Id)
        .one(db)
        .await?
        .map(|r| r.finished_at))
}

async fn record_run(
    db: &DatabaseConnection,
    o: &Outcome,
    started_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let finished_at = Utc::now();
    let inserted = run::Entity::insert(run::ActiveModel {
        started_at: Set(started_at),
        finished_at: Set(finished_at),
        provider_read: Set(o.provider_read),
        provider: Set(o.provider.to_owned()),
        checked: Set(o.checked),
        opened: Set(o.opened),
        resolved: Set(o.resolved),
        open: Set(o.open),
        error: Set(o.error.clone()),
        ..Default::default()
    })
    .exec(db)
    .await?;
    run::Entity::delete_many()
        .filter(run::Column::Id.lte(inserted.last_insert_id - RUNS_KEPT))
        .exec(db)
        .await?;
    let names = falcon_kernel::telemetry::names::RECON_RUNS;
    let result = if o.error.is_some() { "error" } else { "ok" };
    metrics::counter!(names, "outcome" => result).increment(1);
    metrics::gauge!(falcon_kernel::telemetry::names::RECON_OPEN).set(o.open as f64);
    metrics::gauge!(falcon_kernel::telemetry::names::RECON_PENDING).set(o.pending as f64);
    metrics::gauge!(falcon_kernel::telemetry::names::RECON_LAST_RUN)
        .set(finished_at.timestamp() as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::Migrator;
    use falcon_kernel::testing::{backends, Fresh};

    /// A round compares chunk after chunk until nothing quiet is left:
    /// `check_max` bounds a transaction, not the rate it keeps up with.
    #[tokio::test]
    async fn a_round_compares_every_quiet_row_a_chunk_at_a_time() {
        for backend in backends() {
            let fresh = Fresh::migrated::<Migrator>(&backend, "recon").await;
            let db = &fresh.db;
            let t0 = Utc::now();
            for i in 0..25 {
                let key = format!("pay-{i:04}");
                crate::handler::ensure_row(db, &key, t0)
                    .await
                    .expect("a row");
                fact::Entity::update_many()
                    .col_expr(fact::Column::Currency, Expr::value("USD"))
                    .col_expr(fact::Column::PaymentState, Expr::value(rules::COMPLETED))
                    .col_expr(fact::Column::PaymentMinor, Expr::value(100))
                    .col_expr(fact::Column::WalletMinor, Expr::value(100))
                    .filter(fact::Column::Key.eq(key))
                    .exec(db)
                    .await
                    .expect("facts that agree");
            }
            let s = ReconSettings {
                check_max: 10,
                ..ReconSettings::default()
            };
            let now = t0 + chrono::Duration::seconds(s.settle_s as i64 + 1);
            let outcome = reconcile(db, None, &s, "node-a", now)
                .await
                .expect("a round")
                .expect("the lease");
            assert_eq!(outcome.checked, 25, "{}: {outcome:?}", fresh.backend);
            assert_eq!((outcome.opened, outcome.open, outcome.pending), (0, 0, 0));
            let marked = fact::Entity::find()
                .filter(fact::Column::Dirty.eq(true))
                .count(db)
                .await
                .expect("a count");
            assert_eq!(marked, 0, "{}: every row compared", fresh.backend);
            // Nothing changed: the next round compares nothing.
            let again = reconcile(db, None, &s, "node-a", now)
                .await
                .expect("a round")
                .expect("the lease");
            assert_eq!(again.checked, 0, "{}", fresh.backend);
        }
    }
}
