//! Errors: [`Error`] for starting and running an actor, [`StepError`] for
//! one message's step, which decides its ack ([`StepError::disposition`]).

use std::time::Duration;

use falcon_nats::Disposition;
use sea_orm::DbErr;

/// Starting or running an actor failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; the message names its key.
    #[error("configuration: {0}")]
    Config(String),
    /// An actor's database could not be opened, migrated or read.
    #[error("database of {actor}")]
    Database {
        actor: &'static str,
        #[source]
        source: DbErr,
    },
    /// NATS or JetStream failed.
    #[error(transparent)]
    Nats(#[from] falcon_nats::Error),
    /// The actor system could not spawn a child.
    #[error("spawning {name}")]
    Spawn {
        name: String,
        #[source]
        source: ractor::SpawnErr,
    },
}

impl Error {
    /// A database error of `actor`, for `map_err`.
    pub fn database(actor: &'static str) -> impl Fn(DbErr) -> Error {
        move |source| Error::Database { actor, source }
    }
}

/// Why one message's step did not complete. Business refusals are not
/// errors: the step publishes a rejection or compensation event and succeeds.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The database failed (busy, unreachable, a constraint): nak with a
    /// delay, the retry may succeed.
    #[error("database: {0}")]
    Database(#[from] DbErr),
    /// Another writer changed a row this step read (a lost race): nak, the
    /// retry reads the row afresh.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Might succeed later (provider down, event ahead of its predecessor):
    /// nak with a delay.
    #[error("transient: {0}")]
    Transient(String),
    /// Can never succeed (unparseable, impossible for the saga): term and
    /// dead-letter.
    #[error("poison: {0}")]
    Poison(String),
}

impl StepError {
    /// The one place an error becomes an ack decision.
    pub fn disposition(&self, nak_delay: Duration) -> Disposition {
        match self {
            StepError::Database(_) | StepError::Conflict(_) | StepError::Transient(_) => {
                Disposition::Nak {
                    delay: nak_delay,
                    error: self.to_string(),
                }
            }
            StepError::Poison(why) => Disposition::Term(why.clone()),
        }
    }

    /// True for errors a later delivery may not meet again.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StepError::Poison(_))
    }
}
