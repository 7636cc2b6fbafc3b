//! Attacks: a real nats-server with `falcon auth init`'s permissions, the
//! actors in-process with their own identities, and clients that send what
//! they should not. Every case ends with nothing moved, money conserved and
//! the invariants holding, and the system still paying.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use common::{eventually, Backend, World, CLIENT, OTHER_CLIENT, PLAIN_CLIENT};
use falcon_kernel::signing::KeyRing;
use falcon_nats::dlq::{self, Origin};
use falcon_runtime::dlq::{replay, Replay};
use falcon_sagas::definition::actor_of_trigger;
use falcon_sagas::Actor;
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use falcon_schemas::{EventData, EventType, Reason};
use serde_json::Value;

backend_tests!(
    forged_events_of_every_type_move_nothing,
    consumers_and_streams_are_out_of_reach,
    only_owners_pay_and_only_the_treasury_deposits,
    bad_amounts_and_oversized_ids_are_refused,
    forged_dead_letters_are_not_redriven,
    unpublishable_events_are_set_aside,
    a_header_the_client_cannot_parse_is_dead_lettered,
);

/// How long a publish the broker should refuse is given to be acked.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// A connection as `name`. A request the broker refuses is never answered:
/// its requests give up after a second.
async fn attacker(w: &World, name: &str) -> Result<jetstream::Context> {
    let mut js = jetstream::new(w.settings.connect_as(name, "falcon-attacker").await?);
    js.set_timeout(Duration::from_secs(1));
    Ok(js)
}

