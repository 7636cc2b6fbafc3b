//! The circulation bound: the overflow it prevents (reported on a release
//! build: a deposit of 92233720368547758.00 USD, then a payment of 0.10 to
//! that wallet, wrapped its balance to -92233720368547758.06), refused on
//! both paths and through the handler; and the reservation's refusal of a
//! payee credit that could not fit.

use bytes::Bytes;
use chrono::Utc;
use falcon_kernel::handler::Item;
use falcon_kernel::Handler;
use falcon_nats::dlq::Origin;
use falcon_nats::Delivery;
use falcon_schemas::event::RiskData;
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use falcon_schemas::{Event, EventData, Reason};
use sea_orm::{EntityTrait, Set, TransactionTrait};

use super::*;
use crate::Wallet;

/// 92233720368547758.00 USD in minor units: fits `i64`, with 7 to spare.
const BIG: i64 = 9_223_372_036_854_775_800;

/// Runs `messages` on both paths (one by one, and as one batch), checks
/// they agree and that `falcon verify` finds nothing, and returns the
/// outcomes and the rows.
async fn both_paths(messages: &[Message]) -> (Vec<Outcome>, Contents) {
    let one = db().await;
    let expected = one_by_one(&one, messages).await;
    let booked = db().await;
    assert_eq!(by_book(&booked, &[messages]).await, expected, "the book");
    let rows = contents(&one).await;
    assert_eq!(contents(&booked).await, rows, "the book's rows");
    assert_eq!(violations(&one).await, Vec::<String>::new());
    assert_eq!(violations(&booked).await, Vec::<String>::new());
    (expected, rows)
}

fn balance_of(rows: &Contents, wallet_id: &str) -> i64 {
    rows.wallets
        .iter()
        .find(|w| w.wallet_id == wallet_id)
        .map(|w| w.balance_minor)
        .expect("the wallet")
}

/// The one rejection among `events`, for its reason and message.
fn rejection(outcome: &Outcome) -> (Reason, String) {
    match outcome.as_deref() {
        Ok([EventData::WalletRejected(r)]) => (r.reason, r.message.clone()),
        other => panic!("not one rejection: {other:?}"),
    }
}

