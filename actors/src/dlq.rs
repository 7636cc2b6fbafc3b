//! Re-driving dead letters: a dead letter is handed to its actor's step
//! again, in a transaction of its own, with the original's inbox key, so a
//! message that had partly succeeded before has no second effect. It leaves
//! FALCON_DLQ only once the step succeeded.

use async_nats::jetstream;
use falcon_nats::dlq::DeadLetter;
use falcon_nats::{Delivery, Disposition};
use falcon_sagas::{Actor, State};
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::Event;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Serialize;

use crate::batch::{run_batch, Handler};
use crate::payment::entity::{payment, refund};
use crate::runtime::{open_store, payment_handler, risk_handler};
use crate::settings::Settings;
use crate::store::inbox;
use crate::{wallet, Error};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Replay {
    /// The step ran and committed; the dead letter is gone.
    Replayed {
        seq: u64,
        actor: &'static str,
        saga_id: Option<String>,
    },
    /// The message had been processed before (its inbox row exists): nothing
    /// happened again; the dead letter is gone.
    AlreadyProcessed {
        seq: u64,
        actor: &'static str,
        saga_id: Option<String>,
    },
    /// Not attempted, and why (a terminal saga without `--force`).
    Refused { seq: u64, reason: String },
    /// The step failed again; the dead letter stays.
    Failed { seq: u64, error: String },
}

/// The actor a consumer belongs to (`wallet-evt` → wallet).
pub fn actor_of(consumer: &str) -> Option<Actor> {
    Actor::parse(consumer.split('-').next()?)
}

/// The saga a dead letter belongs to: the event's saga id, or a payment
/// command's payment (or refund) id.
pub fn saga_of(letter: &DeadLetter) -> Option<String> {
    if letter.origin.stream == STREAM_EVT {
        return Event::decode(&letter.payload).ok().map(|e| e.sagaid);
    }
    if !letter.origin.subject.starts_with("falcon.cmd.payment.") {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&letter.payload).ok()?;
    ["refund_id", "payment_id"]
        .iter()
        .find_map(|k| body.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
}

/// The saga's state when it is terminal.
async fn terminal_state(
    db: &DatabaseConnection,
    saga_id: &str,
) -> Result<Option<String>, sea_orm::DbErr> {
    let state = match payment::Entity::find_by_id(saga_id.to_owned())
        .one(db)
        .await?
    {
        Some(p) => Some(p.state),
        None => refund::Entity::find_by_id(saga_id.to_owned())
            .one(db)
            .await?
            .map(|r| r.state),
    };
    Ok(state.filter(|s| State::parse(s).is_some_and(|s| s.is_terminal())))
}

fn db_err(e: sea_orm::DbErr) -> Error {
    Error::Database {
        actor: "dlq",
        detail: e.to_string(),
    }
}

/// Re-drives one dead letter through its actor.
pub async fn replay(
    settings: &Settings,
    js: &jetstream::Context,
    letter: &DeadLetter,
    force: bool,
) -> Result<Replay, Error> {
    let seq = letter.seq;
    let Some(actor) = actor_of(&letter.origin.consumer) else {
        return Ok(Replay::Refused {
            seq,
            reason: format!("consumer {} belongs to no actor", letter.origin.consumer),
        });
    };
    let saga_id = saga_of(letter);
    if let (Some(id), false) = (&saga_id, force) {
        let payments = open_store(Actor::Payment, settings).await?;
        if let Some(state) = terminal_state(&payments, id).await.map_err(db_err)? {
            return Ok(Replay::Refused {
                seq,
                reason: format!("saga {id} is already {state}; redriving it could only repeat a finished step (use --force to redrive anyway)"),
            });
        }
    }
    let db = open_store(actor, settings).await?;
    let delivery = Delivery::detached(&letter.origin, letter.payload.clone());
    let seen = inbox::Entity::find_by_id((delivery.consumer.to_string(), delivery.inbox_key()))
        .one(&db)
        .await
        .map_err(db_err)?
        .is_some();
    let nak = settings.consumer.retry();
    let disposition = match actor {
        Actor::Payment => step(payment_handler(settings, db.clone()), delivery, nak).await,
        Actor::Risk => step(risk_handler(settings, db.clone())?, delivery, nak).await,
        Actor::Wallet => step(wallet::Wallet::new(db.clone()), delivery, nak).await,
    };
    match disposition {
        Disposition::Ack => {
            crate::replay::publish_outbox(settings, js, actor, db).await?;
            falcon_nats::dlq::delete(js, seq).await?;
            let actor = actor.as_str();
            Ok(if seen {
                Replay::AlreadyProcessed {
                    seq,
                    actor,
                    saga_id,
                }
            } else {
                Replay::Replayed {
                    seq,
                    actor,
                    saga_id,
                }
            })
        }
        Disposition::Nak { error, .. } | Disposition::Term(error) => {
            Ok(Replay::Failed { seq, error })
        }
    }
}

async fn step<H: Handler>(
    handler: H,
    delivery: Delivery,
    nak: crate::settings::Retry,
) -> Disposition {
    run_batch(
        &handler,
        H::ACTOR.as_str(),
        std::slice::from_ref(&delivery),
        nak,
    )
    .await
    .into_iter()
    .next()
    .unwrap_or(Disposition::Nak {
        delay: nak.delay_min,
        error: "no disposition".into(),
    })
}
