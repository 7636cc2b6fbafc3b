//! Errors: [`Error`] for starting and running the actors, [`StepError`] for
//! one message's step, which decides its ack.

use std::time::Duration;

use falcon_nats::Disposition;
use sea_orm::DbErr;

/// Starting or running a runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database {actor}: {detail}")]
    Database { actor: &'static str, detail: String },
    #[error(transparent)]
    Nats(#[from] falcon_nats::Error),
    #[error("actor system: {0}")]
    Spawn(String),
}

/// Why one message's step did not complete. Business refusals are not
/// errors: the step publishes a rejection or compensation event and succeeds.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Might succeed later (database busy, provider down, event ahead of
    /// its predecessor): nak with a delay.
    #[error("transient: {0}")]
    Transient(String),
    /// Can never succeed (unparseable, impossible for the saga): term and
    /// dead-letter.
    #[error("poison: {0}")]
    Poison(String),
}

impl From<DbErr> for StepError {
    fn from(e: DbErr) -> Self {
        StepError::Transient(format!("database: {e}"))
    }
}

impl StepError {
    /// The one place an error becomes an ack decision.
    pub fn disposition(&self, nak_delay: Duration) -> Disposition {
        match self {
            StepError::Transient(why) => Disposition::Nak {
                delay: nak_delay,
                error: why.clone(),
            },
            StepError::Poison(why) => Disposition::Term(why.clone()),
        }
    }
}
