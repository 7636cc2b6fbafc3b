//! Pruning the inbox and the outbox (docs/DESIGN.md, "Data that lasts").
//!
//! Every processed message leaves an inbox row and every event an outbox
//! row: about twenty rows a saga, which no table can keep for years. The
//! inbox catches a copy of a message arriving soon after the first (a
//! redelivery after a crash between commit and ack, a client's retry past
//! the broker's duplicate window); past [`RetentionSettings::inbox_keep_s`]
//! its rows are deleted, and a copy arriving later still has no second
//! effect, because every effect is keyed by its business key (a wallet, a
//! deposit's reference, a payment, a refund, a saga's state). A published
//! outbox row is of no use to anyone once the broker holds the event; past
//! [`RetentionSettings::outbox_keep_s`] it is deleted. Rows set aside (never
//! publishable) and rows not yet published are never pruned.
//!
//! Deletes are bounded ([`RetentionSettings::batch_max`] rows a statement,
//! each in a write transaction of its own, so that the consumers' batches
//! interleave), and on PostgreSQL the rows are claimed `FOR UPDATE SKIP
//! LOCKED`, so that the pruners of several processes never wait on each
//! other.

use std::time::Duration;

use chrono::{DateTime, Utc};
use falcon_sagas::Actor as SagaActor;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sea_orm::sea_query::{Expr, LockBehavior, LockType, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr};

use crate::settings::RetentionSettings;
use crate::store::{begin_write, inbox, outbox};
use crate::telemetry::names;

/// Rows deleted in one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub outbox: u64,
}

/// Deletes up to `batch_max` inbox rows processed before `before`, in one
/// write transaction; returns how many.
pub async fn prune_inbox(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
    batch_max: u64,
) -> Result<u64, DbErr> {
    let mut old = Query::select();
    old.columns([inbox::Column::Consumer, inbox::Column::MsgId])
        .from(inbox::Entity)
        .and_where(inbox::Column::ProcessedAt.lt(before))
        .limit(batch_max);
    delete_claimed(
        db,
        old,
        Query::delete().from_table(inbox::Entity).to_owned(),
        Expr::tuple([
            Expr::col(inbox::Column::Consumer),
            Expr::col(inbox::Column::MsgId),
        ]),
    )
    .await
}

/// Deletes up to `batch_max` outbox rows published before `before` (never
/// one unpublished or set aside), in one write transaction; returns how
/// many.
pub async fn prune_outbox(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
    batch_max: u64,
) -> Result<u64, DbErr> {
    let mut old = Query::select();
    old.column(outbox::Column::Id)
        .from(outbox::Entity)
        .and_where(outbox::Column::PublishedAt.lt(before))
        .and_where(outbox::Column::SetAside.is_null())
        .limit(batch_max);
    delete_claimed(
        db,
        old,
        Query::delete().from_table(outbox::Entity).to_owned(),
        Expr::col(outbox::Column::Id),
    )
    .await
}

/// `DELETE … WHERE key IN (old)`, with `old` claimed `FOR UPDATE SKIP
/// LOCKED` on PostgreSQL, in a write transaction of its own.
async fn delete_claimed(
    db: &DatabaseConnection,
    mut old: sea_orm::sea_query::SelectStatement,
    mut delete: sea_orm::sea_query::DeleteStatement,
    key: impl Into<Expr>,
) -> Result<u64, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        old.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    delete.and_where(sea_orm::sea_query::ExprTrait::in_subquery(key.into(), old));
    let txn = begin_write(db).await?;
    let done = txn.execute(&delete).await?;
    txn.commit().await?;
    Ok(done.rows_affected())
}

/// One round at `now`: the inbox and the outbox past their retention,
/// `batch_max` rows a statement (each in its own transaction, so writers
/// interleave), statement after statement until fewer than `batch_max` are
/// left or the round has run for half of `interval_s`. So a round keeps up
/// with any rate the database can delete at, where a fixed number of
/// statements a round would cap it (20 x 5,000 a minute is 1,667 rows/s,
/// under the payment inbox's nine rows a saga at 200 sagas/s). A retention
/// of zero keeps that table's rows for ever.
pub async fn prune(
    db: &DatabaseConnection,
    r: &RetentionSettings,
    now: DateTime<Utc>,
) -> Result<Pruned, DbErr> {
    let mut pruned = Pruned::default();
    let batch_max = r.batch_max.max(1);
    let started = std::time::Instant::now();
    let budget = Duration::from_secs(r.interval_s.max(1)) / 2;
    let more = |n: u64| n >= batch_max && started.elapsed() < budget;
    let horizon = |keep_s: u64| {
        chrono::Duration::try_seconds(i64::try_from(keep_s).ok()?)
            .and_then(|d| now.checked_sub_signed(d))
    };
    if let Some(before) = horizon(r.inbox_keep_s).filter(|_| r.inbox_keep_s > 0) {
        loop {
            let n = prune_inbox(db, before, batch_max).await?;
            pruned.inbox += n;
            if !more(n) {
                break;
            }
        }
    }
    if let Some(before) = horizon(r.outbox_keep_s).filter(|_| r.outbox_keep_s > 0) {
        loop {
            let n = prune_outbox(db, before, batch_max).await?;
            pruned.outbox += n;
            if !more(n) {
                break;
            }
        }
    }
    Ok(pruned)
}

