//! The load `falcon bench` drives: the wallets it opens and funds, the
//! payments it publishes in a phase (closed or open loop), and the follower
//! that wakes each payment's waiter at its saga's terminal event.

// Floats here are seconds and rates: measurements, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream::Stream};
use bytes::Bytes;
use falcon_nats::publish::publish_all;
use falcon_nats::OutMsg;
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::{CommandKind, Event, EventData};
use futures::StreamExt;
use tokio::sync::{oneshot, Semaphore};

/// Payments in flight at once in a closed loop when `--concurrency` is not
/// given.
pub const CONCURRENCY_DEFAULT: usize = 256;

/// Longest wait for every wallet's deposit before the bench gives up.
const FUNDING_WAIT: Duration = Duration::from_secs(120);

/// Waiters for terminal events, by payment id.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>;

/// The outcomes of a phase's payments that ended in time, and how many did
/// not.
pub struct Phase {
    /// Each ended payment's latency and outcome (`completed`,
    /// `failed:<reason>`, `rejected:<reason>`).
    pub results: Vec<(Duration, String)>,
    pub elapsed: Duration,
    /// Payments that were not published or did not end within the timeout.
    pub errors: usize,
}

/// The payments of one bench run: from payer `i % wallets` to its payee.
pub struct Load {
    /// The client identity's connection: it opens the wallets (so it owns
    /// them), pays, and follows the outcomes.
    pub js: jetstream::Context,
    /// The principal `js` is (the last token of its command subjects).
    pub principal: String,
    /// The treasury's connection: it funds the wallets.
    pub treasury: (jetstream::Context, String),
    waiters: Waiters,
    pub run_id: String,
    pub wallets: usize,
    pub amount: String,
    pub concurrency: usize,
    /// Open loop at this many payments per second; closed loop when `None`.
    pub rate: Option<f64>,
    /// How long each payment's terminal event is waited for.
    pub timeout: Duration,
}

