//! `falcon saga show`: a saga's timeline from FALCON_EVT, the source of
//! truth, and from the saga history the payment database keeps beyond the
//! stream's retention, folded through the saga state machine: each event with its
//! actor, step, latency since the previous one and kind (forward, failure,
//! compensation), then the state and what the saga waits on.

use std::process::ExitCode;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use falcon_runtime::Settings;
use falcon_sagas::{State, Transition, PAYMENT_SAGA, REFUND_SAGA};
use falcon_schemas::subject::{saga_filter, STREAM_EVT};
use falcon_schemas::{Event, EventData, EventType};
use serde::Serialize;

use crate::{output, summary};

/// Events read per saga, at most.
const SAGA_EVENTS_MAX: usize = 10_000;

#[derive(Debug, Serialize)]
struct Step {
    stream_seq: u64,
    time: DateTime<Utc>,
    event: &'static str,
    actor: String,
    step: Option<&'static str>,
    /// Time since the previous event of the saga.
    latency_ms: i64,
    /// `forward`, `failure` or `compensation`.
    kind: &'static str,
    /// `moved`, `duplicate`, `ignored` or `invalid`, from the state machine.
    transition: &'static str,
    event_id: String,
    causation_id: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Timeline {
    saga_id: String,
    saga: &'static str,
    state: Option<&'static str>,
    terminal: bool,
    compensating: bool,
    waits_on: Option<WaitsOn>,
    started_at: DateTime<Utc>,
    last_event_at: DateTime<Utc>,
    duration_ms: i64,
    trace_id: Option<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
struct WaitsOn {
    actor: &'static str,
    events: Vec<&'static str>,
    /// How long it has waited so far.
    waiting_ms: i64,
}

fn kind_of(data: &EventData) -> &'static str {
    match data {
        EventData::FundsReleased(_) => "compensation",
        EventData::PaymentFailed(f) if f.compensated => "compensation",
        EventData::PaymentFailed(_)
        | EventData::PaymentCaptureFailed(_)
        | EventData::RiskRejected(_)
        | EventData::ReservationDeclined(_)
        | EventData::PaymentRejected(_)
        | EventData::RefundDeclined(_)
        | EventData::RefundFailed(_) => "failure",
        _ => "forward",
    }
}

/// The events of `id` the payment database kept.
async fn kept_events(settings: &Settings, id: &str) -> Result<Vec<(u64, Event)>> {
    let stores =
        falcon_runtime::runtime::Stores::open(settings, &[falcon_sagas::Actor::Payment]).await?;
    let db = stores
        .get(falcon_sagas::Actor::Payment)
        .ok_or_else(|| anyhow::anyhow!("no payment database"))?;
    let (events, bad) = falcon_payment::view::history::of_saga(db, id).await?;
    for b in bad {
        eprintln!("falcon: skipping a kept event that no longer decodes: {b}");
    }
    Ok(events)
}

pub async fn show(settings: &Settings, id: &str, json: bool) -> Result<ExitCode> {
    if id.is_empty() || id.contains(['.', '*', '>', ' ']) {
        bail!("{id:?} is not a saga id");
    }
    let client = settings
        .connect_as(&settings.security.operator, "falcon-cli")
        .await?;
    let js = async_nats::jetstream::new(client);
    let stored =
        falcon_nats::read::read_filtered(&js, STREAM_EVT, &saga_filter(id), SAGA_EVENTS_MAX)
            .await?;
    let mut events = Vec::with_capacity(stored.len());
    for s in stored {
        match Event::decode(&s.payload) {
            Ok(e) => events.push((s.stream_seq, e)),
            Err(e) => eprintln!(
                "falcon: skipping undecodable event {} at seq {}: {e}",
                s.subject, s.stream_seq
            ),
        }
    }
    // The payment database keeps every saga event beyond the stream's
    // retention: what the stream no longer holds comes from there.
    match kept_events(settings, id).await {
        Ok(kept) => {
            let seen: std::collections::HashSet<String> =
                events.iter().map(|(_, e)| e.id.clone()).collect();
            events.extend(kept.into_iter().filter(|(_, e)| !seen.contains(&e.id)));
            events.sort_by_key(|(seq, _)| *seq);
        }
        Err(e) => eprintln!("falcon: the saga history could not be read ({e:#}); the stream alone"),
    }
    let Some((_, first)) = events.first() else {
        bail!("no events for saga {id}");
    };
    let def = if first.event_type() == EventType::RefundRequested {
        REFUND_SAGA
    } else {
        PAYMENT_SAGA
    };
    let started_at = first.time;
    let trace_id = first
        .traceparent
        .as_deref()
        .and_then(falcon_nats::trace::TraceParent::parse)
        .map(|t| t.trace_id_hex());
    let mut state: Option<State> = None;
    let mut prev = started_at;
    let mut steps = Vec::with_capacity(events.len());
    for (seq, e) in &events {
        let ty = e.event_type();
        let transition = match State::apply(state, ty) {
            Transition::Moved(s) => {
                state = Some(s);
                "moved"
            }
            Transition::Duplicate => "duplicate",
            Transition::Ignored => "ignored",
            Transition::Invalid { .. } => "invalid",
        };
        steps.push(Step {
            stream_seq: *seq,
            time: e.time,
            event: ty.short(),
            actor: e.source.trim_start_matches("falcon/").to_owned(),
            step: def.step_publishing(ty).map(|s| s.name),
            latency_ms: (e.time - prev).num_milliseconds(),
            kind: kind_of(&e.data),
            transition,
            event_id: e.id.clone(),
            causation_id: e.causationid.clone(),
            detail: summary::line(&e.data),
        });
        prev = e.time;
    }
    let now = Utc::now();
    let timeline = Timeline {
        saga_id: id.to_owned(),
        saga: def.name,
        state: state.map(|s| s.as_str()),
        terminal: state.is_some_and(|s| s.is_terminal()),
        compensating: state.is_some_and(|s| s.is_compensating()),
        waits_on: state.and_then(|s| s.waits_on()).map(|w| WaitsOn {
            actor: w.actor.as_str(),
            events: w.events.iter().map(|e| e.short()).collect(),
            waiting_ms: (now - prev).num_milliseconds(),
        }),
        started_at,
        last_event_at: prev,
        duration_ms: (prev - started_at).num_milliseconds(),
        trace_id,
        steps,
    };
    if json {
        output::json(&timeline)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "saga {} ({}), trace {}",
        timeline.saga_id,
        timeline.saga,
        timeline.trace_id.as_deref().unwrap_or("-")
    );
    let rows: Vec<Vec<String>> = timeline
        .steps
        .iter()
        .map(|s| {
            vec![
                s.time.format("%H:%M:%S%.3f").to_string(),
                format!("+{}ms", s.latency_ms),
                s.actor.clone(),
                s.event.to_owned(),
                match (s.kind, s.transition) {
                    (_, "duplicate") => "duplicate".to_owned(),
                    (k, "moved") => k.to_owned(),
                    (k, t) => format!("{k} ({t})"),
                },
                s.detail.clone(),
            ]
        })
        .collect();
    output::table(
        &["TIME", "STEP LATENCY", "ACTOR", "EVENT", "KIND", "DETAIL"],
        &rows,
    );
    let state_line = match (&timeline.state, &timeline.waits_on) {
        (Some(s), None) => format!("state: {s} (terminal) after {}ms", timeline.duration_ms),
        (Some(s), Some(w)) => format!(
            "state: {s}{} — waiting {}ms on {} for {}",
            if timeline.compensating {
                " (compensating)"
            } else {
                ""
            },
            w.waiting_ms,
            w.actor,
            w.events.join(" | ")
        ),
        (None, _) => "state: unknown (no event started this saga)".to_owned(),
    };
    println!("{state_line}");
    Ok(ExitCode::SUCCESS)
}
