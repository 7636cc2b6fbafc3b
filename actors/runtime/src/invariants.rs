//! The money invariants of DESIGN.md, checked across the actors' databases.
//!
//! Each registered actor checks its own records (`ActorDef::verify`): the
//! wallet that its ledger is double-entry and no available balance is
//! negative (invariants 1, 2), the payment actor that every saga reaches
//! one terminal state (3). What one actor's records must agree with in
//! another's — a hold committed or released, never both, never neither
//! once its saga is terminal (4), money moved at most once per payment and
//! refund (3) — is checked over the facts both returned
//! ([`falcon_kernel::verify::cross_check`]). Every actor's outbox must be
//! published, and every message its consumers acked must have its inbox row
//! (5) while the row is within `retention.inbox_keep_s` (older rows are
//! pruned: an older message is caught by its business key instead).
//!
//! With `settled = false` (a system under load), sagas in flight and an
//! outbox backlog are counted, not reported as violations.
//!
//! Memory stays bounded whatever the tables and streams hold: the checks
//! are SQL aggregates and pages read in key order (see
//! [`falcon_kernel::verify`]), and a stream is read a page at a time with
//! the inbox asked about each page's messages by key. A report lists at
//! most [`LISTED_PER_KIND_MAX`] violations of each kind and counts the
//! rest ([`Report::unlisted`]).

use std::collections::{BTreeMap, HashSet};

use falcon_kernel::store::bulk::padded_chunks;
use falcon_kernel::store::{inbox, outbox};
use falcon_kernel::verify::{cross_check, Counts, Facts, Violation, LISTED_PER_KIND_MAX};
use falcon_kernel::Error;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
};
use serde::Serialize;

use crate::registry::REGISTRY;
use crate::settings::Settings;
use crate::stores::Stores;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The violations listed: at most [`LISTED_PER_KIND_MAX`] of a kind.
    pub violations: Vec<Violation>,
    pub counts: Counts,
    /// Violations found beyond those listed, by code (absent from the JSON
    /// when none were).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unlisted: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every violation found, listed or not.
    pub fn found(&self) -> u64 {
        self.violations.len() as u64 + self.unlisted.values().sum::<u64>()
    }

    fn violate(&mut self, invariant: u8, code: &'static str, detail: String) {
        self.violations.push(Violation {
            invariant,
            code,
            detail,
        });
    }
}

/// Checks every invariant the given stores allow; the checks across actors
/// run only when every registered actor's database is open.
pub async fn check(stores: &Stores, settled: bool) -> Result<Report, DbErr> {
    let mut report = Report::default();
    let mut facts = Facts::default();
    let mut all = true;
    for entry in REGISTRY {
        let Some(db) = stores.get(entry.actor()) else {
            all = false;
            continue;
        };
        let name = entry.actor().as_str();
        let aside = outbox::Entity::find()
            .filter(outbox::Column::SetAside.is_not_null())
            .count(db)
            .await?;
        if aside > 0 {
            report.violate(
                5,
                "outbox_set_aside",
                format!("{name}: {aside} events can never be published (too large or unsignable; see the outbox's set_aside)"),
            );
        }
        let backlog = outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .filter(outbox::Column::SetAside.is_null())
            .count(db)
            .await?;
        facts.counts.outbox_backlog.insert(name.to_owned(), backlog);
        if settled && backlog > 0 {
            report.violate(
                5,
                "outbox_unpublished",
                format!("{name}: {backlog} events not published"),
            );
        }
        facts.merge(entry.verify(db, settled).await?);
    }
    if all {
        cross_check(&mut facts).await?;
    }
    report.violations.extend(facts.violations);
    for (code, n) in facts.unlisted {
        *report.unlisted.entry(code).or_default() += n;
    }
    report.counts = facts.counts;
    Ok(report)
}

