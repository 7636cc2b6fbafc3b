//! This crate's error: what went wrong talking to JetStream.

/// A JetStream operation that failed. Callers treat every variant as
/// transient (retry or nak) except where noted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    /// A stream or consumer could not be created, read or updated.
    #[error("{op} {name}: {detail}")]
    Topology {
        op: &'static str,
        name: String,
        detail: String,
    },
    /// A publish was not acknowledged by JetStream.
    #[error("publish to {subject}: {detail}")]
    Publish { subject: String, detail: String },
    /// Pulling messages failed in a way that needs the consumer re-bound
    /// (deleted consumer, stream ended).
    #[error("consumer {consumer}: {detail}")]
    Consume { consumer: String, detail: String },
    /// Acking, naking or terming a message failed; JetStream redelivers it.
    #[error("settling message {stream_seq} of {consumer}: {detail}")]
    Settle {
        consumer: String,
        stream_seq: u64,
        detail: String,
    },
}

impl Error {
    pub fn topology(op: &'static str, name: &str, e: impl std::fmt::Display) -> Error {
        Error::Topology {
            op,
            name: name.to_owned(),
            detail: e.to_string(),
        }
    }
}
