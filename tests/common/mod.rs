//! Test harness: a real nats-server per test (free loopback port, its own
//! store dir, killed on drop), a fresh database per actor per test (SQLite
//! files in a temp dir, or PostgreSQL databases created from
//! `FALCON_TEST_DATABASE_URL` and dropped after), and the actors spawned
//! in-process. Waiting is always for an event or a condition, with a
//! deadline.

#![allow(dead_code)]

pub mod cli;
pub mod db;
pub mod nats;
pub mod provider;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use falcon_nats::publish::{publish, publish_all, Published};
use falcon_nats::OutMsg;
use falcon_runtime::invariants::{self, Report};
use falcon_runtime::runtime::Stores;
use falcon_runtime::{Runtime, Settings};
use falcon_sagas::Actor;
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::{Event, EventData, EventType};
use futures::StreamExt;

pub use db::Backend;
#[allow(unused_imports)]
pub use nats::{NatsServer, Options as NatsOptions};

/// How long a test waits for anything before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The client principal a world's commands come from, and a second one.
pub const CLIENT: &str = "client";
pub const OTHER_CLIENT: &str = "mallory";
/// A client with a user and password (`--password-client`), for raw
/// protocol tests.
pub const PLAIN_CLIENT: &str = "plain";

/// One test's world: a server, databases, and the settings to reach them.
/// Secure, as a real install is: `falcon auth init`'s keys and permissions,
/// every connection with its own identity, signed events.
pub struct World {
    pub nats: NatsServer,
    pub dbs: db::Databases,
    pub settings: Settings,
    /// The operator's connection: reads streams, consumers, dead letters.
    pub js: jetstream::Context,
    /// The client principal's: its commands (it owns the wallets it opens).
    pub client: jetstream::Context,
    /// The treasury's: deposits.
    pub treasury: jetstream::Context,
    /// Where the keys are (`security.keys_dir`).
    pub keys: tempfile::TempDir,
}

impl World {
    pub async fn new(backend: Backend) -> Result<World> {
        Self::with(backend, |_| {}).await
    }

    /// A world whose settings `tweak` may change (provider failure rate,
    /// risk rules, …) before anything starts.
    pub async fn with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Result<World> {
        init_logs();
        let keys = tempfile::tempdir()?;
        let mut settings = Settings::default();
        settings.security.keys_dir = keys.path().display().to_string();
        // Partitioned, so that every test runs the partitioned paths (a
        // loop and a durable per partition, one saga in one partition);
        // before `auth init`, whose permissions name each partition's
        // durables.
        settings.consumer.partitions = 4;
        let issued = falcon_runtime::auth::init_with(
            &settings,
            keys.path(),
            &[OTHER_CLIENT.into()],
            &[PLAIN_CLIENT.into()],
        )
        .map_err(anyhow::Error::msg)?;
        let nats = NatsServer::start_with(NatsOptions {
            auth: Some(issued.server_conf),
            monitor: true,
            ..Default::default()
        })
        .await?;
        let dbs = db::Databases::create(backend).await?;
        settings.nats.url = nats.url();
        settings.payment.database_url = dbs.url(Actor::Payment);
        settings.risk.database_url = dbs.url(Actor::Risk);
        settings.wallet.database_url = dbs.url(Actor::Wallet);
        settings.recon.database_url = dbs.url(Actor::Recon);
        // Short enough that a test sees a redelivery quickly.
        settings.consumer.ack_wait_ms = 1_500;
        settings.consumer.nak_delay_ms = 100;
        settings.relay.interval_ms = 200;
        tweak(&mut settings);
        let connect = |name: String| {
            let settings = settings.clone();
            async move {
                Ok::<_, anyhow::Error>(jetstream::new(
                    settings.connect_as(&name, "falcon-test").await?,
                ))
            }
        };
        // The streams exist before anyone reads them, as after `falcon
        // streams apply`.
        let provisioning = connect(settings.security.provisioning.clone()).await?;
        falcon_runtime::runtime::apply_topology(&provisioning, &settings).await?;
        let js = connect(settings.security.operator.clone()).await?;
        let client = connect(CLIENT.to_owned()).await?;
        let treasury = connect(settings.security.treasury.clone()).await?;
        Ok(World {
            nats,
            dbs,
            settings,
            js,
            client,
            treasury,
            keys,
        })
    }

    pub async fn start(&self) -> Result<Runtime> {
        Ok(Runtime::start(&self.settings, &Actor::ALL).await?)
    }

    /// Connects as identity `name` (one `falcon auth init` issued).
    pub async fn connect_as(&self, name: &str) -> Result<jetstream::Context> {
        Ok(jetstream::new(
            self.settings.connect_as(name, "falcon-test").await?,
        ))
    }

    /// The connection a command subject is sent on: a deposit's is the
    /// treasury's, every other command the client's.
    fn sender(&self, subject: &str) -> &jetstream::Context {
        if subject.starts_with("falcon.cmd.wallet.deposit.") {
            &self.treasury
        } else {
            &self.client
        }
    }

