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
//! by a deadline (its transfer cannot fail). Nor is one marked capturing
//! (`capture_started_at`): the provider may have charged it, and only the
//! provider's answer moves it. A marked payment past its deadline whose
//! capture has stayed in doubt for `saga.capture_doubt_s` (the provider was
//! out, the process capturing it died) is resolved by [`resolve`], which
//! closes the key at the provider: a charge it holds (one that landed
//! before the close, even an instant before) completes the capture, a
//! decline fails it, and a key it never charged is closed, so that a
//! capture still on its way can no longer charge, and the saga is then
//! compensated. Nothing is guessed, and nothing charged is undone: while
//! the provider does not answer, the saga waits.

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
use crate::provider::{CaptureRequest, Captures, Held, ProviderError, Resilient};
use crate::rows::Rows;
use crate::steps;
use falcon_kernel::relay::Poke;
use falcon_kernel::store::{begin_write, Outbox};
use falcon_kernel::StepError;

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
        .filter(payment::Column::CaptureStartedAt.is_null())
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
            .filter(payment::Column::CaptureStartedAt.is_null())
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

/// Resolves up to `limit` captures in doubt at `now`: payments marked
/// capturing at least `doubt` ago and past their deadline. Each is settled
/// by what the provider holds for its key; returns how many moved. A
/// provider that does not answer leaves the rest for the next round.
pub async fn resolve(
    db: &DatabaseConnection,
    provider: &Resilient,
    now: DateTime<Utc>,
    doubt: Duration,
    limit: u64,
) -> Result<usize, DbErr> {
    let Some(marked_before) = chrono::Duration::from_std(doubt)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
    else {
        return Ok(0);
    };
    let in_doubt = payment::Entity::find()
        .filter(payment::Column::State.is_in(steps::capture_awaiting_states()))
        .filter(payment::Column::CaptureStartedAt.lt(marked_before))
        .filter(payment::Column::DeadlineAt.lt(now))
        .order_by_asc(payment::Column::DeadlineAt)
        .limit(limit)
        .all(db)
        .await?;
    let mut moved = 0;
    for row in in_doubt {
        let Ok(data) = row.data() else { continue };
        let Ok(amount) = crate::records::same_payment(&row, &data) else {
            continue;
        };
        let request = CaptureRequest {
            payment_id: row.payment_id.clone(),
            amount,
        };
        let answer = match ask(provider, &request).await {
            Ok(answer) => answer,
            Err(e) if e.is_transient() => {
                tracing::warn!(saga_id = %row.payment_id, error = %e.report(), "capture in doubt; the provider did not answer, the saga waits");
                break;
            }
            Err(e) => {
                // A refusal of this key (held for another amount): nothing
                // is guessed, the saga waits for an operator, and the
                // captures behind it are still asked.
                tracing::error!(saga_id = %row.payment_id, error = %e.report(), "capture in doubt; the provider refused to close the key, the saga waits");
                continue;
            }
        };
        let mut captures = Captures::new();
        captures.insert(row.payment_id.clone(), answer);
        let txn = begin_write(db).await?;
        let mut out = Outbox::standalone(crate::SOURCE, format!("doubt:{}", row.payment_id), now);
        match steps::capture(&txn, &mut Rows::default(), &data, &captures, &mut out).await {
            Ok(()) => {}
            Err(StepError::Database(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(saga_id = %row.payment_id, error = %e, "capture in doubt could not be settled");
                continue;
            }
        }
        let published = !out.events.is_empty();
        out.write(&*txn).await?;
        txn.commit().await?;
        if published {
            moved += 1;
        }
    }
    Ok(moved)
}

/// The provider's answer for a capture in doubt: what the key holds once
/// it is closed. A key never charged is closed, so that a capture still on
/// its way (the actor's own retry after an outage) can no longer charge;
/// a charge that landed first stands and completes the saga. The provider
/// orders the two, so the actor's capture and this answer agree.
async fn ask(
    provider: &Resilient,
    request: &CaptureRequest,
) -> Result<Result<crate::provider::Settlement, ProviderError>, ProviderError> {
    let key = &request.payment_id;
    let resolved = |outcome: &'static str| {
        metrics::counter!(falcon_kernel::telemetry::names::CAPTURES_RESOLVED, "outcome" => outcome)
            .increment(1);
    };
    Ok(match provider.close(request).await? {
        Held::Charged(s) => {
            tracing::info!(saga_id = %key, "capture in doubt: the provider charged it; completing");
            resolved("charged");
            Ok(s)
        }
        Held::Declined(reason) => {
            resolved("declined");
            Err(ProviderError::Declined(reason))
        }
        Held::Voided => {
            tracing::warn!(saga_id = %key, "capture in doubt: the provider never charged it; key closed, compensating");
            resolved("closed");
            Err(ProviderError::Declined(format!(
                "the capture stayed in doubt past the deadline and the provider had not charged {key}; the key is closed"
            )))
        }
    })
}

pub struct Sweeper;

pub struct SweeperArgs {
    pub db: DatabaseConnection,
    pub interval: Duration,
    pub batch_max: u64,
    pub poke: Poke,
    /// The provider captures in doubt are resolved with.
    pub provider: std::sync::Arc<Resilient>,
    /// How long a capture stays in doubt before [`resolve`] asks
    /// (`saga.capture_doubt_s`).
    pub doubt: Duration,
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
        match resolve(&s.db, &s.provider, Utc::now(), s.doubt, s.batch_max).await {
            Ok(0) => {}
            Ok(_) => s.poke.poke(),
            Err(e) => {
                tracing::warn!(error = %e, "resolving captures in doubt failed; next tick retries")
            }
        }
        Ok(())
    }
}