fn pay_msg(principal: &str, id: &str, from: &str, to: &str, amount: &str) -> OutMsg {
    let body = serde_json::json!({"payment_id": id, "from_wallet": from, "to_wallet": to, "amount": amount, "currency": "USD"});
    OutMsg {
        subject: CommandKind::PaymentCreate.subject(principal),
        msg_id: uuid::Uuid::now_v7().to_string(),
        traceparent: Some(falcon_nats::trace::TraceParent::new_root().to_string()),
        payload: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

/// The messages in stream `name`.
pub async fn stream_messages(js: &jetstream::Context, name: &str) -> Result<u64> {
    let mut s: Stream = js.get_stream(name).await?;
    Ok(s.info().await?.state.messages)
}

impl Load {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (js, principal): (jetstream::Context, String),
        treasury: (jetstream::Context, String),
        run_id: String,
        wallets: usize,
        amount: String,
        concurrency: usize,
        rate: Option<f64>,
        timeout: Duration,
    ) -> Load {
        Load {
            js,
            principal,
            treasury,
            waiters: Waiters::default(),
            run_id,
            wallets,
            amount,
            concurrency,
            rate,
            timeout,
        }
    }

    /// Opens and funds the wallets with `funds` each (idempotent: same ids,
    /// same references).
    pub async fn setup(&self, funds: &str) -> Result<()> {
        let (js, run_id, wallets) = (&self.js, &self.run_id, self.wallets);
        let mut msgs = Vec::new();
        for i in 0..wallets {
            for side in ["payer", "payee"] {
                let id = format!("bench-{run_id}-{side}-{i}");
                msgs.push(OutMsg {
                    subject: CommandKind::WalletOpen.subject(&self.principal),
                    msg_id: format!("open-{id}"),
                    traceparent: None,
                    payload: Bytes::from(serde_json::to_vec(
                        &serde_json::json!({"wallet_id": id, "owner": "bench", "currency": "USD"}),
                    )?),
                });
            }
        }
        for r in publish_all(js, &msgs).await {
            r?;
        }
        let deposits: Vec<OutMsg> = (0..wallets)
            .map(|i| {
                let id = format!("bench-{run_id}-payer-{i}");
                OutMsg {
                    subject: CommandKind::WalletDeposit.subject(&self.treasury.1),
                    msg_id: format!("deposit-{id}"),
                    traceparent: None,
                    payload: Bytes::from(
                        serde_json::to_vec(&serde_json::json!({"wallet_id": id, "amount": funds, "currency": "USD", "reference": format!("bench-{id}")}))
                            .unwrap_or_default(),
                    ),
                }
            })
            .collect();
        // Wait for every deposit before paying.
        let stream = js.get_stream(STREAM_EVT).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: "falcon.evt.wallet.deposited.>".into(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut seen = consumer.messages().await?;
        for r in publish_all(&self.treasury.0, &deposits).await {
            r?;
        }
        let mut left: HashSet<String> = (0..wallets)
            .map(|i| format!("bench-{run_id}-payer-{i}"))
            .collect();
        tokio::time::timeout(FUNDING_WAIT, async {
            while !left.is_empty() {
                let m = seen.next().await.context("event stream ended")??;
                if let Ok(e) = Event::decode(&m.payload) {
                    left.remove(&e.sagaid);
                }
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| {
            format!(
                "wallets not funded within {} s: is `falcon run` running?",
                FUNDING_WAIT.as_secs()
            )
        })??;
        Ok(())
    }

    /// Follows every payment's terminal event from now on and wakes its
    /// waiter; abort the handle to stop.
    pub async fn follow_terminals(&self) -> Result<tokio::task::JoinHandle<()>> {
        let stream = self.js.get_stream(STREAM_EVT).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: vec![
                    "falcon.evt.payment.completed.>".into(),
                    "falcon.evt.payment.failed.>".into(),
                    "falcon.evt.payment.rejected.>".into(),
                ],
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let waiters = self.waiters.clone();
        Ok(tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let Ok(e) = Event::decode(&m.payload) else {
                    continue;
                };
                let outcome = match &e.data {
                    EventData::PaymentCompleted(_) => "completed".to_owned(),
                    EventData::PaymentFailed(f) => format!("failed:{}", f.reason.as_str()),
                    EventData::PaymentRejected(r) => format!("rejected:{}", r.reason.as_str()),
                    _ => continue,
                };
                let waiter = waiters.lock().ok().and_then(|mut w| w.remove(&e.sagaid));
                if let Some(tx) = waiter {
                    let _ = tx.send(outcome);
                }
            }
        }))
    }

    /// Payment `i`, ready to publish: it registers its waiter, then
    /// publishes and yields the instant just before publishing, with the
    /// receiver of its outcome.
    fn start_one(
        &self,
        i: usize,
    ) -> impl std::future::Future<Output = Result<(Instant, oneshot::Receiver<String>)>> + Send + 'static
    {
        let js = self.js.clone();
        let waiters = self.waiters.clone();
        let run_id = &self.run_id;
        let id = format!("bench-{run_id}-p{i}");
        let w = i % self.wallets;
        let msg = pay_msg(
            &self.principal,
            &id,
            &format!("bench-{run_id}-payer-{w}"),
            &format!("bench-{run_id}-payee-{w}"),
            &self.amount,
        );
        async move {
            let (tx, rx) = oneshot::channel();
            if let Ok(mut w) = waiters.lock() {
                w.insert(id.clone(), tx);
            }
            let t0 = Instant::now();
            publish_all(&js, std::slice::from_ref(&msg))
                .await
                .into_iter()
                .next()
                .context("no publish result")??;
            Ok((t0, rx))
        }
    }

    /// Runs payments `from..to`: in an open loop, each started on the
    /// clock; in a closed loop, each as soon as one of `concurrency` ends.
    pub async fn phase(&self, from: usize, to: usize) -> Result<Phase> {
        let timeout = self.timeout;
        let results: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        let began = Instant::now();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let interval = self.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        for i in from..to {
            // Open loop: start on the clock. Closed loop: when one ends.
            let permit = match interval {
                Some(every) => {
                    let due = began + every.mul_f64((i - from) as f64);
                    tokio::time::sleep_until(due.into()).await;
                    None
                }
                None => Some(permits.clone().acquire_owned().await?),
            };
            let fut = self.start_one(i);
            let results = results.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let (t0, rx) = fut.await?;
                let outcome = tokio::time::timeout(timeout, rx).await??;
                results
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .push((t0.elapsed(), outcome));
                Ok::<_, anyhow::Error>(())
            });
        }
        let mut errors = 0;
        while let Some(r) = tasks.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                errors += 1;
            }
        }
        let elapsed = began.elapsed();
        let results = std::mem::take(&mut *results.lock().map_err(|_| anyhow::anyhow!("lock"))?);
        Ok(Phase {
            results,
            elapsed,
            errors,
        })
    }
}
