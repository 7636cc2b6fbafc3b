//! This crate's error: what went wrong talking to JetStream. Each variant
//! keeps the underlying failure as its source (and shows it in its message,
//! for logs).

/// The underlying failure of an [`Error`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A JetStream operation that failed. Callers treat every variant as
/// transient (retry or nak) except where noted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {url} as {identity}: {source}")]
    Connect {
        url: String,
        /// The identity it connected as (`anonymous` without one).
        identity: String,
        #[source]
        source: Cause,
    },
    /// A stream or consumer could not be created, read or updated.
    #[error("{op} {name}: {source}")]
    Topology {
        op: &'static str,
        name: String,
        #[source]
        source: Cause,
    },
    /// A publish was not acknowledged by JetStream.
    #[error("publish to {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: Cause,
    },
    /// Pulling messages failed in a way that needs the consumer re-bound
    /// (deleted consumer, stream ended).
    #[error("consumer {consumer}: {source}")]
    Consume {
        consumer: String,
        #[source]
        source: Cause,
    },
    /// Acking, naking or terming a message failed; JetStream redelivers it.
    #[error("settling message {stream_seq} of {consumer}: {source}")]
    Settle {
        consumer: String,
        stream_seq: u64,
        #[source]
        source: Cause,
    },
}

impl Error {
    /// A topology operation `op` on `name` failed.
    pub fn topology(op: &'static str, name: &str, source: impl Into<Cause>) -> Error {
        Error::Topology {
            op,
            name: name.to_owned(),
            source: source.into(),
        }
    }
}
