//! `falcon-provider`: a settlement-provider simulator for testing FalconPay.
//!
//! It charges by idempotency key, as card and bank providers do: the first
//! request with a key is charged (or declined) and recorded in a durable
//! ledger; every later request with that key gets the same record back,
//! marked `Idempotent-Replayed: true`, and never a second charge. An
//! operator switches faults on (latency, declines, an outage, a hang after
//! charging) through `PUT /admin/faults` to see how FalconPay copes.
//!
//! It runs as its own process (the `falcon-provider` binary of the root
//! package) and speaks HTTP/JSON; the [`http`] module's doc is the API
//! reference. It depends on no other
//! FalconPay crate, and none of them on it: FalconPay knows it only over
//! HTTP, as it would know a real provider.
//!
//! The modules, as a map:
//!
//! - [`faults`]: the faults in force, their limits, and the pure decisions
//!   (which key declines, whether a draw comes up);
//! - [`request`]: request bodies and queries checked and typed, or refused
//!   naming the field;
//! - [`ledger`]: the SQLite ledger: records, charge, void, close, its change
//!   journal (`rev`) and pages by it, totals;
//! - [`http`]: routes, the auth/outage/latency gate, handlers, refusals;
//! - here: [`Config`], [`Error`], [`Provider`] and [`serve`], and
//!   [`report`] (an error and its causes on one line).
//!
//! Shutdown: [`serve`] stops accepting when the future it is given
//! completes, cuts any latency or hang short, lets in-flight requests
//! finish, then closes the ledger. Every record answered was committed
//! before the answer, so a restart on the same ledger answers the same key
//! with the same record.

pub mod faults;
pub mod http;
pub mod ledger;
pub mod request;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::{declines, fnv1a64, Faults};
pub use ledger::{Record, Status, Totals};

/// What the provider is started with.
#[derive(Clone, Default)]
pub struct Config {
    /// The SQLite file of the ledger; created with its table if missing.
    pub ledger: PathBuf,
    /// When set, every `/v1/...` request needs `Authorization: Bearer
    /// <api_key>`. Default none (open). Must not be empty.
    pub api_key: Option<String>,
    /// When set, every `/admin/...` request needs `Authorization: Bearer
    /// <admin_key>`. Default none (open). Must not be empty.
    pub admin_key: Option<String>,
    /// The faults in force at start; [`Faults::default`] is none.
    pub faults: Faults,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: say whether they are set, never what they are.
        let set = |k: &Option<String>| if k.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("Config")
            .field("ledger", &self.ledger)
            .field("api_key", &set(&self.api_key))
            .field("admin_key", &set(&self.admin_key))
            .field("faults", &self.faults)
            .finish()
    }
}

/// Why the provider could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is refused: fix it and start again.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The ledger cannot be opened or closed.
    #[error("ledger {}", path.display())]
    Ledger {
        path: PathBuf,
        #[source]
        source: ledger::Error,
    },
    /// Serving failed (the listener broke).
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// `error` and its causes on one line, `outer: inner: ...`, leaving out a
/// cause whose text the line already holds (many errors repeat their
/// source in their own message).
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

/// A provider with its ledger open, ready to serve. [`serve`] does both
/// steps; a binary opens first so that it says it listens only once the
/// ledger is ready.
pub struct Provider {
    app: Arc<http::App>,
    path: PathBuf,
    stop: watch::Sender<bool>,
}

impl Provider {
    /// Checks `config` and opens (or creates) the ledger.
    pub async fn open(config: Config) -> Result<Provider, Error> {
        config
            .faults
            .validate()
            .map_err(|e| Error::Config(format!("faults: {e}")))?;
        for (name, key) in [
            ("api_key", &config.api_key),
            ("admin_key", &config.admin_key),
        ] {
            if key.as_ref().is_some_and(|k| k.trim().is_empty()) {
                return Err(Error::Config(format!("{name} is empty")));
            }
        }
        let ledger = ledger::Ledger::open(&config.ledger)
            .await
            .map_err(|source| Error::Ledger {
                path: config.ledger.clone(),
                source,
            })?;
        let (stop, stopping) = watch::channel(false);
        let app = http::App {
            ledger,
            faults: Mutex::new(config.faults),
            api_key: config.api_key,
            admin_key: config.admin_key,
            stopping,
            stats: http::Stats::default(),
        };
        Ok(Provider {
            app: Arc::new(app),
            path: config.ledger,
            stop,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then drains
    /// in-flight requests and closes the ledger.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Provider { app, path, stop } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, ledger = %path.display(), "provider listening");
        }
        let signal = async move {
            shutdown.await;
            tracing::info!("provider shutting down");
            // Cuts latency and hangs short; the receivers live in `app`.
            stop.send_replace(true);
        };
        let served = axum::serve(listener, http::router(app.clone()))
            .with_graceful_shutdown(signal)
            .await
            .map_err(Error::Serve);
        let closed = app.ledger.close().await.map_err(|source| Error::Ledger {
            path: path.clone(),
            source,
        });
        served?;
        closed?;
        tracing::info!("provider stopped");
        Ok(())
    }
}

/// Opens (or creates) the ledger of `config` and serves the API on
/// `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Provider::open(config)
        .await?
        .serve(listener, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_leave_out_repeated_causes() {
        let inner = std::io::Error::other("disk on fire");
        let e = Error::Serve(inner);
        assert_eq!(report(&e), "serving HTTP: disk on fire");
        let repeated = Error::Ledger {
            path: "l.db".into(),
            source: ledger::Error::Db(sea_orm::DbErr::Custom("locked".into())),
        };
        assert_eq!(
            report(&repeated),
            "ledger l.db: database: Custom Error: locked"
        );
    }
}