/// Publishes and says whether JetStream stored it (acked).
async fn stored(js: &jetstream::Context, subject: &str, payload: Vec<u8>) -> bool {
    match js.publish(subject.to_owned(), Bytes::from(payload)).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// Publishes what the broker should refuse, and says whether it did: no
/// ack, and nothing on that subject in its stream (read as the operator).
async fn refused(
    w: &World,
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
) -> Result<bool> {
    let stream =
        w.js.get_stream(if subject.starts_with("falcon.cmd.") {
            STREAM_CMD
        } else {
            STREAM_EVT
        })
        .await?;
    let last = || async {
        stream
            .get_last_raw_message_by_subject(subject)
            .await
            .ok()
            .map(|m| m.sequence)
    };
    let before = last().await;
    let acked = match js.publish(subject.to_owned(), Bytes::from(payload)).await {
        Ok(ack) => matches!(tokio::time::timeout(REFUSAL_WAIT, ack).await, Ok(Ok(_))),
        Err(_) => false,
    };
    Ok(!acked && last().await == before)
}

async fn funded(w: &World) -> Result<()> {
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await
}

/// alice's and bob's balances, in minor units.
async fn balances(w: &World) -> Result<(i64, i64)> {
    Ok((
        w.balance("alice").await?.balance_minor,
        w.balance("bob").await?.balance_minor,
    ))
}

/// The system still pays, and the books hold.
async fn still_sound(w: &World, payment_id: &str) -> Result<()> {
    let end = w.pay(payment_id, "alice", "bob", "1.00", "USD").await?;
    ensure!(
        end.event_type() == EventType::PaymentCompleted,
        "a genuine payment after the attack did not complete: {end:?}"
    );
    w.assert_invariants().await?;
    Ok(())
}

/// An example envelope of `ty` (from its JSON schema), re-keyed to `key`
/// and aimed at this test's wallets: alice pays, bob is paid.
fn forged(ty: EventType, key: &str) -> Result<(String, Vec<u8>)> {
    let file = format!("evt.{}.json", ty.short());
    let (_, text) = falcon_schemas::schema::files()
        .iter()
        .find(|(name, _)| *name == file)
        .with_context(|| format!("no schema {file}"))?;
    let doc: Value = serde_json::from_str(text)?;
    let mut ex = doc["examples"][0].clone();
    let old_key = ex["subject"].as_str().unwrap_or_default().to_owned();
    let text = serde_json::to_string(&ex)?
        .replace(&format!("\"{old_key}\""), &format!("\"{key}\""))
        .replace("\"w_alice\"", "\"alice\"")
        .replace("\"w_bob\"", "\"bob\"");
    ex = serde_json::from_str(&text)?;
    ex["id"] = Value::String(format!("forged-{key}"));
    let event = falcon_schemas::Event::decode(&serde_json::to_vec(&ex)?)?;
    Ok((event.nats_subject(), serde_json::to_vec(&ex)?))
}

/// The actor that owns `ty` (it alone may publish it).
fn owner(ty: EventType) -> Actor {
    Actor::of_aggregate(ty.aggregate()).unwrap_or(Actor::Payment)
}

/// Some actor that does not own `ty`.
fn not_owner(ty: EventType) -> Actor {
    if owner(ty) == Actor::Risk {
        Actor::Wallet
    } else {
        Actor::Risk
    }
}

async fn forged_events_of_every_type_move_nothing(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let _rt = w.start().await?;
    funded(&w).await?;
    let before = balances(&w).await?;
    let client = attacker(&w, CLIENT).await?;
    let mut expected_letters = 0;
    for (n, &ty) in EventType::ALL.iter().enumerate() {
        // 1. A client, and another actor, are refused by the broker.
        let (subject, body) = forged(ty, &format!("fc{n}"))?;
        ensure!(
            refused(&w, &client, &subject, body.clone()).await?,
            "a client stored {subject}"
        );
        let other = attacker(&w, not_owner(ty).as_str()).await?;
        ensure!(
            refused(&w, &other, &subject, body).await?,
            "{} stored {subject}",
            not_owner(ty)
        );
        // 2. Past the broker (as the owning actor's identity, as if its
        //    permissions were wrong or its seed stolen, but not its key):
        //    unsigned, and signed with a key that is not the actor's.
        let own = attacker(&w, owner(ty).as_str()).await?;
        let (subject, body) = forged(ty, &format!("fu{n}"))?;
        ensure!(stored(&own, &subject, body).await, "{subject} not stored");
        let (subject, body) = forged(ty, &format!("fk{n}"))?;
        let wrong =
            KeyRing::from_keys([(owner(ty), vec![vec![7u8; 32]])]).map_err(anyhow::Error::msg)?;
        let signed = wrong
            .sign(owner(ty), &subject, &body)
            .map_err(anyhow::Error::msg)?;
        ensure!(stored(&own, &subject, signed).await, "{subject} not stored");
        if actor_of_trigger(ty).is_some() {
            expected_letters += 2;
        }
    }
    // Every forgery an actor's step would have taken is dead-lettered as
    // unauthenticated (the saga view refuses its copies too).
    let letters = eventually(|| async {
        let letters: Vec<_> = dlq::list(&w.js, None)
            .await?
            .into_iter()
            .filter(|l| !l.origin.consumer.starts_with("payment-view-"))
            .collect();
        Ok((letters.len() >= expected_letters).then_some(letters))
    })
    .await
    .context("the forged events were not all dead-lettered")?;
    for l in &letters {
        ensure!(
            l.error.starts_with("unauthenticated_event"),
            "{} dead-lettered for another reason: {}",
            l.origin.subject,
            l.error
        );
    }
    ensure!(balances(&w).await? == before, "a forged event moved money");
    still_sound(&w, "after-forgeries").await
}

async fn consumers_and_streams_are_out_of_reach(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let _rt = w.start().await?;
    funded(&w).await?;
    let evt_before =
        w.js.get_stream(STREAM_EVT)
            .await?
            .cached_info()
            .state
            .messages;
    let wallet_evt =
        w.js.get_stream(STREAM_EVT)
            .await?
            .consumer_info("wallet-evt-0")
            .await?
            .config
            .clone();
    // Every identity at once: a refused request waits out its timeout.
    let names = [
        CLIENT,
        OTHER_CLIENT,
        "treasury",
        "operator",
        "payment",
        "risk",
        "wallet",
        "provisioning",
    ];
    futures::future::try_join_all(names.into_iter().map(|name| {
        let w = &w;
        async move {
            let js = attacker(w, name).await?;
            let may_provision = name == "provisioning";
            let Ok(s) = js.get_stream(STREAM_EVT).await else {
                return Ok(()); // it may not even read the stream's info
            };
            ensure!(s.purge().await.is_err(), "{name} purged FALCON_EVT");
            ensure!(
                js.delete_stream(STREAM_EVT).await.is_err(),
                "{name} deleted FALCON_EVT"
            );
            if !may_provision {
                // Provisioning is the administrator of the topology: it alone
                // may change a stream (`falcon streams apply` only ever sets
                // the validated configuration).
                let mut short = s.cached_info().config.clone();
                short.max_age = Duration::from_secs(1);
                short.duplicate_window = Duration::from_secs(1);
                ensure!(
                    js.update_stream(&short).await.is_err(),
                    "{name} shortened FALCON_EVT's retention"
                );
                ensure!(
                    s.delete_consumer("wallet-evt-0").await.is_err(),
                    "{name} deleted wallet-evt-0"
                );
                let hijack = s
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some("wallet-evt-0".into()),
                        filter_subject: "falcon.evt.nothing".into(),
                        ..Default::default()
                    })
                    .await;
                ensure!(hijack.is_err(), "{name} redefined wallet-evt");
                if name != "wallet" {
                    let pulled = async {
                        let c: consumer::PullConsumer = s
                            .get_consumer("wallet-evt-0")
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        let mut batch = c
                            .fetch()
                            .max_messages(1)
                            .expires(REFUSAL_WAIT)
                            .messages()
                            .await?;
                        use futures::StreamExt;
                        Ok::<_, anyhow::Error>(batch.next().await.is_some())
                    };
                    ensure!(
                        !matches!(pulled.await, Ok(true)),
                        "{name} pulled from wallet-evt"
                    );
                }
            }
            let cmd = js.get_stream(STREAM_CMD).await;
            if let Ok(cmd) = cmd {
                ensure!(cmd.purge().await.is_err(), "{name} purged FALCON_CMD");
            }
            Ok::<_, anyhow::Error>(())
        }
    }))
    .await?;
    let mut evt = w.js.get_stream(STREAM_EVT).await?;
    let info = evt.info().await?.clone();
    ensure!(
        info.state.messages >= evt_before,
        "FALCON_EVT lost messages: {} -> {}",
        evt_before,
        info.state.messages
    );
    ensure!(info.config.deny_delete && info.config.deny_purge);
    ensure!(info.config.max_age > Duration::from_secs(3600));
    let after =
        w.js.get_stream(STREAM_EVT)
            .await?
            .consumer_info("wallet-evt-0")
            .await?
            .config
            .clone();
    ensure!(
        after.filter_subjects == wallet_evt.filter_subjects,
        "wallet-evt's filters changed"
    );
    still_sound(&w, "after-tampering").await
}