/// Whether the database's server runs autovacuum (always "yes" off
/// PostgreSQL, which has nothing to vacuum).
pub async fn autovacuum_on(db: &DatabaseConnection) -> Result<bool, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(true);
    }
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('autovacuum') AS on",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("no answer to current_setting('autovacuum')".into()))?;
    Ok(row.try_get::<String>("", "on")? != "off")
}

/// Vacuums a PostgreSQL database whose server runs no autovacuum (the
/// pruner calls it every round); returns whether it did. FalconPay's tables
/// churn by design (an outbox row is inserted, updated once when
/// published, deleted an hour later; a payment's row is updated at every
/// step), and without vacuum their dead rows pile up in the indexes: on a
/// server with autovacuum off, the relay's claim of unpublished rows went
/// from milliseconds to 403 ms in eleven minutes, scanning 247,010 dead
/// index entries to find 82 live rows (docs/BENCHMARKS.md). `falcon
/// doctor` says so; this keeps such a server working until it is fixed.
/// `SKIP_LOCKED`: a table another process is vacuuming is skipped, not
/// waited for.
pub async fn vacuum_unattended(db: &DatabaseConnection) -> Result<bool, DbErr> {
    if autovacuum_on(db).await? {
        return Ok(false);
    }
    db.execute_unprepared("VACUUM (SKIP_LOCKED, ANALYZE)")
        .await?;
    Ok(true)
}

/// The pruner of one actor's database: a round every
/// [`RetentionSettings::interval_s`].
pub struct Pruner;

pub struct PrunerArgs {
    pub actor: SagaActor,
    pub db: DatabaseConnection,
    pub retention: RetentionSettings,
}

pub enum PrunerMsg {
    Round,
}

/// A pruner's state: its arguments, and whether it has said that the
/// server runs no autovacuum (once a process, not every round).
pub struct PrunerState {
    args: PrunerArgs,
    warned: bool,
}