/// The reported sequence: the big deposit is accepted, the small one that
/// would take the USD in circulation past `i64::MAX` is refused with
/// `amount_too_large` (naming the currency and the bound), and the payment
/// of 0.10 into the big wallet finds no money to pay with: no wrap.
#[tokio::test]
async fn a_deposit_past_the_bound_is_refused_and_nothing_wraps() {
    let p = pay("p1", "small", "big", 10, usd());
    let messages = [
        open("big", "o", usd()),
        open("small", "o", usd()),
        deposit("big", BIG, usd(), "r-big"),
        deposit("small", 10, usd(), "r-small"),
        Message::Reserve(p.clone()),
        Message::Commit(p),
    ];
    let (outcomes, rows) = both_paths(&messages).await;
    let (reason, message) = rejection(&outcomes[3]);
    assert_eq!(reason, Reason::AmountTooLarge);
    assert!(
        message.contains("USD") && message.contains("92233720368547758.07"),
        "{message}"
    );
    assert!(
        matches!(outcomes[4].as_deref(), Ok([EventData::ReservationDeclined(d)]) if d.reason == Reason::InsufficientFunds),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(balance_of(&rows, "big"), BIG);
    assert_eq!(balance_of(&rows, "small"), 0);
    assert_eq!(rows.circulation[0].deposited_minor, BIG);
}

/// The other order: the small deposit first, then the big one is refused,
/// and the payment goes through.
#[tokio::test]
async fn the_deposit_that_passes_the_bound_is_refused_whichever_comes_first() {
    let p = pay("p1", "small", "big", 10, usd());
    let messages = [
        open("big", "o", usd()),
        open("small", "o", usd()),
        deposit("small", 10, usd(), "r-small"),
        deposit("big", BIG, usd(), "r-big"),
        Message::Reserve(p.clone()),
        Message::Commit(p),
        deposit("big", BIG - 3, usd(), "r-big-less"), // exactly to the bound
        deposit("small", 1, usd(), "r-one-more"),
    ];
    let (outcomes, rows) = both_paths(&messages).await;
    assert_eq!(rejection(&outcomes[3]).0, Reason::AmountTooLarge);
    assert!(
        matches!(
            outcomes[5].as_deref(),
            Ok([EventData::TransferCommitted(_)])
        ),
        "{:?}",
        outcomes[5]
    );
    assert!(matches!(
        outcomes[6].as_deref(),
        Ok([EventData::WalletDeposited(_)])
    ));
    assert_eq!(rejection(&outcomes[7]).0, Reason::AmountTooLarge);
    assert_eq!(balance_of(&rows, "big"), i64::MAX);
    assert_eq!(rows.circulation[0].deposited_minor, i64::MAX);
    // Every currency has a bound of its own.
    let (outcomes, _) = both_paths(&[
        open("u", "o", usd()),
        open("e", "o", eur()),
        deposit("u", i64::MAX, usd(), "r-u"),
        deposit("e", i64::MAX, eur(), "r-e"),
    ])
    .await;
    assert!(outcomes
        .iter()
        .all(|o| matches!(o.as_deref(), Ok([e]) if !matches!(e, EventData::WalletRejected(_)))));
}

/// A database from before the bound may hold a payee whose balance a
/// payment would push past `i64::MAX`: the reservation is declined with
/// `amount_too_large`, on both paths, so the commit never meets it.
#[tokio::test]
async fn a_payee_credit_that_could_not_fit_declines_the_reservation() {
    let p = pay("p1", "payer", "payee", 10, usd());
    let messages = [Message::Reserve(p.clone())];
    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    for batched in [false, true] {
        let db = db().await;
        for (id, balance) in [("payer", 100), ("payee", i64::MAX - 5)] {
            wallet::Entity::insert(wallet::ActiveModel {
                wallet_id: Set(id.into()),
                owner: Set("o".into()),
                principal: Set(OWNER.into()),
                currency: Set("USD".into()),
                balance_minor: Set(balance),
                held_minor: Set(0),
                created_at: Set(Utc::now()),
                updated_at: Set(Utc::now()),
            })
            .exec(&db)
            .await
            .expect("a wallet");
        }
        outcomes.push(if batched {
            by_book(&db, &[&messages]).await
        } else {
            one_by_one(&db, &messages).await
        });
        rows.push(contents(&db).await);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(rows[0], rows[1]);
    match outcomes[0][0].as_deref() {
        Ok([EventData::ReservationDeclined(d)]) => {
            assert_eq!(d.reason, Reason::AmountTooLarge);
            assert!(d.message.contains("payee"), "{}", d.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rows[0].holds[0].state, crate::HoldState::Declined);
    assert_eq!(rows[0].holds[0].reason.as_deref(), Some("amount_too_large"));
    assert_eq!(rows[0].wallets[1].held_minor, 0);
}

fn delivery(stream: &str, subject: String, seq: u64, payload: Vec<u8>) -> Delivery {
    let origin = Origin {
        subject,
        stream: stream.into(),
        stream_seq: seq,
        consumer: if stream == STREAM_CMD {
            "wallet-cmd".into()
        } else {
            "wallet-evt".into()
        },
        delivered: 1,
        msg_id: Some(format!("m{seq}")),
        traceparent: None,
    };
    Delivery::detached(&origin, Bytes::from(payload))
}

/// The reported sequence as the wire carries it, through the `Wallet`
/// handler: each delivery through `apply` (the careful path) and all of
/// them through `apply_batch` (the fast path) publish the same events,
/// the deposit that would pass the bound a `wallet.rejected`.
#[tokio::test]
async fn the_handler_refuses_the_deposit_on_both_paths() {
    let approved = Event::new(
        EventData::RiskApproved(RiskData {
            payment: pay("p1", "small", "big", 10, usd()),
            score: 0,
            risk_reasons: vec![],
        }),
        "e1".into(),
        Utc::now(),
        "falcon/risk",
        "cause",
        None,
    );
    let cmd = |verb: &str, seq, body: &str| {
        let principal = if verb == "deposit" { TREASURY } else { OWNER };
        delivery(
            STREAM_CMD,
            format!("falcon.cmd.wallet.{verb}.{principal}"),
            seq,
            body.as_bytes().to_vec(),
        )
    };
    let deliveries = [
        cmd(
            "open",
            1,
            r#"{"wallet_id":"big","owner":"Ada","currency":"USD"}"#,
        ),
        cmd(
            "open",
            2,
            r#"{"wallet_id":"small","owner":"Ada","currency":"USD"}"#,
        ),
        cmd(
            "deposit",
            3,
            r#"{"wallet_id":"big","amount":"92233720368547758.00","currency":"USD","reference":"r-big"}"#,
        ),
        cmd(
            "deposit",
            4,
            r#"{"wallet_id":"small","amount":"0.10","currency":"USD","reference":"r-small"}"#,
        ),
        delivery(STREAM_EVT, approved.nats_subject(), 5, approved.encode()),
    ];
    let span = tracing::Span::none();
    let outbox = |d| {
        Outbox::new(
            Wallet::SOURCE,
            d,
            Utc::now(),
            falcon_nats::trace::TraceParent::new_root(),
        )
    };
    let settings = crate::settings::WalletSettings::default();
    let careful = Wallet::new(db().await, &settings);
    let mut expected = Vec::new();
    for d in &deliveries {
        let txn = careful.db().begin().await.expect("txn");
        let mut out = outbox(d);
        careful.apply(&txn, d, &(), &mut out).await.expect("a step");
        txn.commit().await.expect("commit");
        expected.push(out.events.into_iter().map(|e| e.data).collect::<Vec<_>>());
    }
    let fast = Wallet::new(db().await, &settings);
    let mut items: Vec<Item> = deliveries
        .iter()
        .map(|d| Item {
            delivery: d,
            span: &span,
            out: outbox(d),
        })
        .collect();
    let txn = fast.db().begin().await.expect("txn");
    fast.apply_batch(&txn, &mut items, &())
        .await
        .expect("the batch");
    txn.commit().await.expect("commit");
    let events: Vec<Vec<EventData>> = items
        .into_iter()
        .map(|i| i.out.events.into_iter().map(|e| e.data).collect())
        .collect();
    assert_eq!(events, expected);
    assert_eq!(
        rejection(&Ok(expected[3].clone())).0,
        Reason::AmountTooLarge
    );
    assert!(
        matches!(&expected[4][..], [EventData::ReservationDeclined(d)] if d.reason == Reason::InsufficientFunds),
        "{:?}",
        expected[4]
    );
    assert_eq!(contents(careful.db()).await, contents(fast.db()).await);
    let big = crate::balance(fast.db(), "big")
        .await
        .expect("read")
        .expect("big");
    assert_eq!(big.balance, "92233720368547758.00");
    assert!(violations(fast.db()).await.is_empty());
}

/// The rows of a pure decision's test.
struct Fixed {
    wallets: Vec<wallet::Model>,
    holds: Vec<hold::Model>,
}

impl crate::decide::Rows for Fixed {
    fn wallet(&self, wallet_id: &str) -> Option<&wallet::Model> {
        self.wallets.iter().find(|w| w.wallet_id == wallet_id)
    }
    fn hold(&self, payment_id: &str) -> Option<&hold::Model> {
        self.holds.iter().find(|h| h.payment_id == payment_id)
    }
    fn refund(&self, _: &str) -> Option<&refund::Model> {
        None
    }
    fn deposit(&self, _: &str) -> Option<&deposit::Model> {
        None
    }
    fn circulation(&self, _: &str) -> Option<&circulation::Model> {
        None
    }
}

/// Past the bound (only a database the old wrap reached can be), a commit
/// that would take its payee past `i64::MAX` is a broken invariant: the
/// step panics (and the supervisor restarts the actor) rather than wrap.
#[test]
#[should_panic(expected = "a balance is at most the money in circulation")]
fn a_credit_past_the_largest_balance_panics_instead_of_wrapping() {
    let now = Utc::now();
    let w = |id: &str, balance_minor, held_minor| wallet::Model {
        wallet_id: id.into(),
        owner: "o".into(),
        principal: OWNER.into(),
        currency: "USD".into(),
        balance_minor,
        held_minor,
        created_at: now,
        updated_at: now,
    };
    let p = pay("p1", "payer", "payee", 10, usd());
    let rows = Fixed {
        wallets: vec![w("payer", 100, 10), w("payee", i64::MAX - 5, 0)],
        holds: vec![hold::Model {
            payment_id: "p1".into(),
            wallet_id: "payer".into(),
            to_wallet: "payee".into(),
            amount_minor: 10,
            refunded_minor: 0,
            currency: "USD".into(),
            state: crate::HoldState::Reserved,
            reason: None,
            created_at: now,
            updated_at: now,
        }],
    };
    let _ = crate::decide::decide(
        &Message::Commit(p),
        &rows,
        &crate::decide::Policy::default(),
        now,
    );
}
