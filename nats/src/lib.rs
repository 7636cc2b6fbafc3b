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
//! - [`read`]: reading a stream range through an ephemeral consumer
//!   (replay, rebuilds, `verify`'s stream check) and watching a subject;
//! - [`doctor`]: whether acknowledged messages are durable on the server
//!   (`falcon doctor`);
//! - [`trace`]: W3C `traceparent` values;
//! - [`identity`]: who a connection is (nkey, creds file, user and
//!   password) and its TLS;
//! - [`error`]: this crate's [`Error`].
//!
//! Depends on `falcon-schemas` (names of streams and headers) and
//! async-nats; must not depend on sagas, actors or databases.

pub mod consumer;
pub mod dlq;
pub mod doctor;
pub mod error;
pub mod identity;
pub mod publish;
pub mod read;
pub mod topology;
pub mod trace;

pub use consumer::{Delivery, Disposition, Settled, Settler, Source};
pub use error::Error;
pub use identity::{Credentials, Identity, Tls};
pub use publish::OutMsg;
pub use topology::{ConsumerSpec, StreamSettings};

/// Connects to NATS anonymously (or with credentials in the URL) with a
/// name that shows in the server's monitoring. See [`connect_as`].
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, Error> {
    connect_as(url, name, &Identity::anonymous(), &Tls::default()).await
}

/// Connects to NATS as `identity`, over TLS as `tls` says, with a name that
/// shows in the server's monitoring. Fails at once when no server answers
/// (one clear error, not a hang); once connected, the client reconnects by
/// itself. An identity's replies come on its own inbox prefix
/// (`_INBOX_<name>.`), so the broker can give each identity its own.
pub async fn connect_as(
    url: &str,
    name: &str,
    identity: &Identity,
    tls: &Tls,
) -> Result<async_nats::Client, Error> {
    let connect_err = |source: error::Cause| Error::Connect {
        url: mask_url(url),
        identity: identity.name.clone(),
        source,
    };
    // Several servers (a cluster) as a comma-separated list.
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| connect_err(e.into()))?;
    let options = identity
        .options(&servers)
        .await
        .map_err(|e| connect_err(e.into()))?;
    let who = identity.name.clone();
    tls.apply(options)
        // The broker's refusals (a permission violation) arrive on their
        // own, not as the failed call's error: say them where they are seen.
        .event_callback(move |event| {
            let who = who.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(identity = %who, "the NATS server refused: {e}");
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(identity = %who, "disconnected from NATS; reconnecting");
                    }
                    _ => {}
                }
            }
        })
        .name(name)
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(servers)
        .await
        .map_err(|e| connect_err(e.into()))
}

/// A URL, or a comma-separated list of them, with its secrets masked:
/// `scheme://user:secret@host/…` → `scheme://user:****@host/…`, a token
/// alone (`scheme://token@host`) and a `password=` query parameter too.
pub fn mask_url(url: &str) -> String {
    url.split(',').map(mask_one).collect::<Vec<_>>().join(",")
}

fn mask_one(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:****"),
                None => "****".to_owned(),
            };
            out.replace_range(rest..rest + at, &masked);
        }
    }
    if let Some(i) = out.find("password=") {
        let start = i + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "****");
    }
    out
}
