//! The saga table is the one source of which events each actor consumes:
//! every registered actor's step loops are given exactly the events the
//! table gives it (their consumer filters), refuse every other event, and
//! react to each event the table does give them. Each event is the example
//! of its JSON schema (`schemas/json/evt.*.json`), handed to the loop on a
//! fresh SQLite database.

use falcon_kernel::signing::KeyRing;
use std::path::PathBuf;

use falcon_nats::dlq::Origin;
use falcon_nats::{Delivery, Disposition};
use falcon_runtime::registry::REGISTRY;
use falcon_runtime::Settings;
use falcon_sagas::definition::actor_of_trigger;
use falcon_sagas::Actor;
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::EventType;

/// The example envelope of `ty`'s JSON schema, as published.
fn example(ty: EventType) -> (String, Vec<u8>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/json")
        .join(format!("evt.{}.json", ty.short()));
    let text = std::fs::read_to_string(&path).expect("the event's schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let envelope = schema["examples"][0].clone();
    let event = falcon_schemas::Event::decode(&serde_json::to_vec(&envelope).expect("bytes"))
        .expect("the example is a valid event");
    (
        event.nats_subject(),
        serde_json::to_vec(&envelope).expect("bytes"),
    )
}

fn delivery(consumer: &str, subject: String, payload: Vec<u8>, seq: u64) -> Delivery {
    Delivery::detached(
        &Origin {
            subject,
            stream: STREAM_EVT.into(),
            stream_seq: seq,
            consumer: consumer.into(),
            delivered: 1,
            msg_id: Some(format!("test-{seq}")),
            traceparent: None,
        },
        payload.into(),
    )
}

const REFUSED: &str = "gives";
const RECON_REFUSED: &str = "folds no";

#[tokio::test]
async fn each_actor_reacts_to_the_events_the_saga_table_gives_it_and_no_other() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut settings = Settings::default();
    settings.payment.database_url =
        format!("sqlite://{}/payment.db?mode=rwc", dir.path().display());
    settings.risk.database_url = format!("sqlite://{}/risk.db?mode=rwc", dir.path().display());
    settings.wallet.database_url = format!("sqlite://{}/wallet.db?mode=rwc", dir.path().display());
    settings.recon.database_url = format!("sqlite://{}/recon.db?mode=rwc", dir.path().display());
    let mut seq = 0;
    for entry in REGISTRY {
        let actor = entry.actor();
        let db = falcon_runtime::stores::open(entry, &settings)
            .await
            .expect("database");
        let parts = entry.parts(&settings, &db).expect("parts");
        let steps: Vec<_> = parts
            .loops
            .iter()
            .filter(|l| l.read_model().is_none())
            .collect();
        assert!(!steps.is_empty(), "{actor} has a step loop");
        for l in &steps {
            let consumer = l
                .consumers()
                .iter()
                .find(|c| c.stream == STREAM_EVT)
                .expect("an event consumer");
            for ty in EventType::ALL.iter().copied() {
                // The reconciliation actor takes no saga step: it is given
                // the events it folds its facts from.
                let given = if actor == Actor::Recon {
                    falcon_recon::handler::EVENTS.contains(&ty)
                } else {
                    actor_of_trigger(ty) == Some(actor)
                };
                // Partition p of the filter the saga table gives.
                let filter = match consumer.partition {
                    Some(p) => format!("{}.{p}", ty.filter()),
                    None => ty.filter(),
                };
                assert_eq!(
                    consumer.filter_subjects.contains(&filter),
                    given,
                    "{actor}'s filter and the saga table disagree on {ty:?}"
                );
                seq += 1;
                let (subject, payload) = example(ty);
                let d = delivery(&consumer.name, subject, payload, seq);
                let disposition = l
                    .run_batch(
                        std::slice::from_ref(&d),
                        settings.consumer.retry(),
                        &KeyRing::open(),
                    )
                    .await
                    .remove(0);
                let refused = matches!(&disposition, Disposition::Term(why) if why.contains(REFUSED) || why.contains(RECON_REFUSED));
                assert_eq!(
                    refused,
                    !given,
                    "{actor} ({}) on {ty:?}: {disposition:?}",
                    l.label()
                );
            }
        }
    }
}
