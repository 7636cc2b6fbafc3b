//! The settlement provider port, its simulator, and the resilience around
//! it (retry with backoff for transient failures, a circuit breaker).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use falcon_schemas::Money;

use crate::settings::ProviderSettings;

mod http;
pub use http::{Charge, ChargeStatus, HttpProvider};

/// A capture to settle. `payment_id` is the provider's idempotency key: a
/// retried capture settles once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    pub payment_id: String,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub settlement_id: String,
}

/// What made a provider call fail underneath (a transport's or an SDK's
/// error), kept as the error's `source`; shared, so that a batch's results
/// can be cloned.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused: final, the saga compensates. The message is
    /// published (in `payment.capture_failed`).
    #[error("declined: {0}")]
    Declined(String),
    /// The provider could not be reached or failed: retry later.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        /// The failure underneath, when there is one.
        #[source]
        cause: Option<Cause>,
    },
}

impl ProviderError {
    /// Unavailable, with nothing underneath (an open breaker, a simulated
    /// outage).
    pub fn unavailable(message: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            message: message.into(),
            cause: None,
        }
    }

    /// Unavailable because of `cause`, which is kept as the source.
    pub fn unavailable_because(
        message: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> ProviderError {
        ProviderError::Unavailable {
            message: message.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// True when a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Unavailable { .. })
    }

    /// The error and every source under it, `: `-separated: the reason a
    /// nak or a log line gives, where only a string fits.
    pub fn report(&self) -> String {
        let mut report = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            report.push_str(": ");
            report.push_str(&e.to_string());
            source = e.source();
        }
        report
    }
}

/// What a provider holds for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Charged, and standing.
    Charged(Settlement),
    /// Declined: nothing was charged, and the key will not charge.
    Declined(String),
    /// Voided: a charge undone, or a key closed before it charged.
    Voided,
}

/// The port: anything that can settle a capture, say what it holds for a
/// key, and close a key.
#[async_trait::async_trait]
pub trait SettlementProvider: Send + Sync {
    /// Charges the request's amount, once per key.
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError>;
    /// What the provider holds for `key`; `None` when it never saw it.
    async fn lookup(&self, key: &str) -> Result<Option<Held>, ProviderError>;
    /// Settles the request's key for good without charging, and returns
    /// what the key holds afterwards: a key never charged is closed
    /// ([`Held::Voided`]; a capture still on its way is then answered
    /// "voided" and charges nothing), and a key already settled keeps its
    /// record, a charge included. The provider orders a close and a charge
    /// of one key, so the answer is the key's for good: a charge that
    /// landed first is returned, never undone.
    async fn close(&self, request: &CaptureRequest) -> Result<Held, ProviderError>;
}

/// A simulated provider: latency and failure rates from config. It honours
/// the idempotency key as a real provider does: it keeps the final answer
/// (a charge or a decline) of every key it settled, a repeated key gets
/// that first answer and charges nothing more, and a key reused for a
/// different amount is refused. Declines are decided by a hash of the
/// payment id, so another process's simulator gives the same answer too.
/// Its ledger lives as long as the process and holds the last
/// [`LEDGER_MAX`] keys (an older key asked again gets the same answer from
/// the hash, uncounted); a provider of its own, with a durable ledger, is
/// the next step of docs/DESIGN.md's provider port.
#[derive(Debug, Clone)]
pub struct Simulator {
    latency: Duration,
    decline_bps: u32,
    transient_error_bps: u32,
    ledger: Arc<std::sync::Mutex<Ledger>>,
}

/// The keys the simulator remembers at most, so that a long run's memory
/// stays bounded (about 150 bytes a key).
pub const LEDGER_MAX: usize = 100_000;

/// The simulator's answers by key, and the keys in the order settled.
#[derive(Debug, Default)]
struct Ledger {
    settled: HashMap<String, Settled>,
    order: std::collections::VecDeque<String>,
}

/// What the simulator settled for a key: the amount asked, and its answer
/// (a voided key answers with a decline).
#[derive(Debug, Clone)]
struct Settled {
    amount: Money,
    answer: Result<Settlement, ProviderError>,
    voided: bool,
}

impl Simulator {
    pub fn new(s: &ProviderSettings) -> Simulator {
        Simulator {
            latency: Duration::from_millis(s.latency_ms),
            decline_bps: s.decline_bps,
            transient_error_bps: s.transient_error_bps,
            ledger: Arc::default(),
        }
    }

    /// The charges it made: one per key it settled, with the amount.
    pub fn charges(&self) -> Vec<(String, Money)> {
        let ledger = self.ledger();
        let mut charges: Vec<(String, Money)> = ledger
            .settled
            .iter()
            .filter(|(_, s)| s.answer.is_ok())
            .map(|(key, s)| (key.clone(), s.amount))
            .collect();
        charges.sort_by(|a, b| a.0.cmp(&b.0));
        charges
    }
}

/// FNV-1a: a stable hash (the standard library's may change between builds).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Simulator {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Ledger {
    fn insert(&mut self, key: &str, settled: Settled) {
        if !self.settled.contains_key(key) {
            if self.order.len() >= LEDGER_MAX {
                if let Some(oldest) = self.order.pop_front() {
                    self.settled.remove(&oldest);
                }
            }
            self.order.push_back(key.to_owned());
        }
        self.settled.insert(key.to_owned(), settled);
    }
}

