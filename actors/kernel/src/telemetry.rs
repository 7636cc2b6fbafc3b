//! What the actors tell operators: a span per message handled, and the
//! metrics behind `/metrics`.
//!
//! **Traces.** Each message is handled in a `handle` span whose parent is
//! the span named by the message's `traceparent`; the events the step
//! writes carry the handling span's own id. So the client's command, every
//! event and every actor's handling are one trace, with each span the
//! child of the one that caused it. When no OpenTelemetry layer is
//! installed (no `OTEL_EXPORTER_OTLP_ENDPOINT`), the trace id is still
//! carried and logged, and each hop takes a fresh span id.
//!
//! **Metrics** go through the `metrics` facade: free when no recorder is
//! installed (tests in-process), exported by the Prometheus recorder that
//! `falcon run` installs. The names are listed in [`names`]; dashboards and
//! alert rules under `deploy/` use them.

use chrono::{DateTime, Utc};
use falcon_nats::trace::TraceParent;
use falcon_nats::Delivery;
use falcon_schemas::Reason;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Metric names (Prometheus), with their labels.
pub mod names {
    /// Counter `{actor}`: messages handled and acked (duplicates included).
    pub const HANDLED: &str = "falcon_messages_handled_total";
    /// Counter `{actor}`: messages nak'd (to retry) or dead-lettered.
    pub const FAILED: &str = "falcon_messages_failed_total";
    /// Counter `{actor}`: deliveries that were not a message's first.
    pub const REDELIVERED: &str = "falcon_messages_redelivered_total";
    /// Counter `{actor}`: messages copied to FALCON_DLQ.
    pub const DEAD_LETTERED: &str = "falcon_messages_dead_lettered_total";
    /// Gauge `{stream}`: bytes a stream holds, sampled (with
    /// [`STREAM_MAX_BYTES`], how near full it is: a full stream refuses
    /// new messages).
    pub const STREAM_BYTES: &str = "falcon_stream_bytes";
    /// Gauge `{stream}`: the stream's `max_bytes`.
    pub const STREAM_MAX_BYTES: &str = "falcon_stream_max_bytes";
    /// Counter `{actor}`: outbox events set aside because they can never be
    /// published (too large, unsignable); `falcon verify` lists them.
    pub const OUTBOX_SET_ASIDE: &str = "falcon_outbox_set_aside_total";
    /// Counter `{actor}`: events refused because their signature did not
    /// check (dead-lettered with reason `unauthenticated_event`).
    pub const UNAUTHENTICATED: &str = "falcon_events_unauthenticated_total";
    /// Counter `{actor}`: messages whose header block or subject could not
    /// be parsed (dead-lettered with reason `malformed_headers`).
    pub const MALFORMED: &str = "falcon_messages_malformed_total";
    /// Histogram `{actor}`: one message's step, in seconds (on the batch
    /// fast path, its share of the batch's step).
    pub const HANDLER_DURATION: &str = "falcon_handler_duration_seconds";
    /// Histogram `{actor}`: messages per batch transaction.
    pub const BATCH_SIZE: &str = "falcon_batch_size";
    /// Counter: payment sagas that completed.
    pub const SAGAS_COMPLETED: &str = "falcon_sagas_completed_total";
    /// Counter `{reason}`: payment sagas that failed.
    pub const SAGAS_FAILED: &str = "falcon_sagas_failed_total";
    /// Counter: failed payment sagas whose held funds were released.
    pub const SAGAS_COMPENSATED: &str = "falcon_sagas_compensated_total";
    /// Histogram `{outcome}`: payment saga, request to terminal, in seconds.
    pub const SAGA_DURATION: &str = "falcon_saga_duration_seconds";
    /// Gauge: non-terminal sagas older than `saga.stuck_after_s`.
    pub const SAGAS_STUCK: &str = "falcon_sagas_stuck";
    /// Gauge: messages in FALCON_DLQ.
    pub const DLQ_DEPTH: &str = "falcon_dlq_depth";
    /// Gauge `{consumer}`: messages not yet delivered.
    pub const CONSUMER_PENDING: &str = "falcon_consumer_pending";
    /// Gauge `{consumer}`: messages delivered and not yet acked.
    pub const CONSUMER_ACK_PENDING: &str = "falcon_consumer_ack_pending";
    /// Gauge `{actor}`: outbox rows not yet published.
    pub const OUTBOX_BACKLOG: &str = "falcon_outbox_backlog";
    /// Gauge: the provider's circuit breaker, 0 closed, 1 half-open, 2 open.
    pub const BREAKER_STATE: &str = "falcon_breaker_state";
    /// Counter `{actor}`: events the relay published.
    pub const RELAY_PUBLISHED: &str = "falcon_relay_published_total";
    /// Counter: actors restarted by the supervisor.
    pub const ACTOR_RESTARTS: &str = "falcon_actor_restarts_total";
    /// Counter `{actor, table}`: inbox and outbox rows pruned past their
    /// retention.
    pub const ROWS_PRUNED: &str = "falcon_rows_pruned_total";
    /// Counter `{outcome}`: captures in doubt resolved by closing their key
    /// at the provider (`charged`: it had charged, completed; `declined`;
    /// `closed`: never charged, compensated).
    pub const CAPTURES_RESOLVED: &str = "falcon_captures_resolved_total";
    /// Counter `{kind}`: mismatches the reconciliation actor opened.
    pub const RECON_MISMATCHES: &str = "falcon_recon_mismatches_total";
    /// Gauge: mismatches open after the last reconciliation run.
    pub const RECON_OPEN: &str = "falcon_recon_mismatches_open";
    /// Counter `{outcome}` (`ok`, `error`): reconciliation runs.
    pub const RECON_RUNS: &str = "falcon_recon_runs_total";
    /// Gauge: payments whose facts changed and wait to be compared, after
    /// the last reconciliation run (quiet or not yet); growing run after
    /// run, the reconciliation is falling behind.
    pub const RECON_PENDING: &str = "falcon_recon_pending";
    /// Gauge: when the last reconciliation run finished, in Unix seconds.
    pub const RECON_LAST_RUN: &str = "falcon_recon_last_run_timestamp_seconds";
    /// Gauge: bytes the process holds, allocated and not freed (the
    /// `falcon` binary's allocator, jemalloc's `stats.allocated`).
    pub const MEMORY_ALLOCATED: &str = "falcon_memory_allocated_bytes";
    /// Gauge: bytes in resident pages the allocator keeps mapped (the live
    /// heap, its metadata and freed pages not yet returned; jemalloc's
    /// `stats.resident`).
    pub const MEMORY_RESIDENT: &str = "falcon_memory_resident_bytes";
}

