//! Replay: re-delivering a stream range to one actor, and rebuilding the
//! saga view from FALCON_EVT alone.
//!
//! A replay reads the range through an ephemeral consumer and hands it,
//! page by page, to the actor's own step in its own transactions, with the
//! original messages' inbox keys: what the actor had processed is a no-op,
//! what it had not is applied once. Events it produces are written to its
//! outbox and published at the end.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use falcon_kernel::actor::Loop;
use falcon_kernel::relay::{drain, Poke, RelayArgs};
use falcon_kernel::settings::Retry;
use falcon_kernel::signing::KeyRing;
use falcon_kernel::store::inbox;
use falcon_kernel::Error;
use falcon_nats::dlq::Origin;
use falcon_nats::read::{RangeReader, Start, Stored};
use falcon_nats::{ConsumerSpec, Delivery, Disposition};
use falcon_sagas::Actor;
use falcon_schemas::subject::{HEADER_MSG_ID, HEADER_TRACEPARENT};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::registry::{self, REGISTRY};
use crate::settings::Settings;
use crate::stores;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Messages read from the range.
    pub messages: u64,
    /// Applied now (not processed before).
    pub applied: u64,
    /// Already processed before: nothing done again.
    pub duplicates: u64,
    /// Failed again: (stream sequence, error).
    pub failed: Vec<(u64, String)>,
    /// First and last stream sequence read.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

fn detached(stored: &Stored, stream: &str, consumer: &str) -> Delivery {
    let header = |n: &str| {
        stored
            .headers
            .as_ref()
            .and_then(|h| h.get(n))
            .map(|v| v.as_str().to_owned())
    };
    let origin = Origin {
        subject: stored.subject.clone(),
        stream: stream.to_owned(),
        stream_seq: stored.stream_seq,
        consumer: consumer.to_owned(),
        delivered: 1,
        msg_id: header(HEADER_MSG_ID),
        traceparent: header(HEADER_TRACEPARENT),
    };
    Delivery::detached(&origin, stored.payload.clone())
}

/// A stream range read through one consumer's filters.
struct Range<'a> {
    js: &'a jetstream::Context,
    spec: &'a ConsumerSpec,
    start: Start,
    to_seq: Option<u64>,
    batch_max: usize,
    retry: Retry,
    /// Every replayed event's signature is checked as a delivery's is.
    ring: &'a KeyRing,
}

/// Feeds a range to one consumer's handler, page by page.
async fn feed(handler: &dyn Loop, range: &Range<'_>) -> Result<Report, Error> {
    let Range {
        js,
        spec,
        start,
        to_seq,
        batch_max,
        retry: nak,
        ring,
    } = *range;
    let mut reader =
        RangeReader::open(js, spec.stream, spec.filter_subjects.clone(), start, to_seq).await?;
    let mut report = Report::default();
    loop {
        let page = reader.next_page(batch_max).await?;
        if page.is_empty() {
            break;
        }
        let deliveries: Vec<Delivery> = page
            .iter()
            .map(|s| detached(s, spec.stream, &spec.name))
            .collect();
        let keys: Vec<String> = deliveries.iter().map(Delivery::inbox_key).collect();
        let seen = inbox::Entity::find()
            .filter(inbox::Column::Consumer.eq(spec.name.as_str()))
            .filter(inbox::Column::MsgId.is_in(keys))
            .count(handler.db())
            .await
            .map_err(Error::database(handler.actor().as_str()))?;
        let dispositions = handler.run_batch(&deliveries, nak, ring).await;
        let mut acked = 0;
        for (d, disp) in deliveries.iter().zip(dispositions) {
            match disp {
                Disposition::Ack => acked += 1,
                Disposition::Nak { error, .. } | Disposition::Term(error) => {
                    report.failed.push((d.stream_seq, error))
                }
            }
        }
        report.messages += deliveries.len() as u64;
        report.duplicates += seen;
        report.applied += acked - seen.min(acked);
        report.first_seq = report.first_seq.or(page.first().map(|s| s.stream_seq));
        report.last_seq = page.last().map(|s| s.stream_seq).or(report.last_seq);
    }
    reader.close().await;
    Ok(report)
}

/// Publishes what a replay wrote to the outbox now, rather than waiting for
/// a running relay's sweep (both publishing is harmless). It connects as
/// `actor`: no other identity may publish its events.
pub(crate) async fn publish_outbox(
    settings: &Settings,
    actor: Actor,
    db: DatabaseConnection,
    ring: &KeyRing,
) -> Result<(), Error> {
    let client = settings
        .connect_as(actor.as_str(), &format!("falcon-replay-{actor}"))
        .await?;
    let relay = RelayArgs {
        actor,
        ring: Arc::new(ring.clone()),
        db,
        js: jetstream::new(client),
        batch_max: settings.relay.batch_max,
        interval: Duration::from_millis(settings.relay.interval_ms),
        poke: Poke::new(String::new()),
    };
    drain(&relay)
        .await
        .map_err(Error::database(actor.as_str()))?;
    Ok(())
}

