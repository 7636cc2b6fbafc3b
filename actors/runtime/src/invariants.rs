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
//! (5).
//!
//! With `settled = false` (a system under load), sagas in flight and an
//! outbox backlog are counted, not reported as violations.

use falcon_kernel::store::{inbox, outbox};
use falcon_kernel::verify::{cross_check, Counts, Facts, Violation};
use falcon_kernel::Error;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::registry::REGISTRY;
use crate::settings::Settings;
use crate::stores::Stores;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub counts: Counts,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
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
        cross_check(&mut facts);
    }
    report.violations.extend(facts.violations);
    report.counts = facts.counts;
    Ok(report)
}

pub async fn check_streams(
    stores: &Stores,
    settings: &Settings,
    js: &async_nats::jetstream::Context,
    report: &mut Report,
) -> Result<(), Error> {
    use std::collections::HashSet;

    use falcon_nats::read::{RangeReader, Start};
    use falcon_schemas::subject::HEADER_MSG_ID;

    let dead: HashSet<(String, u64)> = falcon_nats::dlq::list(js, None)
        .await?
        .into_iter()
        .map(|l| (l.origin.consumer, l.origin.stream_seq))
        .collect();
    report.counts.dlq_depth = Some(dead.len() as u64);
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
            let seen: HashSet<String> = inbox::Entity::find()
                .filter(
                    inbox::Column::Consumer.eq(falcon_nats::topology::declared_name(&spec.name)),
                )
                .all(db)
                .await
                .map_err(Error::database(actor.as_str()))?
                .into_iter()
                .map(|r| r.msg_id)
                .collect();
            let mut reader = RangeReader::open(
                js,
                spec.stream,
                spec.filter_subjects.clone(),
                Start::All,
                Some(floor),
            )
            .await?;
            loop {
                let page = reader.next_page(1024).await?;
                if page.is_empty() {
                    break;
                }
                for m in page {
                    let msg_id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HEADER_MSG_ID))
                        .map(|v| v.as_str());
                    let key = falcon_nats::consumer::inbox_key(msg_id, spec.stream, m.stream_seq);
                    if !seen.contains(&key) && !dead.contains(&(spec.name.clone(), m.stream_seq)) {
                        report.violate(
                            5,
                            "acked_without_effect",
                            format!(
                                "{} acked {} #{} ({key}) but has no record of processing it",
                                spec.name, m.subject, m.stream_seq
                            ),
                        );
                    }
                }
            }
            reader.close().await;
        }
    }
    Ok(())
}
