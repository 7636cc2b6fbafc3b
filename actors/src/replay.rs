//! Replay: re-delivering a stream range to one actor, and rebuilding the
//! saga view from FALCON_EVT alone.
//!
//! A replay reads the range through an ephemeral consumer and hands it,
//! page by page, to the actor's own step in its own transactions, with the
//! original messages' inbox keys: what the actor had processed is a no-op,
//! what it had not is applied once. Events it produces are written to its
//! outbox and published at the end.

use std::time::Duration;

use async_nats::jetstream;
use falcon_nats::dlq::Origin;
use falcon_nats::read::{RangeReader, Start, Stored};
use falcon_nats::{ConsumerSpec, Delivery, Disposition};
use falcon_sagas::Actor;
use falcon_schemas::subject::{HEADER_MSG_ID, HEADER_TRACEPARENT};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::batch::{run_batch, Handler};
use crate::payment::view::{self, saga_view, SagaView};
use crate::relay::{drain, Poke, RelayArgs};
use crate::runtime::{open_store, payment_handler, risk_handler};
use crate::settings::Settings;
use crate::store::inbox;
use crate::{wallet, Error};

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

fn db_err(e: sea_orm::DbErr) -> Error {
    Error::Database {
        actor: "replay",
        detail: e.to_string(),
    }
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
    retry: crate::settings::Retry,
}

/// Feeds a range to one consumer's handler, page by page.
async fn feed<H: Handler>(handler: &H, range: &Range<'_>) -> Result<Report, Error> {
    let Range {
        js,
        spec,
        start,
        to_seq,
        batch_max,
        retry: nak,
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
            .map_err(db_err)?;
        let dispositions = run_batch(handler, H::ACTOR.as_str(), &deliveries, nak).await;
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
/// a running relay's sweep (both publishing is harmless).
pub(crate) async fn publish_outbox(
    settings: &Settings,
    js: &jetstream::Context,
    actor: Actor,
    db: DatabaseConnection,
) -> Result<(), Error> {
    let relay = RelayArgs {
        actor: actor.as_str(),
        db,
        js: js.clone(),
        batch_max: settings.relay.batch_max,
        interval: Duration::from_millis(settings.relay.interval_ms),
        poke: Poke::new(String::new()),
    };
    drain(&relay).await.map_err(db_err)?;
    Ok(())
}

/// Re-delivers `stream`'s range (from `start`, up to `to_seq`) to `actor`
/// through the consumer it reads that stream with.
pub async fn redeliver(
    settings: &Settings,
    js: &jetstream::Context,
    actor: Actor,
    stream: &str,
    start: Start,
    to_seq: Option<u64>,
) -> Result<Report, Error> {
    let nak = settings.consumer.retry();
    let batch_max = settings.consumer.batch_max;
    let specs = crate::runtime::consumer_specs(settings, &[actor]);
    let spec = specs
        .iter()
        .find(|s| s.stream == stream && s.name != view::CONSUMER)
        .ok_or_else(|| Error::Config(format!("{actor} does not consume {stream}")))?;
    let db = open_store(actor, settings).await?;
    let range = Range {
        js,
        spec,
        start,
        to_seq,
        batch_max,
        retry: nak,
    };
    let report = match actor {
        Actor::Payment => feed(&payment_handler(settings, db.clone()), &range).await?,
        Actor::Risk => feed(&risk_handler(settings, db.clone())?, &range).await?,
        Actor::Wallet => feed(&wallet::Wallet::new(db.clone()), &range).await?,
    };
    publish_outbox(settings, js, actor, db).await?;
    Ok(report)
}

/// The read models `--rebuild` knows.
pub const READ_MODELS: [&str; 1] = ["saga-view"];

/// Deletes the saga view and folds all of FALCON_EVT into it again.
/// Refuses while a process is consuming the view live, unless `force`.
pub async fn rebuild_saga_view(
    settings: &Settings,
    js: &jetstream::Context,
    force: bool,
) -> Result<(Report, u64), Error> {
    let spec = SagaView::consumers(&settings.consumer)
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config("saga view has no consumer".into()))?;
    if !force {
        let stream = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
        if let Ok(info) = stream.consumer_info(&spec.name).await {
            if info.num_waiting > 0 {
                return Err(Error::Config(format!(
                    "{} is being consumed live ({} pull requests waiting): stop `falcon run` for the payment actor first, or use --force",
                    spec.name, info.num_waiting
                )));
            }
        }
    }
    let db = open_store(Actor::Payment, settings).await?;
    saga_view::Entity::delete_many()
        .exec(&db)
        .await
        .map_err(db_err)?;
    inbox::Entity::delete_many()
        .filter(inbox::Column::Consumer.eq(spec.name.as_str()))
        .exec(&db)
        .await
        .map_err(db_err)?;
    let range = Range {
        js,
        spec: &spec,
        start: Start::All,
        to_seq: None,
        batch_max: settings.consumer.batch_max,
        retry: settings.consumer.retry(),
    };
    let report = feed(&SagaView::new(db.clone()), &range).await?;
    let sagas = saga_view::Entity::find().count(&db).await.map_err(db_err)?;
    Ok((report, sagas))
}