/// The simulator's answer for a voided key.
fn voided(key: &str) -> ProviderError {
    ProviderError::Declined(format!("the provider voided {key}"))
}

#[async_trait::async_trait]
impl SettlementProvider for Simulator {
    async fn lookup(&self, key: &str) -> Result<Option<Held>, ProviderError> {
        if rand::random_range(0..10_000) < self.transient_error_bps {
            return Err(ProviderError::unavailable("simulated outage"));
        }
        Ok(self.ledger().settled.get(key).map(|s| match &s.answer {
            Ok(settlement) => Held::Charged(settlement.clone()),
            Err(_) if s.voided => Held::Voided,
            Err(e) => Held::Declined(e.to_string()),
        }))
    }

    async fn close(&self, request: &CaptureRequest) -> Result<Held, ProviderError> {
        if rand::random_range(0..10_000) < self.transient_error_bps {
            return Err(ProviderError::unavailable("simulated outage"));
        }
        let key = &request.payment_id;
        let mut ledger = self.ledger();
        if let Some(s) = ledger.settled.get(key) {
            if s.amount != request.amount {
                return Err(ProviderError::Declined(format!(
                    "idempotency key {key} was used for {}, not {}",
                    s.amount, request.amount
                )));
            }
            return Ok(match &s.answer {
                Ok(settlement) => Held::Charged(settlement.clone()),
                Err(_) if s.voided => Held::Voided,
                Err(e) => Held::Declined(e.to_string()),
            });
        }
        ledger.insert(
            key,
            Settled {
                amount: request.amount,
                answer: Err(voided(key)),
                voided: true,
            },
        );
        Ok(Held::Voided)
    }

    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if rand::random_range(0..10_000) < self.transient_error_bps {
            return Err(ProviderError::unavailable("simulated outage"));
        }
        let mut ledger = self.ledger();
        if let Some(settled) = ledger.settled.get(&request.payment_id) {
            if settled.amount != request.amount {
                return Err(ProviderError::Declined(format!(
                    "idempotency key {} was used for {}, not {}",
                    request.payment_id, settled.amount, request.amount
                )));
            }
            return settled.answer.clone();
        }
        let h = fnv1a(&request.payment_id);
        let answer = if h % 10_000 < u64::from(self.decline_bps) {
            Err(ProviderError::Declined(format!(
                "simulated decline of {}",
                request.amount
            )))
        } else {
            Ok(Settlement {
                settlement_id: format!("sim-{h:016x}"),
            })
        };
        ledger.insert(
            &request.payment_id,
            Settled {
                amount: request.amount,
                answer: answer.clone(),
                voided: false,
            },
        );
        answer
    }
}

