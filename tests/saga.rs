//! The payment saga end to end: real nats-server, real databases, the
//! actors in-process. Every test ends by checking the money invariants.
//!
//! One file of about 700 lines: each test is one scenario of the saga, and
//! they share the world and helpers of `common`; splitting it would only
//! scatter the scenarios.

mod common;

use anyhow::{ensure, Context, Result};
use common::{eventually, Backend, World};
use falcon_runtime::runtime::FaultPoint;
use falcon_sagas::Actor;
use falcon_schemas::subject::{dlq, saga_filter, STREAM_CMD, STREAM_DLQ, STREAM_EVT};
use falcon_schemas::{Event, EventData, EventType, Reason};

backend_tests!(
    happy_path,
    risk_rejection,
    insufficient_funds,
    capture_failure_releases_funds,
    duplicate_create_has_one_effect,
    concurrent_payments_drain_one_wallet,
    two_runtimes_share_the_work,
    refunds,
    invalid_commands_are_rejected_with_reasons,
    unparseable_body_is_dead_lettered,
    poison_message_does_not_fail_its_batch_mates,
    panicking_actors_are_restarted,
    exhausted_retries_are_dead_lettered,
);

async fn saga_events(w: &World, id: &str) -> Result<Vec<Event>> {
    let stored =
        falcon_nats::read::read_filtered(&w.js, STREAM_EVT, &saga_filter(id), 1000).await?;
    stored
        .iter()
        .map(|s| Ok(Event::decode(&s.payload)?))
        .collect()
}

fn types(events: &[Event]) -> Vec<EventType> {
    events.iter().map(Event::event_type).collect()
}

async fn funded(w: &World, amount: &str) -> Result<()> {
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", amount, "USD").await
}