/// Re-delivers `stream`'s range (from `start`, up to `to_seq`) to `actor`
/// through the consumer its steps read that stream with.
pub async fn redeliver(
    settings: &Settings,
    js: &jetstream::Context,
    actor: Actor,
    stream: &str,
    start: Start,
    to_seq: Option<u64>,
) -> Result<Report, Error> {
    let entry = registry::find(actor)
        .ok_or_else(|| Error::Config(format!("{actor} is not a registered actor")))?;
    let ring = settings.key_ring().map_err(Error::Config)?;
    let db = stores::open(entry, settings).await?;
    let parts = entry.parts(settings, &db)?;
    let (handler, spec) = parts
        .loops
        .iter()
        .filter(|l| l.read_model().is_none())
        .find_map(|l| Some((l.clone(), over_partitions(&**l, stream)?)))
        .ok_or_else(|| Error::Config(format!("{actor} does not consume {stream}")))?;
    let range = Range {
        js,
        spec: &spec,
        start,
        to_seq,
        batch_max: settings.consumer.batch_max,
        retry: settings.consumer.retry(),
        ring: &ring,
    };
    let report = feed(&*handler, &range).await?;
    publish_outbox(settings, actor, db, &ring).await?;
    Ok(report)
}

/// A loop's consumer of `stream` over every partition, as a replay reads
/// it: one range in stream order, with the filters its actor declares (on
/// subjects as published, so it also reads what was stored before
/// partitioning), under the declared name its inbox rows carry.
fn over_partitions(l: &dyn Loop, stream: &str) -> Option<ConsumerSpec> {
    let first = l.consumers().iter().find(|s| s.stream == stream)?;
    let declared: Vec<String> = first
        .filter_subjects
        .iter()
        .map(|f| match first.partition {
            Some(p) => f
                .strip_suffix(&format!(".{p}"))
                .unwrap_or(f.as_str())
                .to_owned(),
            None => f.clone(),
        })
        .collect();
    Some(ConsumerSpec {
        name: falcon_nats::topology::declared_name(&first.name).to_owned(),
        filter_subjects: falcon_schemas::subject::stored_filters(&declared),
        partition: None,
        ..first.clone()
    })
}

/// The read models `--rebuild` knows, from the registry.
pub fn read_models() -> Vec<&'static str> {
    registry::read_models()
}

/// The loop that keeps read model `model`.
async fn read_model_loop(settings: &Settings, model: &str) -> Result<Arc<dyn Loop>, Error> {
    for entry in REGISTRY.iter().filter(|r| r.read_models().contains(&model)) {
        let db = stores::open(*entry, settings).await?;
        let parts = entry.parts(settings, &db)?;
        if let Some(l) = parts
            .loops
            .into_iter()
            .find(|l| l.read_model() == Some(model))
        {
            return Ok(l);
        }
    }
    Err(Error::Config(format!(
        "unknown read model {model:?}; one of {}",
        read_models().join(", ")
    )))
}

/// Deletes a read model and folds all of FALCON_EVT into it again; returns
/// the report and the rows it holds after. Refuses while a process is
/// consuming the model live, unless `force`.
pub async fn rebuild(
    settings: &Settings,
    js: &jetstream::Context,
    model: &str,
    force: bool,
) -> Result<(Report, u64), Error> {
    let handler = read_model_loop(settings, model).await?;
    let actor = handler.actor().as_str();
    let first = handler
        .consumers()
        .first()
        .ok_or_else(|| Error::Config(format!("{model} has no consumer")))?;
    let spec = over_partitions(&*handler, first.stream)
        .ok_or_else(|| Error::Config(format!("{model} has no consumer")))?;
    if !force {
        let stream = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| Error::Nats(falcon_nats::Error::topology("reading", spec.stream, e)))?;
        for durable in handler
            .consumers()
            .iter()
            .filter(|c| c.stream == spec.stream)
        {
            if let Ok(info) = stream.consumer_info(&durable.name).await {
                if info.num_waiting > 0 {
                    return Err(Error::Config(format!(
                        "{} is being consumed live ({} pull requests waiting): stop `falcon run` for the {actor} actor first, or use --force",
                        durable.name, info.num_waiting
                    )));
                }
            }
        }
    }
    let ring = settings.key_ring().map_err(Error::Config)?;
    handler.reset().await.map_err(Error::database(actor))?;
    // What the actor kept beyond the stream's retention first; the stream
    // then folds again what it still holds (a no-op for what was kept).
    let restored = handler.restore().await.map_err(Error::database(actor))?;
    if restored > 0 {
        tracing::info!(model, restored, "folded the kept history before the stream");
    }
    inbox::Entity::delete_many()
        .filter(inbox::Column::Consumer.eq(spec.name.as_str()))
        .exec(handler.db())
        .await
        .map_err(Error::database(actor))?;
    let range = Range {
        js,
        spec: &spec,
        start: Start::All,
        to_seq: None,
        batch_max: settings.consumer.batch_max,
        retry: settings.consumer.retry(),
        ring: &ring,
    };
    let report = feed(&*handler, &range).await?;
    let rows = handler.rows().await.map_err(Error::database(actor))?;
    Ok((report, rows))
}

/// Rebuilds the saga view (`falcon replay --rebuild saga-view`).
pub async fn rebuild_saga_view(
    settings: &Settings,
    js: &jetstream::Context,
    force: bool,
) -> Result<(Report, u64), Error> {
    rebuild(settings, js, falcon_payment::view::READ_MODEL, force).await
}