async fn only_owners_pay_and_only_the_treasury_deposits(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let _rt = w.start().await?;
    funded(&w).await?;
    let before = balances(&w).await?;
    let mallory = attacker(&w, OTHER_CLIENT).await?;
    let client = attacker(&w, CLIENT).await?;
    // A deposit from a client, on its own subject or the treasury's.
    let deposit =
        br#"{"wallet_id":"alice","amount":"1000000.00","currency":"USD","reference":"mint"}"#;
    for (js, subject) in [
        (&client, format!("falcon.cmd.wallet.deposit.{CLIENT}")),
        (&client, "falcon.cmd.wallet.deposit.treasury".to_owned()),
        (
            &mallory,
            format!("falcon.cmd.wallet.deposit.{OTHER_CLIENT}"),
        ),
    ] {
        ensure!(
            refused(&w, js, &subject, deposit.to_vec()).await?,
            "{subject} stored"
        );
    }
    // Impersonation: mallory on the client's subject.
    let pay = World::pay_body("m1", "alice", "mallory-w", "50.00", "USD");
    ensure!(
        refused(
            &w,
            &mallory,
            &format!("falcon.cmd.payment.create.{CLIENT}"),
            serde_json::to_vec(&pay)?
        )
        .await?,
        "mallory published as the client"
    );
    // A payment from a wallet mallory does not own: refused by the wallet.
    ensure!(
        stored(
            &mallory,
            &format!("falcon.cmd.wallet.open.{OTHER_CLIENT}"),
            br#"{"wallet_id":"mallory-w","owner":"m","currency":"USD"}"#.to_vec()
        )
        .await,
        "mallory may open her own wallet"
    );
    w.wait_event("falcon.evt.wallet.opened.mallory-w", |_| true)
        .await?;
    ensure!(
        stored(
            &mallory,
            &format!("falcon.cmd.payment.create.{OTHER_CLIENT}"),
            serde_json::to_vec(&pay)?
        )
        .await,
        "mallory may send a payment command"
    );
    let end = w.wait_terminal("m1").await?;
    match &end.data {
        EventData::PaymentFailed(f) => ensure!(f.reason == Reason::NotWalletOwner, "{f:?}"),
        other => anyhow::bail!("mallory's payment from alice ended {other:?}"),
    }
    // A refund of the client's payment asked for by mallory.
    w.pay("p1", "alice", "bob", "10.00", "USD").await?;
    ensure!(
        stored(
            &mallory,
            &format!("falcon.cmd.payment.refund.{OTHER_CLIENT}"),
            br#"{"payment_id":"p1","refund_id":"r-m"}"#.to_vec()
        )
        .await,
        "mallory may send a refund command"
    );
    let refund_end = w
        .wait_event("falcon.evt.payment.*.r-m", |e| {
            matches!(
                e.event_type(),
                EventType::PaymentRefunded | EventType::RefundFailed | EventType::PaymentRejected
            )
        })
        .await?;
    ensure!(
        refund_end.event_type() != EventType::PaymentRefunded,
        "mallory refunded the client's payment: {refund_end:?}"
    );
    let (alice, bob) = balances(&w).await?;
    ensure!(
        (alice, bob) == (before.0 - 1000, before.1 + 1000),
        "only the client's own payment moved money: {alice} {bob}"
    );
    ensure!(w.balance("mallory-w").await?.balance_minor == 0);
    still_sound(&w, "after-impersonation").await
}