/// A payment saga reaching its end, recorded once its step has committed.
#[derive(Debug, Clone, Copy)]
pub struct SagaEnd {
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// `None`: completed.
    pub failure: Option<Reason>,
    pub compensated: bool,
}

impl SagaEnd {
    pub fn record(&self) {
        let seconds = (self.ended_at - self.started_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        match self.failure {
            None => {
                metrics::counter!(names::SAGAS_COMPLETED).increment(1);
                metrics::histogram!(names::SAGA_DURATION, "outcome" => "completed").record(seconds);
            }
            Some(reason) => {
                metrics::counter!(names::SAGAS_FAILED, "reason" => reason.as_str()).increment(1);
                if self.compensated {
                    metrics::counter!(names::SAGAS_COMPENSATED).increment(1);
                }
                metrics::histogram!(names::SAGA_DURATION, "outcome" => "failed").record(seconds);
            }
        }
    }
}

/// The span one message is handled in, and the trace context the events it
/// causes carry.
pub struct Handling {
    pub span: tracing::Span,
    pub traceparent: TraceParent,
}

/// Opens the `handle` span for a delivery, as the child of the span named
/// by its `traceparent` (a new trace when it has none or a malformed one).
pub fn handling(actor: &str, delivery: &Delivery) -> Handling {
    let parent = delivery.traceparent().and_then(TraceParent::parse);
    let (step, key) = step_of(&delivery.subject);
    let span = tracing::info_span!(
        "handle",
        otel.name = %format_args!("{actor} {step}"),
        otel.kind = "consumer",
        actor,
        step,
        saga_id = key,
        payment_id = Empty,
        trace_id = Empty,
        consumer = %delivery.consumer,
        stream_seq = delivery.stream_seq,
        delivery = delivery.delivered,
        outcome = Empty,
    );
    if let Some(p) = parent {
        // Only fails when no OpenTelemetry layer is installed.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote(p)));
    }
    let traceparent = traceparent_of(&span)
        .unwrap_or_else(|| parent.map_or_else(TraceParent::new_root, |p| p.child()));
    span.record(
        "trace_id",
        tracing::field::display(traceparent.trace_id_hex()),
    );
    Handling { span, traceparent }
}

/// The span context a `traceparent` names, as seen from this process.
pub fn remote(p: TraceParent) -> SpanContext {
    let flags = if p.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(p.trace_id.to_be_bytes()),
        SpanId::from_bytes(p.span_id.to_be_bytes()),
        flags,
        true,
        TraceState::default(),
    )
}

/// The trace context of the current span when OpenTelemetry is on, for a
/// message published from inside it (a client's command).
pub fn current_traceparent() -> Option<TraceParent> {
    traceparent_of(&tracing::Span::current())
}

/// A span's own OpenTelemetry context as a `traceparent`; `None` when no
/// OpenTelemetry layer is installed.
fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        sampled: sc.is_sampled(),
    })
}

/// `falcon.evt.payment.requested.p-1` → (`payment.requested`, `p-1`);
/// `falcon.cmd.payment.create` → (`cmd.payment.create`, ``): a command's key
/// is in its body and is recorded once the step has read it.
fn step_of(subject: &str) -> (&str, &str) {
    if let Some(rest) = subject.strip_prefix(falcon_schemas::subject::EVT_PREFIX) {
        let mut dots = rest.match_indices('.').map(|(i, _)| i);
        if let (Some(_), Some(second)) = (dots.next(), dots.next()) {
            return (&rest[..second], &rest[second + 1..]);
        }
        return (rest, "");
    }
    // A command: `cmd.<aggregate>.<verb>` (its principal token is no saga).
    let name = subject.strip_prefix("falcon.").unwrap_or(subject);
    match name.match_indices('.').nth(2) {
        Some((i, _)) if name.starts_with("cmd.") => (&name[..i], ""),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_named_from_the_subject() {
        assert_eq!(
            step_of("falcon.evt.payment.requested.p-1"),
            ("payment.requested", "p-1")
        );
        assert_eq!(
            step_of("falcon.evt.wallet.funds_reserved.a.b"),
            ("wallet.funds_reserved", "a.b")
        );
        assert_eq!(
            step_of("falcon.cmd.payment.create"),
            ("cmd.payment.create", "")
        );
        assert_eq!(
            step_of("falcon.cmd.payment.create.alice"),
            ("cmd.payment.create", "")
        );
        assert_eq!(step_of("falcon.evt.odd"), ("odd", ""));
    }

    #[test]
    fn remote_context_keeps_the_ids() {
        let p = TraceParent::new_root();
        let sc = remote(p);
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(u128::from_be_bytes(sc.trace_id().to_bytes()), p.trace_id);
        assert_eq!(u64::from_be_bytes(sc.span_id().to_bytes()), p.span_id);
    }
}