    /// Publishes a command body (any bytes) with an optional `Nats-Msg-Id`,
    /// as the principal its subject names (client or treasury).
    pub async fn publish_raw(
        &self,
        subject: &str,
        body: impl Into<Bytes>,
        msg_id: Option<&str>,
    ) -> Result<Published> {
        let msg = OutMsg {
            subject: subject.to_owned(),
            msg_id: msg_id
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            traceparent: None,
            payload: body.into(),
        };
        Ok(publish(self.sender(subject), &msg).await?)
    }

    /// The signing keys, as `falcon run` loads them.
    pub fn ring(&self) -> Result<falcon_kernel::signing::KeyRing> {
        self.settings.key_ring().map_err(anyhow::Error::msg)
    }

    /// Publishes an event as the actor that owns its type would: signed
    /// with its key, on its connection.
    pub async fn publish_event(&self, event: &Event) -> Result<Published> {
        let subject = event.nats_subject();
        let owner = falcon_kernel::signing::emitter(&subject)
            .with_context(|| format!("no actor owns {subject}"))?;
        let body = self
            .ring()?
            .sign(owner, &subject, &event.encode())
            .map_err(anyhow::Error::msg)?;
        let js = self.connect_as(owner.as_str()).await?;
        let msg = OutMsg {
            subject,
            msg_id: event.id.clone(),
            traceparent: None,
            payload: body.into(),
        };
        Ok(publish(&js, &msg).await?)
    }

    /// Publishes command `name` (`payment.create`, …) as its principal: the
    /// treasury for a deposit, the client otherwise.
    pub async fn command(&self, name: &str, body: serde_json::Value) -> Result<Published> {
        let principal = if name == "wallet.deposit" {
            self.settings.security.treasury.as_str()
        } else {
            CLIENT
        };
        self.publish_raw(
            &format!("falcon.cmd.{name}.{principal}"),
            serde_json::to_vec(&body)?,
            None,
        )
        .await
    }