async fn bad_amounts_and_oversized_ids_are_refused(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let _rt = w.start().await?;
    funded(&w).await?;
    w.pay("p1", "alice", "bob", "10.00", "USD").await?;
    let before = balances(&w).await?;
    for (id, amount, reason) in [
        ("neg", "-7.00", Reason::AmountNotPositive),
        ("zero", "0", Reason::AmountNotPositive),
        ("huge", "99999999999999999999999", Reason::AmountTooLarge),
        ("scale", "1.001", Reason::AmountScaleExceedsCurrency),
    ] {
        w.command(
            "payment.create",
            World::pay_body(id, "alice", "bob", amount, "USD"),
        )
        .await?;
        let e = w
            .wait_event(&format!("falcon.evt.payment.rejected.{id}"), |_| true)
            .await?;
        match &e.data {
            EventData::PaymentRejected(r) => ensure!(r.reason == reason, "{amount}: {r:?}"),
            other => anyhow::bail!("{other:?}"),
        }
    }
    // An id of 100,000 characters: refused, keyed by its place in the
    // stream, and the refusal does not echo it.
    let long = "x".repeat(100_000);
    let sent = w
        .command(
            "payment.create",
            World::pay_body(&long, "alice", "bob", "1.00", "USD"),
        )
        .await?;
    let key = format!("unkeyed~{}", sent.stream_seq);
    let e = w
        .wait_event(&format!("falcon.evt.payment.rejected.{key}"), |_| true)
        .await?;
    match &e.data {
        EventData::PaymentRejected(r) => {
            ensure!(r.reason == Reason::InvalidId, "{r:?}");
            ensure!(
                r.message.len() < 300,
                "the refusal echoes {} bytes",
                r.message.len()
            );
        }
        other => anyhow::bail!("{other:?}"),
    }
    // Events genuinely signed by the payment actor's key (a compromised
    // actor) but against the wallet's records: a negative refund, a refund
    // larger than the payment, one between other wallets.
    let ring = KeyRing::load(w.keys.path()).map_err(anyhow::Error::msg)?;
    let payment = attacker(&w, "payment").await?;
    for (refund, from, to, amount) in [
        ("r-neg", "alice", "bob", "-7.00"),
        ("r-big", "alice", "bob", "500.00"),
        ("r-swap", "bob", "alice", "5.00"),
    ] {
        let (subject, body) = forged(EventType::RefundRequested, refund)?;
        let mut v: Value = serde_json::from_slice(&body)?;
        v["data"]["payment_id"] = "p1".into();
        v["data"]["from_wallet"] = from.into();
        v["data"]["to_wallet"] = to.into();
        v["data"]["amount"] = amount.into();
        v["data"]["principal"] = CLIENT.into();
        let signed = ring
            .sign(Actor::Payment, &subject, &serde_json::to_vec(&v)?)
            .map_err(anyhow::Error::msg)?;
        ensure!(
            stored(&payment, &subject, signed).await,
            "{subject} not stored"
        );
        // Either the wallet declines it or dead-letters it: never commits.
        let outcome = eventually(|| async {
            let declined = falcon_nats::read::read_filtered(
                &w.js,
                STREAM_EVT,
                &format!("falcon.evt.wallet.*.{refund}"),
                10,
            )
            .await?;
            if let Some(m) = declined.first() {
                return Ok(Some(m.subject.clone()));
            }
            let letters = dlq::list(&w.js, None).await?;
            Ok(letters
                .iter()
                .find(|l| {
                    l.origin.subject == subject && l.origin.consumer.starts_with("wallet-evt-")
                })
                .map(|l| l.error.clone()))
        })
        .await?;
        ensure!(
            !outcome.contains("refund_committed"),
            "the wallet committed {refund}: {outcome}"
        );
    }
    ensure!(balances(&w).await? == before, "a bad amount moved money");
    still_sound(&w, "after-bad-amounts").await
}

