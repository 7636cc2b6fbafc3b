//! # falcon-nats: FalconPay on JetStream
//!
//! What every actor needs from JetStream, and nothing about sagas:
//!
//! - [`topology`]: the three streams and the durable pull consumers,
//!   provisioned idempotently (`falcon streams apply`);
//! - [`publish`]: publishing with `Nats-Msg-Id` and `traceparent`, many
//!   messages with their acks in flight at once;
//! - [`consumer`]: the batch consumer loop's two halves, [`consumer::Source`]
//!   (pull a batch from one or more durable consumers) and
//!   [`consumer::Disposition`] (ack, nak with delay, or term and
//!   dead-letter), applied only after the caller's transaction committed;
//! - [`dlq`]: copying a message that can never succeed to `FALCON_DLQ` with
//!   its origin and error in headers;
//! - [`trace`]: W3C `traceparent` values;
//! - [`error`]: this crate's [`Error`].
//!
//! Depends on `falcon-schemas` (names of streams and headers) and
//! async-nats; must not depend on sagas, actors or databases.

pub mod consumer;
pub mod dlq;
pub mod doctor;
pub mod error;
pub mod publish;
pub mod read;
pub mod topology;
pub mod trace;

pub use consumer::{Delivery, Disposition, Settler, Source};
pub use error::Error;
pub use publish::OutMsg;
pub use topology::{ConsumerSpec, StreamSettings};

/// Connects to NATS with a name that shows in the server's monitoring.
/// Fails at once when no server answers (one clear error, not a hang);
/// once connected, the client reconnects by itself.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, Error> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(std::time::Duration::from_secs(5))
        // Several servers (a cluster) as a comma-separated list.
        .connect(
            url.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect::<Vec<_>>(),
        )
        .await
        .map_err(|e| Error::Connect {
            url: url.to_owned(),
            detail: e.to_string(),
        })
}