    /// Waits for the first event on `filter` (from the stream's start) that
    /// `pred` accepts.
    pub async fn wait_event(&self, filter: &str, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        let mut events = Box::pin(falcon_nats::read::watch(&self.js, STREAM_EVT, filter).await?);
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(stored) = events.next().await {
                let e = Event::decode(&stored?.payload)?;
                if pred(&e) {
                    return Ok(e);
                }
            }
            Err(anyhow!("event stream ended"))
        })
        .await;
        found.with_context(|| format!("no matching event on {filter} within {DEADLINE:?}"))?
    }

    pub async fn open_wallet(&self, id: &str, currency: &str) -> Result<()> {
        self.command("wallet.open", serde_json::json!({"wallet_id": id, "owner": format!("owner of {id}"), "currency": currency}))
            .await?;
        self.wait_event(&format!("falcon.evt.wallet.opened.{id}"), |_| true)
            .await?;
        Ok(())
    }

    pub async fn deposit(&self, id: &str, amount: &str, currency: &str) -> Result<()> {
        let reference = format!("dep-{}", uuid::Uuid::now_v7().simple());
        self.command(
            "wallet.deposit",
            serde_json::json!({"wallet_id": id, "amount": amount, "currency": currency, "reference": reference}),
        )
        .await?;
        self.wait_event(
            &format!("falcon.evt.wallet.deposited.{id}"),
            |e| matches!(&e.data, EventData::WalletDeposited(d) if d.reference == reference),
        )
        .await?;
        Ok(())
    }

    pub fn pay_body(
        id: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> serde_json::Value {
        serde_json::json!({"payment_id": id, "from_wallet": from, "to_wallet": to, "amount": amount, "currency": currency})
    }

    /// Publishes a payment and waits for its terminal event.
    pub async fn pay(
        &self,
        id: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> Result<Event> {
        self.command(
            "payment.create",
            Self::pay_body(id, from, to, amount, currency),
        )
        .await?;
        self.wait_terminal(id).await
    }

    /// Waits for a payment's `payment.completed` or `payment.failed`.
    pub async fn wait_terminal(&self, payment_id: &str) -> Result<Event> {
        self.wait_event(&format!("falcon.evt.payment.*.{payment_id}"), |e| {
            matches!(
                e.event_type(),
                EventType::PaymentCompleted | EventType::PaymentFailed
            )
        })
        .await
    }

    /// Publishes many payments with their acks in flight, then waits until
    /// each has a terminal event; returns them by payment id.
    pub async fn pay_many(&self, bodies: &[serde_json::Value]) -> Result<HashMap<String, Event>> {
        pay_many(&self.client, &self.js, bodies).await
    }

    /// Waits until a durable consumer has nothing pending or unacked.
    /// Waits until every partition's durable of `consumer` (a name as its
    /// actor declares it: `wallet-evt`) has nothing pending.
    pub async fn wait_consumer_idle(&self, stream: &str, consumer: &str) -> Result<()> {
        for durable in self.durables(consumer) {
            eventually(|| async {
                let info = self
                    .js
                    .get_stream(stream)
                    .await?
                    .consumer_info(&durable)
                    .await?;
                Ok((info.num_pending == 0 && info.num_ack_pending == 0).then_some(()))
            })
            .await?;
        }
        Ok(())
    }

    /// The durable of `consumer` (as its actor declares it: `wallet-evt`)
    /// that reads the partition of `key` (a saga id, a wallet id, or a
    /// command's principal).
    pub fn durable(&self, consumer: &str, key: &str) -> String {
        let p = falcon_schemas::subject::partition_of(key, self.settings.consumer.partitions);
        format!("{consumer}-{p}")
    }

    /// Every partition's durable of `consumer`.
    pub fn durables(&self, consumer: &str) -> Vec<String> {
        (0..self.settings.consumer.partitions)
            .map(|p| format!("{consumer}-{p}"))
            .collect()
    }

    pub async fn stores(&self) -> Result<Stores> {
        Ok(Stores::open(&self.settings, &Actor::ALL).await?)
    }

    /// Waits until the money invariants hold with every saga terminal and
    /// every outbox published, and returns the report; fails with the
    /// violations when that does not happen before the deadline.
    pub async fn assert_invariants(&self) -> Result<Report> {
        let stores = self.stores().await?;
        let settled = eventually(|| async {
            let report = invariants::check(&stores, true).await?;
            Ok(report.ok().then_some(report))
        })
        .await;
        let mut report = match settled {
            Ok(report) => report,
            // The deadline passed: the verdict is a check made now (one
            // that settled just after it holds; one that did not names
            // what is still violated).
            Err(_) => {
                let report = invariants::check(&stores, true).await?;
                if !report.ok() {
                    bail!("money invariants violated: {:#?}", report.violations);
                }
                report
            }
        };
        // And against the streams: whatever a consumer acked, its actor had
        // committed (or dead-lettered).
        invariants::check_streams(&stores, &self.settings, &self.js, &mut report).await?;
        if !report.ok() {
            bail!("money invariants violated: {:#?}", report.violations);
        }
        Ok(report)
    }

    pub async fn balance(&self, wallet_id: &str) -> Result<falcon_wallet::Balance> {
        let stores = self.stores().await?;
        let db = stores.get(Actor::Wallet).context("wallet store")?;
        falcon_wallet::balance(db, wallet_id)
            .await?
            .with_context(|| format!("wallet {wallet_id} missing"))
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Publishes many payments with their acks in flight, then waits until
/// each has a terminal event; returns them by payment id.
pub async fn pay_many(
    client: &jetstream::Context,
    js: &jetstream::Context,
    bodies: &[serde_json::Value],
) -> Result<HashMap<String, Event>> {
    let msgs: Vec<OutMsg> = bodies
        .iter()
        .map(|b| OutMsg {
            subject: format!("falcon.cmd.payment.create.{CLIENT}"),
            msg_id: uuid::Uuid::now_v7().to_string(),
            traceparent: None,
            payload: Bytes::from(serde_json::to_vec(b).expect("JSON")),
        })
        .collect();
    for r in publish_all(client, &msgs).await {
        r?;
    }
    let want: std::collections::HashSet<String> = bodies
        .iter()
        .map(|b| b["payment_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut events =
        Box::pin(falcon_nats::read::watch(js, STREAM_EVT, "falcon.evt.payment.>").await?);
    let mut terminal = HashMap::new();
    tokio::time::timeout(DEADLINE, async {
        while terminal.len() < want.len() {
            let Some(stored) = events.next().await else {
                bail!("event stream ended")
            };
            let e = Event::decode(&stored?.payload)?;
            let done = matches!(
                e.event_type(),
                EventType::PaymentCompleted | EventType::PaymentFailed
            );
            if done && want.contains(&e.sagaid) {
                if let Some(prior) = terminal.insert(e.sagaid.clone(), e) {
                    bail!("payment {} reached a second terminal event", prior.sagaid);
                }
            }
        }
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "only {} of {} payments terminal within {DEADLINE:?}",
            terminal.len(),
            want.len()
        )
    })??;
    Ok(terminal)
}

/// Re-checks `cond` (until it gives `Some`) with a short, growing pause until it holds or the
/// deadline passes. For conditions no event announces (a row marked
/// published); never a substitute for waiting on an event.
pub async fn eventually<T, F, Fut>(mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond().await? {
            return Ok(v);
        }
        if start.elapsed() > DEADLINE {
            bail!("condition not met within {DEADLINE:?}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Generates one test per backend: `sqlite::<name>` always, and
/// `postgres::<name>` which runs when `FALCON_TEST_DATABASE_URL` is set.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    match $crate::common::Backend::postgres() {
                        Some(b) => super::$name(b).await,
                        None => {
                            eprintln!("FALCON_TEST_DATABASE_URL not set: PostgreSQL run skipped");
                            Ok(())
                        }
                    }
                }
            )*
        }
    };
}