impl Actor for Pruner {
    type Msg = PrunerMsg;
    type State = PrunerState;
    type Arguments = PrunerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PrunerMsg>,
        args: PrunerArgs,
    ) -> Result<PrunerState, ActorProcessingErr> {
        let every = Duration::from_secs(args.retention.interval_s.max(1));
        // The first round an interval after start: nothing is pruned while
        // the other processes starting with this one still migrate, and a
        // process that restarts in a loop does no pruning work at all.
        myself.send_interval(every, || PrunerMsg::Round);
        Ok(PrunerState {
            args,
            warned: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PrunerMsg>,
        _msg: PrunerMsg,
        state: &mut PrunerState,
    ) -> Result<(), ActorProcessingErr> {
        let s = &state.args;
        let actor = s.actor.as_str();
        match prune(&s.db, &s.retention, Utc::now()).await {
            Ok(p) => {
                for (table, n) in [("inbox", p.inbox), ("outbox", p.outbox)] {
                    if n > 0 {
                        metrics::counter!(names::ROWS_PRUNED, "actor" => actor, "table" => table)
                            .increment(n);
                    }
                }
                if p != Pruned::default() {
                    tracing::debug!(actor, inbox = p.inbox, outbox = p.outbox, "pruned");
                }
            }
            Err(e) => {
                tracing::warn!(actor, error = %e, "pruning the inbox and outbox failed; the next round retries")
            }
        }
        // Every round, not only after deletes: an outbox row is dead once
        // published (updated), long before it is pruned.
        match vacuum_unattended(&s.db).await {
            Ok(true) if !state.warned => {
                state.warned = true;
                tracing::warn!(
                    actor,
                    "autovacuum is off on this database's server: the pruner vacuums it every round until it is on (`falcon doctor`)"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(actor, error = %e, "vacuuming the database failed; the next round retries")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{EntityTrait, PaginatorTrait, QueryFilter, Set};

    async fn db() -> DatabaseConnection {
        let db = crate::store::memory_db(inbox::Entity).await;
        let schema = sea_orm::Schema::new(db.get_database_backend());
        db.execute(&schema.create_table_from_entity(outbox::Entity))
            .await
            .expect("the outbox");
        db
    }

    async fn inbox_row(db: &DatabaseConnection, id: &str, at: DateTime<Utc>) {
        inbox::Entity::insert(inbox::ActiveModel {
            consumer: Set("wallet-evt".into()),
            msg_id: Set(id.into()),
            stream: Set("FALCON_EVT".into()),
            stream_seq: Set(1),
            subject: Set("falcon.evt.x".into()),
            processed_at: Set(at),
        })
        .exec(db)
        .await
        .expect("an inbox row");
    }

    async fn outbox_row(
        db: &DatabaseConnection,
        id: &str,
        published: Option<DateTime<Utc>>,
        set_aside: Option<&str>,
    ) {
        outbox::Entity::insert(outbox::ActiveModel {
            event_id: Set(id.into()),
            subject: Set("falcon.evt.x".into()),
            payload: Set("{}".into()),
            traceparent: Set(None),
            created_at: Set(Utc::now() - chrono::Duration::days(3)),
            published_at: Set(published),
            set_aside: Set(set_aside.map(str::to_owned)),
            ..Default::default()
        })
        .exec(db)
        .await
        .expect("an outbox row");
    }

    /// Rows past their retention go, in bounded statements; recent rows,
    /// unpublished rows and rows set aside stay; a retention of zero keeps
    /// everything.
    #[tokio::test]
    async fn prunes_only_what_is_past_its_retention() {
        let db = db().await;
        let now = Utc::now();
        let old = now - chrono::Duration::days(2);
        for i in 0..7 {
            inbox_row(&db, &format!("old-{i}"), old).await;
        }
        inbox_row(&db, "recent", now - chrono::Duration::minutes(5)).await;
        outbox_row(&db, "published-long-ago", Some(old), None).await;
        outbox_row(&db, "published-just-now", Some(now), None).await;
        outbox_row(&db, "unpublished", None, None).await;
        outbox_row(&db, "set-aside", None, Some("too large")).await;
        outbox_row(&db, "set-aside-published?", Some(old), Some("odd")).await;

        let keep_all = RetentionSettings {
            inbox_keep_s: 0,
            outbox_keep_s: 0,
            ..RetentionSettings::default()
        };
        assert_eq!(
            prune(&db, &keep_all, now).await.expect("a round"),
            Pruned::default()
        );

        let r = RetentionSettings {
            inbox_keep_s: 86_400,
            outbox_keep_s: 3_600,
            batch_max: 3,
            ..RetentionSettings::default()
        };
        let pruned = prune(&db, &r, now).await.expect("a round");
        assert_eq!(
            pruned,
            Pruned {
                inbox: 7,
                outbox: 1
            }
        );
        let left: Vec<String> = inbox::Entity::find()
            .all(&db)
            .await
            .expect("read")
            .into_iter()
            .map(|r| r.msg_id)
            .collect();
        assert_eq!(left, ["recent"]);
        let mut kept: Vec<String> = outbox::Entity::find()
            .all(&db)
            .await
            .expect("read")
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "published-just-now",
                "set-aside",
                "set-aside-published?",
                "unpublished"
            ]
        );
        assert_eq!(prune(&db, &r, now).await.expect("again"), Pruned::default());
        let recent = inbox::Entity::find()
            .filter(inbox::Column::MsgId.eq("recent"))
            .count(&db)
            .await
            .expect("count");
        assert_eq!(recent, 1);
    }

    /// On a server with autovacuum off (this is read, not set: a test may
    /// not change the server's configuration), a vacuum runs after a prune;
    /// with it on, none does. SQLite: never.
    #[tokio::test]
    async fn a_database_without_autovacuum_is_vacuumed_after_a_prune() {
        for backend in crate::testing::backends() {
            let fresh = crate::testing::Fresh::empty(&backend, "prune").await;
            let db = &fresh.db;
            let schema = sea_orm::Schema::new(db.get_database_backend());
            db.execute(&schema.create_table_from_entity(inbox::Entity))
                .await
                .expect("the inbox");
            let old = Utc::now() - chrono::Duration::days(2);
            for i in 0..20 {
                inbox_row(db, &format!("old-{i}"), old).await;
            }
            let on = autovacuum_on(db).await.expect("the setting");
            prune_inbox(db, Utc::now(), 100).await.expect("a prune");
            let vacuumed = vacuum_unattended(db).await.expect("a vacuum");
            assert_eq!(vacuumed, !on, "{}", fresh.backend);
            if fresh.backend == "sqlite" {
                assert!(on && !vacuumed);
                continue;
            }
            // A vacuum reports itself to the server's statistics at once
            // (pgstat_report_vacuum writes the shared entry); read it with
            // a deadline all the same.
            let count = || async {
                db.query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT vacuum_count AS n FROM pg_stat_user_tables WHERE relname = 'inbox'",
                ))
                .await
                .expect("the statistics")
                .and_then(|r| r.try_get::<i64>("", "n").ok())
                .unwrap_or(0)
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut n = count().await;
            while vacuumed && n == 0 && std::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
                n = count().await;
            }
            assert_eq!(n > 0, vacuumed, "vacuum_count {n}, autovacuum on: {on}");
        }
    }

    /// A backlog larger than any fixed number of statements goes in one
    /// round: the pruner keeps up with the rate, not with a quota.
    #[tokio::test]
    async fn a_round_deletes_its_whole_backlog() {
        let db = db().await;
        let now = Utc::now();
        let old = now - chrono::Duration::days(2);
        for i in 0..45 {
            inbox_row(&db, &format!("old-{i}"), old).await;
            outbox_row(&db, &format!("out-{i}"), Some(old), None).await;
        }
        let r = RetentionSettings {
            inbox_keep_s: 86_400,
            outbox_keep_s: 3_600,
            batch_max: 2,
            ..RetentionSettings::default()
        };
        assert_eq!(
            prune(&db, &r, now).await.expect("a round"),
            Pruned {
                inbox: 45,
                outbox: 45
            }
        );
    }
}