async fn happy_path(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    let end = w.pay("p1", "alice", "bob", "12.50", "USD").await?;
    ensure!(end.event_type() == EventType::PaymentCompleted, "{end:?}");
    let events = saga_events(&w, "p1").await?;
    use EventType as E;
    assert_eq!(
        types(&events),
        [
            E::PaymentRequested,
            E::RiskApproved,
            E::FundsReserved,
            E::PaymentCaptured,
            E::TransferCommitted,
            E::PaymentCompleted
        ]
    );
    // One saga, one trace; each event caused by the one before.
    let trace = |e: &Event| {
        e.traceparent
            .as_deref()
            .and_then(falcon_nats::trace::TraceParent::parse)
            .map(|t| t.trace_id)
    };
    let first_trace = trace(&events[0]).context("traceparent on every event")?;
    for pair in events.windows(2) {
        assert_eq!(pair[1].causationid, pair[0].id, "causation chain");
        assert_eq!(trace(&pair[1]), Some(first_trace), "one trace per saga");
    }
    assert_eq!(w.balance("alice").await?.available, "87.50");
    assert_eq!(w.balance("bob").await?.balance, "12.50");
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn risk_rejection(b: Backend) -> Result<()> {
    let w = World::with(b, |s| {
        s.risk.blocked_wallets = vec!["mallory".into()];
        s.risk.velocity_count_max = 3;
        s.risk
            .velocity_sum_max
            .insert("USD".into(), "100.00".into());
    })
    .await?;
    let rt = w.start().await?;
    funded(&w, "50000.00").await?;
    w.open_wallet("mallory", "USD").await?;
    let over = w.pay("big", "alice", "bob", "10000.01", "USD").await?;
    let blocked = w.pay("blk", "alice", "mallory", "1.00", "USD").await?;
    for (e, rule) in [
        (&over, Reason::AmountLimitExceeded),
        (&blocked, Reason::WalletBlocked),
    ] {
        let EventData::PaymentFailed(f) = &e.data else {
            anyhow::bail!("expected failure: {e:?}")
        };
        assert_eq!((f.reason, f.compensated), (Reason::RiskRejected, false));
        let events = saga_events(&w, &e.sagaid).await?;
        let decision = events.iter().find_map(|e| match &e.data {
            EventData::RiskRejected(r) => Some(r.clone()),
            _ => None,
        });
        let decision = decision.context("risk.rejected in the saga")?;
        assert!(decision.risk_reasons.contains(&rule), "{decision:?}");
        assert!(!types(&events).contains(&EventType::FundsReserved));
    }
    assert_eq!(w.balance("alice").await?.available, "50000.00");
    // Velocity: approved payments from one wallet within the window are
    // counted and summed; rejected ones are not.
    w.open_wallet("carol", "USD").await?;
    w.deposit("carol", "1000.00", "USD").await?;
    assert_eq!(
        w.pay("v1", "carol", "bob", "60.00", "USD")
            .await?
            .event_type(),
        EventType::PaymentCompleted
    );
    let over_sum = w.pay("v2", "carol", "bob", "50.00", "USD").await?;
    assert!(
        matches!(&over_sum.data, EventData::PaymentFailed(f) if f.reason == Reason::RiskRejected)
    );
    assert_eq!(
        w.pay("v3", "carol", "bob", "30.00", "USD")
            .await?
            .event_type(),
        EventType::PaymentCompleted
    );
    assert_eq!(
        w.pay("v4", "carol", "bob", "1.00", "USD")
            .await?
            .event_type(),
        EventType::PaymentCompleted
    );
    let over_count = w.pay("v5", "carol", "bob", "1.00", "USD").await?;
    assert!(
        matches!(&over_count.data, EventData::PaymentFailed(f) if f.reason == Reason::RiskRejected)
    );
    for id in ["v2", "v5"] {
        let rejected = saga_events(&w, id)
            .await?
            .into_iter()
            .find_map(|e| match e.data {
                EventData::RiskRejected(r) => Some(r),
                _ => None,
            });
        assert_eq!(
            rejected.map(|r| r.risk_reasons),
            Some(vec![Reason::VelocityExceeded]),
            "{id}"
        );
    }
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn insufficient_funds(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "10.00").await?;
    let e = w.pay("p1", "alice", "bob", "10.01", "USD").await?;
    let EventData::PaymentFailed(f) = &e.data else {
        anyhow::bail!("expected failure: {e:?}")
    };
    assert_eq!(
        (f.reason, f.compensated),
        (Reason::InsufficientFunds, false)
    );
    let nowhere = w.pay("p2", "alice", "nobody", "1.00", "USD").await?;
    let EventData::PaymentFailed(f) = &nowhere.data else {
        anyhow::bail!("expected failure: {nowhere:?}")
    };
    assert_eq!(f.reason, Reason::WalletNotFound);
    let a = w.balance("alice").await?;
    assert_eq!((a.balance.as_str(), a.held.as_str()), ("10.00", "0.00"));
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn capture_failure_releases_funds(b: Backend) -> Result<()> {
    let w = World::with(b, |s| s.provider.decline_bps = 10_000).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    let e = w.pay("p1", "alice", "bob", "30.00", "USD").await?;
    let EventData::PaymentFailed(f) = &e.data else {
        anyhow::bail!("expected failure: {e:?}")
    };
    assert_eq!((f.reason, f.compensated), (Reason::CaptureDeclined, true));
    use EventType as E;
    assert_eq!(
        types(&saga_events(&w, "p1").await?),
        [
            E::PaymentRequested,
            E::RiskApproved,
            E::FundsReserved,
            E::PaymentCaptureFailed,
            E::FundsReleased,
            E::PaymentFailed
        ]
    );
    let a = w.balance("alice").await?;
    assert_eq!(
        (a.balance.as_str(), a.held.as_str(), a.available.as_str()),
        ("100.00", "0.00", "100.00")
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn duplicate_create_has_one_effect(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    let body = World::pay_body("p1", "alice", "bob", "25.00", "USD");
    let bytes = serde_json::to_vec(&body)?;
    let first = w
        .publish_raw(
            "falcon.cmd.payment.create.client",
            bytes.clone(),
            Some("client-1"),
        )
        .await?;
    let resend = w
        .publish_raw(
            "falcon.cmd.payment.create.client",
            bytes.clone(),
            Some("client-1"),
        )
        .await?;
    assert!(
        resend.duplicate && resend.stream_seq == first.stream_seq,
        "JetStream drops a same-id resend"
    );
    // Same business key, new message id: JetStream stores it, the payment actor must not act twice.
    w.publish_raw(
        "falcon.cmd.payment.create.client",
        bytes.clone(),
        Some("client-2"),
    )
    .await?;
    w.wait_terminal("p1").await?;
    w.publish_raw("falcon.cmd.payment.create.client", bytes, Some("client-3"))
        .await?;
    // Same key, other fields: refused. Commands are handled in order, so once
    // this rejection exists the resends before it have been handled too.
    let other = World::pay_body("p1", "alice", "bob", "26.00", "USD");
    w.command("payment.create", other).await?;
    w.wait_event("falcon.evt.payment.rejected.p1", |e| matches!(&e.data, EventData::PaymentRejected(r) if r.reason == Reason::IdempotencyKeyReused))
        .await?;
    let events = saga_events(&w, "p1").await?;
    let count = |t: EventType| events.iter().filter(|e| e.event_type() == t).count();
    assert_eq!(
        (
            count(EventType::PaymentRequested),
            count(EventType::TransferCommitted),
            count(EventType::PaymentCompleted)
        ),
        (1, 1, 1)
    );
    assert_eq!(w.balance("alice").await?.balance, "75.00", "debited once");
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

/// 200 payments of 7.00 race for 1000.00: exactly 142 can succeed.
async fn drain(w: &World) -> Result<()> {
    funded(w, "1000.00").await?;
    let bodies: Vec<_> = (0..200)
        .map(|i| World::pay_body(&format!("c{i}"), "alice", "bob", "7.00", "USD"))
        .collect();
    let ends = w.pay_many(&bodies).await?;
    let completed = ends
        .values()
        .filter(|e| e.event_type() == EventType::PaymentCompleted)
        .count();
    for e in ends.values() {
        if let EventData::PaymentFailed(f) = &e.data {
            assert_eq!(f.reason, Reason::InsufficientFunds, "{e:?}");
        }
    }
    assert_eq!(completed, 142);
    let a = w.balance("alice").await?;
    assert_eq!((a.balance.as_str(), a.held.as_str()), ("6.00", "0.00"));
    assert_eq!(w.balance("bob").await?.balance, "994.00");
    w.assert_invariants().await?;
    Ok(())
}

async fn concurrent_payments_drain_one_wallet(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    drain(&w).await?;
    rt.shutdown().await;
    Ok(())
}

async fn two_runtimes_share_the_work(b: Backend) -> Result<()> {
    let w = World::with(b, |s| s.consumer.batch_max = 16).await?;
    let (one, two) = (w.start().await?, w.start().await?);
    drain(&w).await?;
    let (a, b) = (
        one.stats().acked.load(std::sync::atomic::Ordering::Relaxed),
        two.stats().acked.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        a > 0 && b > 0,
        "both runtimes handled messages: {a} and {b}"
    );
    one.shutdown().await;
    two.shutdown().await;
    Ok(())
}

async fn refund(w: &World, payment: &str, refund: &str, amount: Option<&str>) -> Result<Event> {
    let mut body = serde_json::json!({"payment_id": payment, "refund_id": refund});
    if let Some(a) = amount {
        body["amount"] = a.into();
    }
    let msg_id = uuid::Uuid::now_v7().to_string();
    w.publish_raw(
        "falcon.cmd.payment.refund.client",
        serde_json::to_vec(&body)?,
        Some(&msg_id),
    )
    .await?;
    // A rejection of this very command, or the refund saga's end.
    w.wait_event(&format!("falcon.evt.payment.*.{refund}"), |e| {
        match e.event_type() {
            EventType::PaymentRejected => e.causationid == msg_id,
            t => matches!(t, EventType::PaymentRefunded | EventType::RefundFailed),
        }
    })
    .await
}

fn rejection_reason(e: &Event) -> Option<Reason> {
    match &e.data {
        EventData::PaymentRejected(r) => Some(r.reason),
        _ => None,
    }
}

async fn refunds(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    w.pay("p1", "alice", "bob", "40.00", "USD").await?;
    let r1 = refund(&w, "p1", "r1", Some("15.00")).await?;
    assert_eq!(r1.event_type(), EventType::PaymentRefunded, "{r1:?}");
    let too_much = refund(&w, "p1", "r2", Some("30.00")).await?;
    assert_eq!(
        rejection_reason(&too_much),
        Some(Reason::RefundExceedsPayment)
    );
    let reused = serde_json::json!({"payment_id": "p1", "refund_id": "r1", "amount": "16.00"});
    let msg_id = "reuse-r1";
    w.publish_raw(
        "falcon.cmd.payment.refund.client",
        serde_json::to_vec(&reused)?,
        Some(msg_id),
    )
    .await?;
    let reused = w
        .wait_event("falcon.evt.payment.rejected.r1", |e| {
            e.causationid == msg_id
        })
        .await?;
    assert_eq!(
        rejection_reason(&reused),
        Some(Reason::IdempotencyKeyReused)
    );
    let rest = refund(&w, "p1", "r3", None).await?;
    let EventData::PaymentRefunded(d) = &rest.data else {
        anyhow::bail!("expected refund: {rest:?}")
    };
    assert_eq!(d.amount.to_string(), "25.00");
    let nothing_left = refund(&w, "p1", "r4", None).await?;
    assert_eq!(
        rejection_reason(&nothing_left),
        Some(Reason::RefundExceedsPayment)
    );
    let unknown = refund(&w, "nope", "r5", None).await?;
    assert_eq!(rejection_reason(&unknown), Some(Reason::PaymentNotFound));
    w.pay("p2", "alice", "bob", "1000.00", "USD").await?;
    let failed = refund(&w, "p2", "r6", None).await?;
    assert_eq!(
        rejection_reason(&failed),
        Some(Reason::PaymentNotRefundable)
    );
    let bad_scale = refund(&w, "p1", "r7", Some("0.001")).await?;
    assert_eq!(
        rejection_reason(&bad_scale),
        Some(Reason::AmountScaleExceedsCurrency)
    );
    assert_eq!(w.balance("alice").await?.balance, "100.00");
    assert_eq!(w.balance("bob").await?.balance, "0.00");
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn invalid_commands_are_rejected_with_reasons(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    w.open_wallet("yen", "JPY").await?;
    let pay = |id: &str, amount: serde_json::Value, currency: &str, to: &str| serde_json::json!({"payment_id": id, "from_wallet": "alice", "to_wallet": to, "amount": amount, "currency": currency});
    // (command, body, reason, rejection key or None for unkeyed)
    let cases: Vec<(&str, serde_json::Value, Reason, Option<&str>)> = vec![
        (
            "payment.create",
            serde_json::json!({"from_wallet": "alice", "to_wallet": "bob", "amount": "1", "currency": "USD"}),
            Reason::MissingField,
            None,
        ),
        (
            "payment.create",
            pay("bad.id", "1".into(), "USD", "bob"),
            Reason::InvalidId,
            None,
        ),
        (
            "payment.create",
            pay("i1", "0".into(), "USD", "bob"),
            Reason::AmountNotPositive,
            Some("i1"),
        ),
        (
            "payment.create",
            pay("i2", "-5.00".into(), "USD", "bob"),
            Reason::AmountNotPositive,
            Some("i2"),
        ),
        (
            "payment.create",
            pay("i3", "1.005".into(), "USD", "bob"),
            Reason::AmountScaleExceedsCurrency,
            Some("i3"),
        ),
        (
            "payment.create",
            pay("i4", "1.5".into(), "JPY", "yen"),
            Reason::AmountScaleExceedsCurrency,
            Some("i4"),
        ),
        (
            "payment.create",
            pay("i5", "1.00".into(), "XYZ", "bob"),
            Reason::UnknownCurrency,
            Some("i5"),
        ),
        (
            "payment.create",
            pay("i6", serde_json::json!(12.5), "USD", "bob"),
            Reason::InvalidAmount,
            Some("i6"),
        ),
        (
            "payment.create",
            pay("i7", "1.00".into(), "USD", "alice"),
            Reason::SameWallet,
            Some("i7"),
        ),
        (
            "wallet.open",
            serde_json::json!({"wallet_id": "w1", "owner": "x", "currency": "ABC"}),
            Reason::UnknownCurrency,
            Some("w1"),
        ),
        (
            "wallet.open",
            serde_json::json!({"wallet_id": "alice", "owner": "someone else", "currency": "USD"}),
            Reason::IdempotencyKeyReused,
            Some("alice"),
        ),
        (
            "wallet.deposit",
            serde_json::json!({"wallet_id": "ghost", "amount": "1.00", "currency": "USD", "reference": "d1"}),
            Reason::WalletNotFound,
            Some("ghost"),
        ),
        (
            "wallet.deposit",
            serde_json::json!({"wallet_id": "alice", "amount": "1.00", "currency": "EUR", "reference": "d2"}),
            Reason::CurrencyMismatch,
            Some("alice"),
        ),
        (
            "wallet.deposit",
            serde_json::json!({"wallet_id": "alice", "amount": "1.00", "currency": "USD"}),
            Reason::MissingField,
            Some("alice"),
        ),
    ];
    // A command no actor handles: the broker refuses it to a client (an
    // open server would let the payment actor reject it, unknown_command).
    ensure!(
        w.command("payment.explode", serde_json::json!({"payment_id": "i8"}))
            .await
            .is_err(),
        "a client published an unknown command"
    );
    for (command, body, reason, key) in cases {
        let sent = w.command(command, body.clone()).await?;
        let aggregate = command.split('.').next().unwrap_or_default();
        let key = key
            .map(str::to_owned)
            .unwrap_or_else(|| format!("unkeyed~{}", sent.stream_seq));
        let e = w
            .wait_event(
                &format!("falcon.evt.{aggregate}.rejected.{key}"),
                |e| match &e.data {
                    EventData::PaymentRejected(r) | EventData::WalletRejected(r) => {
                        r.reason == reason
                    }
                    _ => false,
                },
            )
            .await
            .with_context(|| format!("{command} {body} should be rejected with {reason}"))?;
        let (EventData::PaymentRejected(r) | EventData::WalletRejected(r)) = &e.data else {
            unreachable!()
        };
        assert!(!r.message.is_empty());
    }
    assert_eq!(
        w.balance("alice").await?.balance,
        "100.00",
        "no rejected command moved money"
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn unparseable_body_is_dead_lettered(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    let sent = w
        .publish_raw("falcon.cmd.payment.create.client", "{not json", None)
        .await?;
    let letters = eventually(|| async {
        let letters =
            falcon_nats::read::read_filtered(&w.js, STREAM_DLQ, "falcon.dlq.>", 10).await?;
        Ok((!letters.is_empty()).then_some(letters))
    })
    .await?;
    let letter = &letters[0];
    assert_eq!(
        letter.subject,
        "falcon.dlq.payment-cmd.falcon.cmd.payment.create.client"
    );
    assert_eq!(&letter.payload[..], b"{not json");
    let headers = letter.headers.as_ref().context("dead letter headers")?;
    let h = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(
        h(dlq::ORIGINAL_SUBJECT).as_deref(),
        Some("falcon.cmd.payment.create.client")
    );
    assert_eq!(h(dlq::ORIGINAL_STREAM).as_deref(), Some(STREAM_CMD));
    assert_eq!(h(dlq::ORIGINAL_SEQ), Some(sent.stream_seq.to_string()));
    assert_eq!(h(dlq::CONSUMER).as_deref(), Some("payment-cmd"));
    assert!(
        h(dlq::ERROR).is_some_and(|e| e.contains("not JSON")),
        "{:?}",
        h(dlq::ERROR)
    );
    // Terminated, not redelivered; and the actor carries on.
    funded(&w, "10.00").await?;
    let e = w.pay("after", "alice", "bob", "1.00", "USD").await?;
    assert_eq!(e.event_type(), EventType::PaymentCompleted);
    let consumer =
        w.js.get_stream(STREAM_CMD)
            .await?
            .consumer_info("payment-cmd")
            .await?;
    assert_eq!(consumer.num_ack_pending, 0);
    assert_eq!(
        falcon_nats::read::read_filtered(&w.js, STREAM_DLQ, "falcon.dlq.>", 10)
            .await?
            .len(),
        1
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

/// Commands stored while no actor runs arrive as one batch; the one that
/// can never succeed is dead-lettered alone and the others complete (the
/// batch falls back from one transaction to a savepoint per message).
async fn poison_message_does_not_fail_its_batch_mates(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    rt.shutdown().await;
    for i in 0..20 {
        if i == 7 {
            w.publish_raw("falcon.cmd.payment.create.client", "{poison", None)
                .await?;
        }
        let body = World::pay_body(&format!("mate-{i}"), "alice", "bob", "1.00", "USD");
        w.command("payment.create", body).await?;
    }
    let rt = w.start().await?;
    let ids: Vec<String> = (0..20).map(|i| format!("mate-{i}")).collect();
    for id in &ids {
        let e = w.wait_terminal(id).await?;
        assert_eq!(e.event_type(), EventType::PaymentCompleted, "{id}");
    }
    let letters = falcon_nats::read::read_filtered(&w.js, STREAM_DLQ, "falcon.dlq.>", 10).await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(&letters[0].payload[..], b"{poison");
    assert_eq!(w.balance("alice").await?.available, "80.00");
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn panicking_actors_are_restarted(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w, "100.00").await?;
    // Each actor dies once right after committing a batch and before acking
    // it: the worst moment. Redelivery must find the inbox and do nothing twice.
    for actor in Actor::ALL {
        rt.faults().arm(actor, FaultPoint::AfterCommit, 1);
    }
    let e = w.pay("p1", "alice", "bob", "10.00", "USD").await?;
    assert_eq!(e.event_type(), EventType::PaymentCompleted);
    // Each actor's loop restarted once (the reconciliation actor's too: it
    // folds payment.completed).
    let all = Actor::ALL.len() as u64;
    tokio::time::timeout(common::DEADLINE, rt.stats().wait_restarts(all)).await?;
    let events = saga_events(&w, "p1").await?;
    let count = |t: EventType| events.iter().filter(|e| e.event_type() == t).count();
    assert_eq!(
        (
            count(EventType::TransferCommitted),
            count(EventType::PaymentCompleted)
        ),
        (1, 1)
    );
    assert_eq!(w.balance("alice").await?.balance, "90.00");
    // While a crashed consumer loop waits for its restart, readiness says it
    // is not bound; once restarted, it binds again.
    rt.faults().arm(Actor::Wallet, FaultPoint::AfterCommit, 1);
    w.command(
        "wallet.open",
        serde_json::json!({"wallet_id": "carol", "owner": "c", "currency": "USD"}),
    )
    .await?;
    tokio::time::timeout(common::DEADLINE, rt.stats().wait_restarts(all + 1)).await?;
    let during = rt.probe().readiness().await;
    assert!(!during.ready, "{during:?}");
    assert!(
        during
            .checks
            .iter()
            .any(|c| c.name == "consumer:wallet" && !c.ok),
        "{during:?}"
    );
    let ready = common::eventually(|| async {
        let r = rt.probe().readiness().await;
        Ok(r.ready.then_some(r))
    })
    .await?;
    assert!(ready
        .checks
        .iter()
        .any(|c| c.name == "consumer:wallet" && c.ok));
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn exhausted_retries_are_dead_lettered(b: Backend) -> Result<()> {
    let w = World::with(b, |s| s.consumer.max_deliver = 3).await?;
    let rt = w.start().await?;
    // An event for a payment nobody created: the payment actor waits for the
    // payment to appear (a transient error), then gives up on the last
    // allowed delivery and dead-letters it rather than dropping it.
    let usd = falcon_schemas::Currency::from_code("USD").context("USD")?;
    let orphan = Event::new(
        EventData::TransferCommitted(falcon_schemas::event::PaymentData {
            payment_id: "ghost".into(),
            from_wallet: "a".into(),
            to_wallet: "b".into(),
            amount: rust_decimal::Decimal::new(100, 2),
            currency: usd,
            principal: None,
        }),
        "orphan-event".into(),
        chrono::Utc::now(),
        "falcon/test",
        "test",
        None,
    );
    let sent = w.publish_event(&orphan).await?;
    let letters = eventually(|| async {
        let letters = falcon_nats::read::read_filtered(
            &w.js,
            STREAM_DLQ,
            &format!("falcon.dlq.{}.>", w.durable("payment-evt", "ghost")),
            10,
        )
        .await?;
        Ok((!letters.is_empty()).then_some(letters))
    })
    .await?;
    let headers = letters[0].headers.as_ref().context("dead letter headers")?;
    let h = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(h(dlq::ORIGINAL_SEQ), Some(sent.stream_seq.to_string()));
    assert_eq!(h(dlq::DELIVERY_COUNT).as_deref(), Some("3"));
    assert!(
        h(dlq::ERROR)
            .is_some_and(|e| e.contains("gave up after 3 deliveries") && e.contains("ghost")),
        "{:?}",
        h(dlq::ERROR)
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}