pub async fn check_streams(
    stores: &Stores,
    settings: &Settings,
    js: &async_nats::jetstream::Context,
    report: &mut Report,
) -> Result<(), Error> {
    use falcon_nats::read::{RangeReader, Start};
    use falcon_schemas::subject::HEADER_MSG_ID;

    // Messages stored before this may have had their inbox rows pruned
    // (with a minute of margin for the time between storing and
    // processing); none when rows are kept for ever. The pruners go on
    // while this runs, and reading every consumer of a long stream takes
    // minutes: the horizon is taken afresh for each page, just before its
    // rows are looked up.
    let keep_s = settings.retention.inbox_keep_s;
    let pruned_before = || {
        i64::try_from(keep_s)
            .ok()
            .filter(|_| keep_s > 0)
            .and_then(|s| chrono::Duration::try_seconds(s.saturating_sub(60)))
            .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
    };

    let dead: HashSet<(String, u64)> = falcon_nats::dlq::list(js, None)
        .await?
        .into_iter()
        .map(|l| (l.origin.consumer, l.origin.stream_seq))
        .collect();
    report.counts.dlq_depth = Some(dead.len() as u64);
    let mut unprocessed = 0;
    for (actor, db) in stores.each() {
        for spec in crate::runtime::consumer_specs(settings, &[actor]) {
            let Ok(stream) = js.get_stream(spec.stream).await else {
                continue;
            };
            let Ok(info) = stream.consumer_info(&spec.name).await else {
                continue;
            };
            let floor = info.ack_floor.stream_sequence;
            if floor == 0 {
                continue;
            }
            let consumer = falcon_nats::topology::declared_name(&spec.name);
            // From the pruning horizon on: what is older has no inbox row
            // to check (read whole, a long stream cost minutes).
            let start = pruned_before().map_or(Start::All, Start::Time);
            let mut reader = RangeReader::open(
                js,
                spec.stream,
                spec.filter_subjects.clone(),
                start,
                Some(floor),
            )
            .await?;
            loop {
                let page = reader.next_page(1024).await?;
                if page.is_empty() {
                    break;
                }
                // Only messages whose inbox rows are still kept.
                let horizon = pruned_before();
                let page: Vec<_> = page
                    .into_iter()
                    .filter(|m| horizon.is_none_or(|t| m.published.is_none_or(|p| p >= t)))
                    .collect();
                let keys: Vec<String> = page
                    .iter()
                    .map(|m| {
                        let msg_id = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(HEADER_MSG_ID))
                            .map(|v| v.as_str());
                        falcon_nats::consumer::inbox_key(msg_id, spec.stream, m.stream_seq)
                    })
                    .collect();
                let seen = processed(db, consumer, &keys)
                    .await
                    .map_err(Error::database(actor.as_str()))?;
                for (m, key) in page.iter().zip(&keys) {
                    if seen.contains(key) || dead.contains(&(spec.name.clone(), m.stream_seq)) {
                        continue;
                    }
                    if unprocessed < LISTED_PER_KIND_MAX {
                        report.violate(
                            5,
                            "acked_without_effect",
                            format!(
                                "{} acked {} #{} ({key}) but has no record of processing it",
                                spec.name, m.subject, m.stream_seq
                            ),
                        );
                    } else {
                        *report.unlisted.entry("acked_without_effect").or_default() += 1;
                    }
                    unprocessed += 1;
                }
            }
            reader.close().await;
        }
    }
    Ok(())
}

/// Which of `keys` (inbox keys) the inbox of `consumer` records.
async fn processed(
    db: &DatabaseConnection,
    consumer: &str,
    keys: &[String],
) -> Result<HashSet<String>, DbErr> {
    let mut seen = HashSet::with_capacity(keys.len());
    for chunk in padded_chunks(keys) {
        let found: Vec<String> = inbox::Entity::find()
            .select_only()
            .column(inbox::Column::MsgId)
            .filter(inbox::Column::Consumer.eq(consumer))
            .filter(inbox::Column::MsgId.is_in(chunk))
            .into_tuple()
            .all(db)
            .await?;
        seen.extend(found);
    }
    Ok(seen)
}
