//! The outbox relay: a ractor actor per business actor that publishes the
//! outbox in order, many events with their acks in flight at once, and
//! marks them published in bulk.
//!
//! It runs when poked after a batch commits and on a timer (to publish what
//! a crashed process left behind). Publishing twice is harmless: the event
//! id is the `Nats-Msg-Id` (JetStream drops the copy inside its duplicate
//! window) and the consumer's inbox drops it after. On failure the
//! supervisor restarts it; unpublished rows stay in the table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use falcon_nats::publish::publish_all;
use falcon_nats::OutMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use crate::signing::KeyRing;
use crate::store::{outbox, write_gate};
use crate::telemetry::names;

pub struct Relay;

/// Wakes a relay without flooding its mailbox: at most one poke is queued.
#[derive(Clone)]
pub struct Poke {
    name: String,
    pending: Arc<AtomicBool>,
}

impl Poke {
    pub fn new(name: String) -> Poke {
        Poke {
            name,
            pending: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the relay to run now (it may be restarting: then its timer will).
    pub fn poke(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(cell) = ractor::registry::where_is(self.name.clone()) {
                let relay: ActorRef<RelayMsg> = cell.into();
                if relay.cast(RelayMsg::Flush).is_err() {
                    self.pending.store(false, Ordering::Release);
                }
            } else {
                self.pending.store(false, Ordering::Release);
            }
        }
    }
}

pub struct RelayArgs {
    pub actor: falcon_sagas::Actor,
    /// Signs every event with `actor`'s key as it is published.
    pub ring: Arc<KeyRing>,
    pub db: DatabaseConnection,
    pub js: jetstream::Context,
    pub batch_max: u64,
    pub interval: Duration,
    pub poke: Poke,
}

pub enum RelayMsg {
    Flush,
}

impl Actor for Relay {
    type Msg = RelayMsg;
    type State = RelayArgs;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RelayMsg>,
        args: RelayArgs,
    ) -> Result<RelayArgs, ActorProcessingErr> {
        myself.send_interval(args.interval, || RelayMsg::Flush);
        myself.cast(RelayMsg::Flush)?;
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RelayMsg>,
        _msg: RelayMsg,
        state: &mut RelayArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.poke.pending.store(false, Ordering::Release);
        drain(state).await?;
        Ok(())
    }
}

/// Publishes unpublished rows, oldest first, until none are left or a
/// publish fails (the next run retries).
///
/// On PostgreSQL several processes run a relay over one outbox: each claims
/// the rows it publishes (`FOR UPDATE SKIP LOCKED`, in a transaction that
/// ends with their mark), so two relays never publish the same rows at
/// once and neither waits for the other. A claim ends with its transaction:
/// rows a crashed relay had claimed are claimed again by the next. SQLite
/// has one writer per file, and its relay reads and marks without a claim.
pub async fn drain(s: &RelayArgs) -> Result<usize, sea_orm::DbErr> {
    let mut total = 0;
    loop {
        let (published, more) = if s.db.get_database_backend() == DbBackend::Postgres {
            let txn = s.db.begin().await?;
            let done = drain_batch(s, &txn, true).await?;
            txn.commit().await?;
            done
        } else {
            drain_batch(s, &s.db, false).await?
        };
        total += published;
        if !more {
            return Ok(total);
        }
    }
}

/// One batch of [`drain`] on `conn`: the rows it published, and whether
/// another batch may be waiting.
async fn drain_batch(
    s: &RelayArgs,
    conn: &impl ConnectionTrait,
    claim: bool,
) -> Result<(usize, bool), sea_orm::DbErr> {
    let mut query = outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .filter(outbox::Column::SetAside.is_null())
        .order_by_asc(outbox::Column::Id)
        .limit(s.batch_max);
    if claim {
        query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let rows = query.all(conn).await?;
    if rows.is_empty() {
        return Ok((0, false));
    }
    // Rows that can never be published are set aside, so the rest
    // flows: unsignable ones here, too large ones once the server says.
    let mut aside = Vec::new();
    let mut sendable = Vec::with_capacity(rows.len());
    let mut msgs = Vec::with_capacity(rows.len());
    for r in &rows {
        match s.ring.sign(s.actor, &r.subject, r.payload.as_bytes()) {
            Ok(payload) => {
                sendable.push(r);
                msgs.push(OutMsg {
                    subject: r.subject.clone(),
                    msg_id: r.event_id.clone(),
                    traceparent: r.traceparent.clone(),
                    payload: Bytes::from(payload),
                });
            }
            Err(e) => aside.push((r.id, format!("cannot be signed: {e}"))),
        }
    }
    let results = publish_all(&s.js, &msgs).await;
    let mut published = Vec::with_capacity(rows.len());
    let mut failed = None;
    for (row, result) in sendable.iter().zip(results) {
        match result {
            Ok(_) => published.push(row.id),
            Err(e) => match falcon_nats::publish::never_publishable(&e) {
                Some(why) => aside.push((row.id, why)),
                None => {
                    failed.get_or_insert(e);
                }
            },
        }
    }
    set_aside(s, conn, &rows, aside).await?;
    let count = published.len();
    if !published.is_empty() {
        metrics::counter!(names::RELAY_PUBLISHED, "actor" => s.actor.as_str())
            .increment(count as u64);
        let _turn = write_gate(&s.db).await;
        outbox::Entity::update_many()
            .col_expr(outbox::Column::PublishedAt, Expr::value(Utc::now()))
            .filter(outbox::Column::Id.is_in(published))
            .exec(conn)
            .await?;
    }
    if let Some(e) = failed {
        tracing::warn!(actor = s.actor.as_str(), error = %e, "outbox publish failed; will retry");
        return Ok((count, false));
    }
    let full = u64::try_from(rows.len()).unwrap_or(u64::MAX) >= s.batch_max;
    Ok((count, full))
}

/// Marks rows that can never be published, with why; counted and logged
/// as errors (an alert fires on the counter), and reported by `falcon
/// verify` until an operator deals with them.
async fn set_aside(
    s: &RelayArgs,
    conn: &impl ConnectionTrait,
    rows: &[outbox::Model],
    aside: Vec<(i64, String)>,
) -> Result<(), sea_orm::DbErr> {
    if aside.is_empty() {
        return Ok(());
    }
    metrics::counter!(names::OUTBOX_SET_ASIDE, "actor" => s.actor.as_str())
        .increment(aside.len() as u64);
    let _turn = write_gate(&s.db).await;
    for (id, why) in aside {
        let subject = rows.iter().find(|r| r.id == id).map(|r| r.subject.as_str());
        tracing::error!(actor = s.actor.as_str(), outbox_id = id, subject, reason = %why, "event can never be published; set aside, the rest flows");
        outbox::Entity::update_many()
            .col_expr(outbox::Column::SetAside, Expr::value(why))
            .filter(outbox::Column::Id.eq(id))
            .exec(conn)
            .await?;
    }
    Ok(())
}