async fn forged_dead_letters_are_not_redriven(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w).await?;
    w.pay("p1", "alice", "bob", "10.00", "USD").await?;
    let before = balances(&w).await?;
    let ring = w.ring()?;
    let wallet = attacker(&w, "wallet").await?;
    // The deposit event's place in FALCON_EVT: genuine, but not something
    // wallet-evt reads.
    let deposited =
        falcon_nats::read::read_filtered(&w.js, STREAM_EVT, "falcon.evt.wallet.deposited.alice", 1)
            .await?
            .pop()
            .context("the deposit event")?;
    let (_, forged_body) = forged(EventType::PaymentCaptured, "px")?;
    let letters = [
        // A forged body pointing at a message wallet-evt does not read.
        (deposited.subject.clone(), deposited.stream_seq),
        // A forged body pointing at nothing.
        ("falcon.evt.payment.captured.px".to_owned(), 9_999_999),
    ];
    for (subject, seq) in &letters {
        let origin = Origin {
            subject: "falcon.evt.payment.captured.px".into(),
            stream: STREAM_EVT.into(),
            stream_seq: *seq,
            consumer: "wallet-evt-0".into(),
            delivered: 1,
            msg_id: Some(format!("forged-{seq}")),
            traceparent: None,
        };
        let _ = subject;
        dlq::dead_letter(&wallet, &origin, Bytes::from(forged_body.clone()), "forged").await?;
    }
    let found = eventually(|| async {
        let l = dlq::list(&w.js, None).await?;
        Ok((l.len() >= letters.len()).then_some(l))
    })
    .await?;
    drop(rt);
    for letter in &found {
        let outcome = replay(&w.settings, &w.js, letter, true, &ring).await?;
        ensure!(
            matches!(outcome, Replay::Refused { .. }),
            "a forged dead letter was re-driven: {outcome:?}"
        );
    }
    ensure!(
        balances(&w).await? == before,
        "a forged dead letter moved money"
    );
    let _rt = w.start().await?;
    still_sound(&w, "after-forged-letters").await
}

