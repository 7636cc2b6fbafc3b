//! Durable saga deadlines: the payment actor's sweeper.
//!
//! Every payment row carries its `deadline_at`. A sweeper (a ractor actor
//! beside the payment consumer) looks for payments still before capture
//! past their deadline and fails the capture with `deadline_exceeded`; the
//! wallet then releases whatever it holds (or leaves a tombstone that stops
//! a reservation still on its way), and the payment fails, compensated.
//! Because the deadline lives in the database, whichever process sweeps
//! next finds it, also when the one that started the saga died; the update
//! is guarded by the state it read, so two sweepers, or a sweeper and a
//! capture, cannot both move a saga.
//!
//! A payment already captured is past the pivot: it is never compensated
//! by a deadline (its transfer cannot fail).

use std::time::Duration;

use chrono::{DateTime, Utc};
use falcon_sagas::State;
use falcon_schemas::event::FailureData;
use falcon_schemas::{EventData, Reason};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::entity::payment;
use falcon_kernel::relay::Poke;
use falcon_kernel::store::{begin_write, Outbox};

/// States a deadline compensates: funds may be held, nothing captured.
const BEFORE_CAPTURE: [State; 3] = [State::Requested, State::Approved, State::Reserved];

/// Compensates up to `limit` payments past their deadline at `now`;
/// returns how many.
pub async fn sweep(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<usize, DbErr> {
    let states: Vec<&str> = BEFORE_CAPTURE.iter().map(State::as_str).collect();
    let due = payment::Entity::find()
        .filter(payment::Column::State.is_in(states))
        .filter(payment::Column::DeadlineAt.lt(now))
        .order_by_asc(payment::Column::DeadlineAt)
        .limit(limit)
        .all(db)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let txn = begin_write(db).await?;
    let mut out = Outbox::standalone(crate::SOURCE, "deadline".into(), now);
    let mut moved = 0;
    for p in due {
        let Ok(data) = p.data() else { continue };
        let r = payment::Entity::update_many()
            .col_expr(
                payment::Column::State,
                Expr::value(State::CaptureFailed.as_str()),
            )
            .col_expr(
                payment::Column::Reason,
                Expr::value(Reason::DeadlineExceeded.as_str()),
            )
            .col_expr(payment::Column::UpdatedAt, Expr::value(now))
            .filter(payment::Column::PaymentId.eq(&p.payment_id))
            .filter(payment::Column::State.eq(&p.state))
            .exec(&*txn)
            .await?;
        if r.rows_affected != 1 {
            continue;
        }
        moved += 1;
        tracing::warn!(saga_id = %p.payment_id, state = %p.state, "saga deadline passed; compensating");
        // Each compensation starts a trace of its own.
        out.causation_id = format!("deadline:{}", p.payment_id);
        out.traceparent = falcon_nats::trace::TraceParent::new_root();
        out.push(EventData::PaymentCaptureFailed(FailureData {
            payment: data,
            reason: Reason::DeadlineExceeded,
            message: format!(
                "the saga did not reach capture by its deadline {}",
                p.deadline_at.to_rfc3339()
            ),
        }));
    }
    out.write(&*txn).await?;
    txn.commit().await?;
    Ok(moved)
}

pub struct Sweeper;

pub struct SweeperArgs {
    pub db: DatabaseConnection,
    pub interval: Duration,
    pub batch_max: u64,
    pub poke: Poke,
}

pub enum SweeperMsg {
    Sweep,
}

impl Actor for Sweeper {
    type Msg = SweeperMsg;
    type State = SweeperArgs;
    type Arguments = SweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SweeperMsg>,
        args: SweeperArgs,
    ) -> Result<SweeperArgs, ActorProcessingErr> {
        myself.send_interval(args.interval, || SweeperMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SweeperMsg>,
        _msg: SweeperMsg,
        s: &mut SweeperArgs,
    ) -> Result<(), ActorProcessingErr> {
        match sweep(&s.db, Utc::now(), s.batch_max).await {
            Ok(0) => {}
            Ok(_) => s.poke.poke(),
            Err(e) => tracing::warn!(error = %e, "deadline sweep failed; next tick retries"),
        }
        Ok(())
    }
}
