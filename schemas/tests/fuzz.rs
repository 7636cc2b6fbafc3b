//! Fuzzing the decoders with proptest: whatever bytes arrive on a command or
//! event subject, parsing returns a value or a refusal, never a panic, and a
//! refusal is bounded. A short run here (the suite's); a long one with
//! `PROPTEST_CASES=1000000 cargo test -p falcon-schemas --test fuzz --release`.

use falcon_schemas::{Command, CommandKind, Event, ParseError};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A refusal names at most a bounded prefix of what was sent.
const REFUSAL_MAX: usize = 512;

/// JSON values shaped like commands and events: the right field names with
/// any values, and any other fields.
fn fieldish() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
        "[0-9]{0,30}(\\.[0-9]{0,30})?".prop_map(Value::String),
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?".prop_map(Value::String),
        "[A-Za-z0-9_-]{0,70}".prop_map(Value::String),
        "[A-Z]{3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let names = prop::sample::select(vec![
            "payment_id",
            "refund_id",
            "wallet_id",
            "from_wallet",
            "to_wallet",
            "amount",
            "currency",
            "owner",
            "reference",
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "sagaid",
            "causationid",
            "traceparent",
            "data",
            "principal",
            "falconsig",
            "settlement_id",
            "score",
            "reason",
            "message",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(names.prop_map(str::to_owned), inner, 0..10)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(CommandKind::ALL.to_vec()).prop_map(|k| k.subject("alice")),
        prop::sample::select(CommandKind::ALL.to_vec()).prop_map(|k| k
            .subject("alice")
            .rsplit_once('.')
            .map(|(s, _)| s.to_owned())
            .unwrap_or_default()),
        "falcon\\.cmd\\.[a-z.*>]{0,30}",
        ".{0,40}",
    ]
}

fn check_command(subject: &str, body: &[u8]) {
    match Command::parse(subject, body) {
        Ok(cmd) => {
            // What parses re-encodes and parses to the same command.
            let again = Command::parse(&cmd.subject(), &cmd.to_bytes()).expect("own output parses");
            assert_eq!(again, cmd);
            assert!(cmd.key().len() <= 64);
        }
        Err(ParseError::Rejected(r)) => {
            assert!(
                r.error.message.len() <= REFUSAL_MAX,
                "{} bytes",
                r.error.message.len()
            );
            assert!(r.key.as_ref().is_none_or(|k| k.len() <= 64));
        }
        Err(ParseError::Unparseable(_)) => {}
    }
}

proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        // 2,000 in the suite; PROPTEST_CASES for a long run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        ..Default::default()
    })]

    #[test]
    fn commands_from_arbitrary_bytes(subject in subject(), body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_command(&subject, &body);
    }

    #[test]
    fn commands_from_command_shaped_json(subject in subject(), body in fieldish()) {
        check_command(&subject, &serde_json::to_vec(&body).expect("JSON"));
    }

    #[test]
    fn events_from_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Event::decode(&body);
    }

    #[test]
    fn events_from_event_shaped_json(body in fieldish()) {
        if let Ok(e) = Event::decode(&serde_json::to_vec(&body).expect("JSON")) {
            let again = Event::decode(&e.encode()).expect("own output decodes");
            prop_assert_eq!(again, e);
        }
    }
}