async fn unpublishable_events_are_set_aside(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let _rt = w.start().await?;
    w.open_wallet("small-1", "USD").await?;
    // FALCON_EVT refuses messages a little larger than a small wallet's
    // event: an open with the longest owner and id the contract allows is
    // refused by the server, for ever.
    let mut evt = w.js.get_stream(STREAM_EVT).await?;
    let small = evt
        .get_last_raw_message_by_subject(&format!(
            "falcon.evt.wallet.opened.small-1.{}",
            falcon_schemas::subject::partition_of("small-1", w.settings.consumer.partitions)
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let size = small.payload.len();
    let provisioning = attacker(&w, "provisioning").await?;
    let mut config = evt.info().await?.config.clone();
    // Headers count too (about 150 bytes); the big event is about 430
    // bytes larger than the small one.
    config.max_message_size = i32::try_from(size + 300)?;
    provisioning.update_stream(&config).await?;
    let big_id = "b".repeat(64);
    w.command(
        "wallet.open",
        serde_json::json!({"wallet_id": big_id, "owner": "o".repeat(200), "currency": "USD"}),
    )
    .await?;
    // The rest flows: an event written after it is published.
    w.open_wallet("small-2", "USD").await?;
    let stores = w.stores().await?;
    let wallet_db = stores.get(Actor::Wallet).context("the wallet database")?;
    let aside = eventually(|| async {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let rows = falcon_kernel::store::outbox::Entity::find()
            .filter(falcon_kernel::store::outbox::Column::SetAside.is_not_null())
            .all(wallet_db)
            .await?;
        Ok((!rows.is_empty()).then_some(rows))
    })
    .await
    .context("the oversized event was not set aside")?;
    ensure!(aside.len() == 1, "{aside:?}");
    ensure!(
        aside[0].subject == format!("falcon.evt.wallet.opened.{big_id}"),
        "{:?}",
        aside[0].subject
    );
    ensure!(
        aside[0]
            .set_aside
            .as_deref()
            .is_some_and(|w| w.contains("max_msg_size")),
        "{:?}",
        aside[0].set_aside
    );
    // `falcon verify` says so until an operator deals with it.
    let report = falcon_runtime::invariants::check(&stores, true).await?;
    ensure!(
        report
            .violations
            .iter()
            .any(|v| v.code == "outbox_set_aside"),
        "{:?}",
        report.violations
    );
    Ok(())
}

/// Publishes on `subject` with a raw header block, over the plain NATS
/// protocol as the password client (no client library would send it).
async fn publish_raw_headers(w: &World, subject: &str, headers: &[u8], body: &[u8]) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let password = std::fs::read_to_string(w.keys.path().join(format!("{PLAIN_CLIENT}.password")))?;
    let addr = w.settings.nats.url.trim_start_matches("nats://").to_owned();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    lines.next_line().await?.context("no INFO")?;
    let connect = serde_json::json!({
        "user": PLAIN_CLIENT, "pass": password.trim(), "headers": true,
        "verbose": false, "pedantic": false, "protocol": 1, "no_responders": true,
    });
    let mut frame = format!("CONNECT {connect}\r\n").into_bytes();
    frame.extend(
        format!(
            "HPUB {subject} {} {}\r\n",
            headers.len(),
            headers.len() + body.len()
        )
        .bytes(),
    );
    frame.extend_from_slice(headers);
    frame.extend_from_slice(body);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match lines.next_line().await? {
                Some(l) if l.starts_with("PONG") => return Ok::<_, anyhow::Error>(()),
                Some(l) if l.starts_with("-ERR") => anyhow::bail!("the server said {l}"),
                Some(_) => continue,
                None => anyhow::bail!("connection closed"),
            }
        }
    })
    .await;
    answer.context("no PONG")?
}

