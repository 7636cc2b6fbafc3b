//! The settlement provider port, its simulator, and the resilience around
//! it (retry with backoff for transient failures, a circuit breaker).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use falcon_schemas::Money;

use crate::settings::ProviderSettings;

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

/// The port: anything that can settle a capture.
#[async_trait::async_trait]
pub trait SettlementProvider: Send + Sync {
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError>;
}

/// A simulated provider: latency and failure rates from config. Declines
/// are decided by a hash of the payment id, so a retry (or another process)
/// gets the same answer, as a real provider's idempotency key would give.
#[derive(Debug, Clone)]
pub struct Simulator {
    latency: Duration,
    decline_bps: u32,
    transient_error_bps: u32,
}

impl Simulator {
    pub fn new(s: &ProviderSettings) -> Simulator {
        Simulator {
            latency: Duration::from_millis(s.latency_ms),
            decline_bps: s.decline_bps,
            transient_error_bps: s.transient_error_bps,
        }
    }
}

/// FNV-1a: a stable hash (the standard library's may change between builds).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[async_trait::async_trait]
impl SettlementProvider for Simulator {
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let h = fnv1a(&request.payment_id);
        if h % 10_000 < u64::from(self.decline_bps) {
            return Err(ProviderError::Declined(format!(
                "simulated decline of {}",
                request.amount
            )));
        }
        if rand::random_range(0..10_000) < self.transient_error_bps {
            return Err(ProviderError::unavailable("simulated outage"));
        }
        Ok(Settlement {
            settlement_id: format!("sim-{h:016x}"),
        })
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
        if self.breaker.state() == BreakerState::Open {
            return Err(ProviderError::unavailable("circuit breaker open"));
        }
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