/// Breaker states, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The gauge value of a breaker state: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// A circuit breaker: after `failures_max` consecutive transient failures it
/// opens and refuses calls for `open_for`, then lets one trial through.
#[derive(Debug)]
pub struct Breaker {
    failures_max: u32,
    open_for: Duration,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` when the breaker opened; 0 when closed.
    opened_at_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(failures_max: u32, open_for: Duration) -> Breaker {
        Breaker {
            failures_max: failures_max.max(1),
            open_for,
            consecutive_failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub fn state(&self) -> BreakerState {
        match self.opened_at_ms.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            at if self.now_ms().saturating_sub(at)
                < u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX) =>
            {
                BreakerState::Open
            }
            _ => BreakerState::HalfOpen,
        }
    }

    fn record(&self, ok: bool) {
        if ok {
            self.consecutive_failures.store(0, Ordering::Release);
            self.opened_at_ms.store(0, Ordering::Release);
        } else {
            let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= self.failures_max {
                self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            }
        }
    }
}

/// A provider wrapped in retry-with-backoff (transient failures only) and a
/// circuit breaker. While the breaker is open, captures fail fast as
/// `Unavailable` and the message is nak'd for later.
pub struct Resilient {
    inner: Arc<dyn SettlementProvider>,
    retry: ExponentialBuilder,
    pub breaker: Breaker,
}

impl Resilient {
    pub fn new(inner: Arc<dyn SettlementProvider>, s: &ProviderSettings) -> Resilient {
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(s.retry_delay_ms_min))
            .with_max_delay(Duration::from_millis(s.retry_delay_ms_max))
            .with_max_times(s.retry_attempts_max.saturating_sub(1))
            .with_jitter();
        Resilient {
            inner,
            retry,
            breaker: Breaker::new(
                s.breaker_failures_max,
                Duration::from_millis(s.breaker_open_ms),
            ),
        }
    }

    pub async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        self.refuse_while_open()?;
        let result = (|| async { self.inner.capture(request).await })
            .retry(self.retry)
            .when(ProviderError::is_transient)
            .notify(|e, delay| {
                tracing::warn!(payment_id = %request.payment_id, error = %e.report(), retry_in_ms = delay.as_millis() as u64, "capture failed; retrying");
            })
            .await;
        self.breaker
            .record(!result.as_ref().is_err_and(ProviderError::is_transient));
        metrics::gauge!(falcon_kernel::telemetry::names::BREAKER_STATE)
            .set(self.breaker.state().gauge_value());
        result
    }
}

impl Resilient {
    /// Refuses a call at once while the breaker is open.
    fn refuse_while_open(&self) -> Result<(), ProviderError> {
        if self.breaker.state() == BreakerState::Open {
            return Err(ProviderError::unavailable("circuit breaker open"));
        }
        Ok(())
    }

    /// What the provider holds for `key`: one call, no retry (the caller
    /// asks again on its next round), refused while the breaker is open.
    pub async fn lookup(&self, key: &str) -> Result<Option<Held>, ProviderError> {
        self.refuse_while_open()?;
        self.inner.lookup(key).await
    }

    /// Closes the request's key and returns what it holds: one call, no
    /// retry, refused while the breaker is open.
    pub async fn close(&self, request: &CaptureRequest) -> Result<Held, ProviderError> {
        self.refuse_while_open()?;
        self.inner.close(request).await
    }
}

/// Provider results for a batch's `funds_reserved` events, by payment id.
pub type Captures = HashMap<String, Result<Settlement, ProviderError>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> CaptureRequest {
        CaptureRequest {
            payment_id: id.into(),
            amount: Money::from_minor(
                100,
                falcon_schemas::Currency::from_code("USD").expect("USD"),
            ),
        }
    }

    #[tokio::test]
    async fn simulator_declines_deterministically() {
        let all = Simulator::new(&ProviderSettings {
            decline_bps: 10_000,
            ..Default::default()
        });
        let none = Simulator::new(&ProviderSettings::default());
        assert!(matches!(
            all.capture(&request("p1")).await,
            Err(ProviderError::Declined(_))
        ));
        let a = none
            .capture(&request("p1"))
            .await
            .expect("no failures configured");
        let b = none
            .capture(&request("p1"))
            .await
            .expect("no failures configured");
        assert_eq!(a, b, "same payment, same settlement");
    }

    /// A repeated key gets the first answer and charges once; a key reused
    /// for another amount is refused; a decline is remembered too.
    #[tokio::test]
    async fn simulator_honours_the_idempotency_key() {
        let sim = Simulator::new(&ProviderSettings::default());
        let first = sim.capture(&request("p1")).await.expect("charged");
        let again = sim.capture(&request("p1")).await.expect("the first answer");
        assert_eq!(first, again);
        let other_amount = CaptureRequest {
            amount: Money::from_minor(
                101,
                falcon_schemas::Currency::from_code("USD").expect("USD"),
            ),
            ..request("p1")
        };
        let refused = sim.capture(&other_amount).await.expect_err("refused");
        assert!(
            matches!(&refused, ProviderError::Declined(m) if m.contains("idempotency key p1")),
            "{refused}"
        );
        sim.capture(&request("p2")).await.expect("charged");
        let charges = sim.charges();
        assert_eq!(
            charges
                .iter()
                .map(|(k, m)| (k.as_str(), m.minor()))
                .collect::<Vec<_>>(),
            vec![("p1", 100), ("p2", 100)],
            "one charge per key"
        );
        let declining = Simulator::new(&ProviderSettings {
            decline_bps: 10_000,
            ..Default::default()
        });
        for _ in 0..2 {
            assert!(matches!(
                declining.capture(&request("p3")).await,
                Err(ProviderError::Declined(_))
            ));
        }
        assert!(declining.charges().is_empty());
    }

    #[tokio::test]
    async fn breaker_opens_after_consecutive_transient_failures() {
        let s = ProviderSettings {
            transient_error_bps: 10_000,
            retry_attempts_max: 2,
            retry_delay_ms_min: 1,
            retry_delay_ms_max: 1,
            breaker_failures_max: 2,
            breaker_open_ms: 60_000,
            ..Default::default()
        };
        let r = Resilient::new(Arc::new(Simulator::new(&s)), &s);
        for _ in 0..2 {
            assert!(matches!(
                r.capture(&request("p")).await,
                Err(ProviderError::Unavailable { .. })
            ));
        }
        assert_eq!(r.breaker.state(), BreakerState::Open);
        let e = r
            .capture(&request("p"))
            .await
            .expect_err("open breaker refuses");
        assert!(
            matches!(&e, ProviderError::Unavailable { message, cause: None } if message == "circuit breaker open"),
            "{e}"
        );
    }

    /// A failure underneath stays the error's source, and the report names
    /// it; the error's own message does not repeat it.
    #[test]
    fn an_unavailable_provider_keeps_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 2 s");
        let e = ProviderError::unavailable_because("capture of p1", cause);
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "unavailable: capture of p1");
        let source = std::error::Error::source(&e).expect("the cause");
        assert_eq!(source.to_string(), "no answer in 2 s");
        assert_eq!(e.report(), "unavailable: capture of p1: no answer in 2 s");
        let declined = ProviderError::Declined("card".into());
        assert!(!declined.is_transient());
        assert_eq!(declined.report(), "declined: card");
    }
}