async fn a_header_the_client_cannot_parse_is_dead_lettered(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let _rt = w.start().await?;
    funded(&w).await?;
    w.open_wallet("plain-w", "USD").await?;
    let before = balances(&w).await?;
    let payment_connection = |closed: bool| {
        let monitor = w.nats.monitor_url();
        async move {
            let monitor = monitor.context("the test server has no monitoring port")?;
            let state = if closed { "closed" } else { "open" };
            let url = format!("{monitor}/connz?state={state}&limit=4096");
            let connz: Value = tokio::task::spawn_blocking(move || {
                ureq::get(&url).call()?.body_mut().read_json::<Value>()
            })
            .await??;
            Ok::<_, anyhow::Error>(
                connz["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["name"].as_str().is_some_and(|n| n.ends_with("-payment")))
                    .filter_map(|c| c["cid"].as_u64())
                    .collect::<Vec<u64>>(),
            )
        }
    };
    let open_before = payment_connection(false).await?;
    ensure!(
        open_before.len() == 1,
        "payment connections: {open_before:?}"
    );

    // Not UTF-8, a control character in a name, a line without `:`, a
    // version line that is not NATS/1.0: each is dead-lettered on its first
    // delivery, reason malformed_headers, and the actor's connection stays.
    let cases: [(&str, &[u8]); 4] = [
        (
            "hdr-utf8",
            b"NATS/1.0\r\nNats-Msg-Id: hdr-utf8\r\nX-Bad: \xff\xfe\x01\r\n\r\n",
        ),
        (
            "hdr-ctl",
            b"NATS/1.0\r\nNats-Msg-Id: hdr-ctl\r\nX\x01Bad: v\r\n\r\n",
        ),
        (
            "hdr-colon",
            b"NATS/1.0\r\nNats-Msg-Id: hdr-colon\r\nno colon\r\n\r\n",
        ),
        ("hdr-version", b"NATS/9\r\nNats-Msg-Id: hdr-version\r\n\r\n"),
    ];
    for (id, headers) in cases {
        let body = format!(
            r#"{{"payment_id":"{id}","from_wallet":"alice","to_wallet":"bob","amount":"5.00","currency":"USD"}}"#
        );
        publish_raw_headers(
            &w,
            &format!("falcon.cmd.payment.create.{PLAIN_CLIENT}"),
            headers,
            body.as_bytes(),
        )
        .await?;
        let letter = eventually(|| async {
            let letters = dlq::list(&w.js, None).await?;
            Ok(letters
                .into_iter()
                .find(|l| l.origin.consumer == "payment-cmd" && &l.payload[..] == body.as_bytes()))
        })
        .await
        .with_context(|| format!("{id}: the message with a bad header was not dead-lettered"))?;
        ensure!(
            letter.error.starts_with("malformed_headers"),
            "{id}: {letter:?}"
        );
        ensure!(
            letter.origin.delivered == 1,
            "{id}: redelivered: {letter:?}"
        );
    }
    ensure!(balances(&w).await? == before, "it moved money");
    ensure!(
        payment_connection(true).await?.is_empty(),
        "the payment actor's connection was closed"
    );
    ensure!(
        payment_connection(false).await? == open_before,
        "the payment actor reconnected"
    );
    still_sound(&w, "after-bad-header").await
}
