//! Re-driving dead letters: a dead letter is handed to the handler of the
//! consumer it came from again, in a transaction of its own, with the original's inbox key, so a
//! message that had partly succeeded before has no second effect. It leaves
//! FALCON_DLQ only once the step succeeded.

use async_nats::jetstream;
use falcon_kernel::actor::Loop;
use falcon_kernel::signing::KeyRing;
use falcon_kernel::store::inbox;
use falcon_kernel::Error;
use falcon_nats::dlq::DeadLetter;
use falcon_nats::{Delivery, Disposition};
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::Event;
use sea_orm::EntityTrait;
use serde::Serialize;

use crate::registry::{Registered, REGISTRY};
use crate::settings::Settings;
use crate::stores;

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

/// The registered actor and its loop that read `consumer`: a dead letter
/// goes back to the handler of the consumer it came from.
pub async fn loop_of(
    settings: &Settings,
    consumer: &str,
) -> Result<Option<(&'static dyn Registered, std::sync::Arc<dyn Loop>)>, Error> {
    for entry in REGISTRY {
        let reads = entry
            .consumers(&settings.consumer)
            .iter()
            .any(|c| c.name == consumer);
        if !reads {
            continue;
        }
        let db = stores::open(entry, settings).await?;
        let parts = entry.parts(settings, &db)?;
        let found = parts
            .loops
            .into_iter()
            .find(|l| l.consumers().iter().any(|c| c.name == consumer));
        return Ok(found.map(|l| (entry, l)));
    }
    Ok(None)
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

/// The saga's state when it is terminal, as the actor that keeps sagas
/// records it.
async fn terminal_state(settings: &Settings, saga_id: &str) -> Result<Option<String>, Error> {
    for entry in REGISTRY.iter().filter(|r| r.keeps_sagas()) {
        let db = stores::open(*entry, settings).await?;
        let state = entry
            .saga_state(&db, saga_id)
            .await
            .map_err(Error::database(entry.actor().as_str()))?;
        if let Some(s) = state.filter(|s| s.is_terminal()) {
            return Ok(Some(s.as_str().to_owned()));
        }
    }
    Ok(None)
}

/// Re-drives one dead letter through its actor. The letter only points at
/// the message: what runs is the original, re-read from its stream by
/// sequence ([`falcon_nats::dlq::original`]), which must be on a subject
/// the letter's consumer reads, and an event's signature is checked again
/// by the batch like any delivery's.
pub async fn replay(
    settings: &Settings,
    js: &jetstream::Context,
    letter: &DeadLetter,
    force: bool,
    ring: &KeyRing,
) -> Result<Replay, Error> {
    let seq = letter.seq;
    let Some((entry, handler)) = loop_of(settings, &letter.origin.consumer).await? else {
        return Ok(Replay::Refused {
            seq,
            reason: format!(
                "consumer {} belongs to no actor",
                letter.origin.consumer.escape_debug()
            ),
        });
    };
    let Some(original) = falcon_nats::dlq::original(js, &letter.origin).await? else {
        return Ok(Replay::Refused {
            seq,
            reason: format!(
                "{} has no message {} any more (or never had): a dead letter is re-driven only from its original",
                letter.origin.stream.escape_debug(),
                letter.origin.stream_seq
            ),
        });
    };
    let (origin, payload) = (original.origin, original.payload);
    let reads = handler.consumers().iter().any(|c| {
        c.name == origin.consumer
            && c.stream == origin.stream
            && c.filter_subjects
                .iter()
                .any(|f| subject_matches(f, &original.stored_subject))
    });
    if !reads {
        return Ok(Replay::Refused {
            seq,
            reason: format!(
                "message {} of {} ({}) is not one consumer {} reads",
                origin.stream_seq,
                origin.stream,
                origin.subject.escape_debug(),
                origin.consumer.escape_debug()
            ),
        });
    }
    let letter = &DeadLetter {
        origin,
        payload,
        ..letter.clone()
    };
    let saga_id = saga_of(letter);
    if let (Some(id), false) = (&saga_id, force) {
        if let Some(state) = terminal_state(settings, id).await? {
            return Ok(Replay::Refused {
                seq,
                reason: format!("saga {id} is already {state}; redriving it could only repeat a finished step (use --force to redrive anyway)"),
            });
        }
    }
    let actor = entry.actor().as_str();
    let db = handler.db().clone();
    let delivery = Delivery::detached(&letter.origin, letter.payload.clone());
    let seen = inbox::Entity::find_by_id((delivery.reader().to_owned(), delivery.inbox_key()))
        .one(&db)
        .await
        .map_err(Error::database(actor))?
        .is_some();
    let retry = settings.consumer.retry();
    let disposition = handler
        .run_batch(std::slice::from_ref(&delivery), retry, ring)
        .await
        .into_iter()
        .next()
        .unwrap_or(Disposition::Nak {
            delay: retry.delay_min,
            error: "no disposition".into(),
        });
    match disposition {
        Disposition::Ack => {
            crate::replay::publish_outbox(settings, entry.actor(), db, ring).await?;
            falcon_nats::dlq::delete(js, seq).await?;
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

/// Whether NATS subject `subject` matches `filter` (`*` one token, `>` the
/// rest).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_filters_as_nats_does() {
        assert!(subject_matches(
            "falcon.cmd.payment.>",
            "falcon.cmd.payment.create.alice"
        ));
        assert!(subject_matches(
            "falcon.evt.wallet.funds_reserved.*",
            "falcon.evt.wallet.funds_reserved.p1"
        ));
        assert!(!subject_matches(
            "falcon.evt.wallet.funds_reserved.*",
            "falcon.evt.wallet.funds_reserved.p1.x"
        ));
        assert!(!subject_matches(
            "falcon.evt.wallet.funds_reserved.*",
            "falcon.evt.wallet.funds_reserved"
        ));
        assert!(!subject_matches(
            "falcon.cmd.payment.>",
            "falcon.cmd.payment"
        ));
        assert!(!subject_matches(
            "falcon.cmd.payment.>",
            "falcon.cmd.wallet.deposit.x"
        ));
    }
}
