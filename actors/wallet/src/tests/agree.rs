//! The property that keeps the two paths one: random sequences of wallet
//! messages (opens, deposits up to and past the circulation bound,
//! reservations, commits, releases, refunds, refused commands; with
//! repeats, unknown wallets, foreign currencies, malformed amounts,
//! duplicates and every order; sent by the wallets' owners, by other
//! principals, by none, deposits by the treasury or a client; refunds
//! naming other wallets, another currency, amounts not positive or past
//! the transfer) give the same events, errors and rows
//! whether each message runs alone through the steps or the messages run
//! in random batches through the book; and on both, `falcon verify` finds
//! nothing and each currency's circulation is what its deposits add up to.
//!
//! Deterministic: a fixed seed, so a run is the same run every time (set
//! `PROPTEST_CASES` for more cases than the default).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::*;
use crate::FUNDING_ACCOUNT;

/// Wallets messages name; the last is never opened.
const WALLETS: [&str; 4] = ["w0", "w1", "w2", "ghost"];
/// The currency each wallet is mostly opened, paid and funded in.
const HOMES: [usize; 4] = [0, 0, 1, 0];
const OWNERS: [&str; 2] = ["o1", "o2"];
/// Principals that send commands: the first opens the wallets of the setup.
const PRINCIPALS: [&str; 2] = ["alice", "mallory"];
/// Payments per case: few, so that a case's saga events meet.
const PAYMENTS: usize = 3;

fn currency(i: usize) -> Currency {
    [usd(), eur()][i % 2]
}

/// A currency index: the wallet's home (`None`), mostly, or either.
fn currency_choice() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![6 => Just(None), 1 => (0..2_usize).prop_map(Some)]
}

/// A wallet, mostly one of the first two (which share a currency).
fn wallet() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..2_usize, 2 => Just(2_usize), 1 => Just(3_usize)]
}

/// An amount in minor units: mostly small, sometimes at or near the bound.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        10 => 1_i64..=300,
        2 => (0_i64..=400).prop_map(|k| i64::MAX - k),
        1 => (0_i64..=400).prop_map(|k| i64::MAX / 2 + k),
    ]
}

/// A principal index: mostly the first (the setup's opener), or the
/// other, or (for an event) none.
fn principal_choice() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![6 => Just(Some(0_usize)), 2 => Just(Some(1_usize)), 1 => Just(None)]
}

/// A payment the saga events of a case are about.
#[derive(Debug, Clone)]
struct Payment {
    from: usize,
    to: usize,
    minor: i64,
    currency: Option<usize>,
    /// A zero amount: a malformed event, which is poison.
    malformed: bool,
    /// Who created it.
    principal: Option<usize>,
}

fn payment() -> impl Strategy<Value = Payment> {
    (
        wallet(),
        wallet(),
        amount(),
        currency_choice(),
        prop::bool::weighted(0.03),
        principal_choice(),
    )
        .prop_map(
            |(from, to, minor, currency, malformed, principal)| Payment {
                from,
                to,
                minor,
                currency,
                malformed,
                principal,
            },
        )
}

/// A payment that can go through: between the setup's two USD wallets,
/// small, by the payer's owner (each case has one, so that its saga events
/// and refunds meet a committed transfer often enough).
fn well_formed_payment() -> impl Strategy<Value = Payment> {
    (0..2_usize, 0..2_usize, 1_i64..=300).prop_map(|(from, to, minor)| Payment {
        from,
        to,
        minor,
        currency: None,
        malformed: false,
        principal: Some(0),
    })
}

/// How a refund event departs from its payment, if it does.
#[derive(Debug, Clone, Copy)]
enum Twist {
    None,
    /// Payer and payee swapped.
    SwapWallets,
    /// In the other currency.
    OtherCurrency,
    /// Its amount negated (or zero).
    NotPositive,
    /// One fraction digit more than the currency has.
    OverScale,
}

fn twist() -> impl Strategy<Value = Twist> {
    prop_oneof![
        12 => Just(Twist::None),
        1 => Just(Twist::SwapWallets),
        1 => Just(Twist::OtherCurrency),
        1 => Just(Twist::NotPositive),
        1 => Just(Twist::OverScale),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        wallet: usize,
        owner: usize,
        currency: Option<usize>,
        principal: usize,
    },
    Deposit {
        wallet: usize,
        minor: i64,
        currency: Option<usize>,
        reference: usize,
        /// Sent by the treasury (`true`), or by a client.
        treasury: bool,
    },
    Reserve(usize),
    /// A capture of a payment; `true`: its event says one minor unit more
    /// than the payment (a record mismatch).
    Commit(usize, bool),
    /// A failed capture, likewise.
    Release(usize, bool),
    /// A reservation and its capture, one after the other: the saga as it
    /// mostly runs, so that refunds meet committed transfers.
    Settle(usize),
    /// A refund of a payment: all of it, or `Some` part.
    Refund {
        refund: usize,
        payment: usize,
        minor: Option<i64>,
        principal: Option<usize>,
        twist: Twist,
    },
    /// A command refused by validation.
    Invalid,
    /// An earlier message again (a redelivery under another id).
    Repeat(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (
            0..WALLETS.len() - 1,
            prop_oneof![4 => Just(0_usize), 1 => Just(1_usize)],
            currency_choice(),
            prop_oneof![4 => Just(0_usize), 1 => Just(1_usize)],
        )
            .prop_map(|(wallet, owner, currency, principal)| Op::Open {
                wallet,
                owner,
                currency,
                principal
            }),
        4 => (wallet(), amount(), currency_choice(), 0..8_usize, prop::bool::weighted(0.85)).prop_map(
            |(wallet, minor, currency, reference, treasury)| Op::Deposit {
                wallet,
                minor,
                currency,
                reference,
                treasury
            }
        ),
        4 => (0..PAYMENTS).prop_map(Op::Reserve),
        3 => (0..PAYMENTS).prop_map(Op::Settle),
        3 => (0..PAYMENTS, prop::bool::weighted(0.1)).prop_map(|(i, t)| Op::Commit(i, t)),
        2 => (0..PAYMENTS, prop::bool::weighted(0.1)).prop_map(|(i, t)| Op::Release(i, t)),
        3 => (
            0..4_usize,
            0..PAYMENTS,
            prop::option::of(1_i64..=200),
            principal_choice(),
            twist(),
        )
            .prop_map(|(refund, payment, minor, principal, twist)| Op::Refund {
                refund,
                payment,
                minor,
                principal,
                twist
            }),
        1 => Just(Op::Invalid),
        1 => any::<usize>().prop_map(Op::Repeat),
    ]
}

fn payment_data(id: usize, p: &Payment) -> PaymentData {
    let mut data = pay(
        &format!("p{id}"),
        WALLETS[p.from],
        WALLETS[p.to],
        p.minor,
        currency(p.currency.unwrap_or(HOMES[p.from])),
    );
    if p.malformed {
        data.amount = Decimal::ZERO;
    }
    data.principal = p.principal.map(|i| PRINCIPALS[i].to_owned());
    data
}

/// `p`, or (`tampered`) `p` saying one minor unit more.
fn tampered_if(tampered: bool, mut p: PaymentData) -> PaymentData {
    if tampered {
        p.amount += Decimal::new(1, p.currency.minor_units());
    }
    p
}

/// A refund of payment `p` by `principal`, as `twist` bends it.
fn refund_data_of(
    id: usize,
    p: &PaymentData,
    minor: i64,
    principal: Option<usize>,
    twist: Twist,
) -> RefundData {
    let mut data = refund_data(&format!("f{id}"), p, minor);
    data.principal = principal.map(|i| PRINCIPALS[i].to_owned());
    match twist {
        Twist::None => {}
        Twist::SwapWallets => std::mem::swap(&mut data.from_wallet, &mut data.to_wallet),
        Twist::OtherCurrency => data.currency = if data.currency == usd() { eur() } else { usd() },
        Twist::NotPositive => data.amount = -data.amount,
        Twist::OverScale => {
            data.amount += Decimal::new(1, data.currency.minor_units() + 1);
        }
    }
    data
}

/// The case's messages: usually after a setup that opens the wallets and
/// funds them, then the ops in their random order.
fn messages(setup: bool, payments: &[Payment], ops: &[Op]) -> Vec<Message> {
    let mut messages: Vec<Message> = Vec::with_capacity(ops.len() + 6);
    if setup {
        for (i, w) in WALLETS[..3].iter().enumerate() {
            messages.push(open_by(w, OWNERS[0], currency(HOMES[i]), PRINCIPALS[0]));
            messages.push(deposit(w, 1000, currency(HOMES[i]), &format!("s{i}")));
        }
    }
    for op in ops {
        let message = match op {
            Op::Open {
                wallet,
                owner,
                currency: c,
                principal,
            } => open_by(
                WALLETS[*wallet],
                OWNERS[*owner],
                currency(c.unwrap_or(HOMES[*wallet])),
                PRINCIPALS[*principal],
            ),
            Op::Deposit {
                wallet,
                minor,
                currency: c,
                reference,
                treasury,
            } => deposit_by(
                WALLETS[*wallet],
                *minor,
                currency(c.unwrap_or(HOMES[*wallet])),
                &format!("r{reference}"),
                if *treasury { TREASURY } else { PRINCIPALS[0] },
            ),
            Op::Reserve(i) => Message::Reserve(payment_data(*i, &payments[*i])),
            Op::Commit(i, tampered) => {
                Message::Commit(tampered_if(*tampered, payment_data(*i, &payments[*i])))
            }
            Op::Release(i, tampered) => {
                capture_failed(tampered_if(*tampered, payment_data(*i, &payments[*i])))
            }
            Op::Refund {
                refund,
                payment,
                minor,
                principal,
                twist,
            } => {
                let p = payment_data(*payment, &payments[*payment]);
                let minor = minor.unwrap_or(payments[*payment].minor);
                Message::Refund(refund_data_of(*refund, &p, minor, *principal, *twist))
            }
            Op::Invalid => Message::Invalid(falcon_schemas::event::RejectedData {
                command: "wallet.deposit".into(),
                key: "unkeyed~1".into(),
                reason: Reason::InvalidAmount,
                message: "amount is not a decimal string".into(),
                field: Some("amount".into()),
            }),
            Op::Settle(i) => {
                let p = payment_data(*i, &payments[*i]);
                messages.push(Message::Reserve(p.clone()));
                Message::Commit(p)
            }
            Op::Repeat(i) if !messages.is_empty() => messages[i % messages.len()].clone(),
            Op::Repeat(_) => continue,
        };
        messages.push(message);
    }
    messages
}

/// `messages` cut into consecutive batches of the given sizes (the last
/// takes what is left).
fn batches<'m>(messages: &'m [Message], sizes: &[usize]) -> Vec<&'m [Message]> {
    let mut batches = Vec::new();
    let mut rest = messages;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*size).min(rest.len()));
        batches.push(batch);
        rest = tail;
    }
    if !rest.is_empty() {
        batches.push(rest);
    }
    batches
}

/// Each currency's circulation, and what its deposits in the ledger add up
/// to (minus the funding account's entries).
fn circulation_and_deposits(rows: &Contents) -> (BTreeMap<String, i128>, BTreeMap<String, i128>) {
    let circulation = rows
        .circulation
        .iter()
        .map(|c| (c.currency.clone(), i128::from(c.deposited_minor)))
        .collect();
    let mut deposited = BTreeMap::new();
    for e in rows.ledger.iter().filter(|e| e.account == FUNDING_ACCOUNT) {
        *deposited.entry(e.currency.clone()).or_insert(0) -= i128::from(e.amount_minor);
    }
    (circulation, deposited)
}

/// What an outcome was, for the tally of outcomes the cases reached: each
/// event's type and reason, or an error's kind and the start of its text.
fn labels(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Ok(events) => events
            .iter()
            .map(|e| {
                let reason = match e {
                    EventData::WalletRejected(r) => Some(r.reason),
                    EventData::ReservationDeclined(f) | EventData::FundsReleased(f) => {
                        Some(f.reason)
                    }
                    EventData::RefundDeclined(f) => Some(f.reason),
                    _ => None,
                };
                match reason {
                    Some(r) => format!("{}:{r}", e.event_type().short()),
                    None => e.event_type().short().to_owned(),
                }
            })
            .collect(),
        Err(e) => vec![e.split(':').take(2).collect::<Vec<_>>().join(":")],
    }
}

/// Outcomes the generated cases must reach, so that a change to the
/// generators cannot quietly stop testing them. (A refund the payee can no
/// longer pay is too rare here: `paths` has one by hand.)
const REACHED: [&str; 13] = [
    "wallet.funds_reserved",
    "wallet.transfer_committed",
    "wallet.funds_released:capture_declined",
    "wallet.refund_committed",
    "wallet.rejected:not_treasury",
    "wallet.rejected:idempotency_key_reused",
    "wallet.reservation_declined:not_wallet_owner",
    "wallet.reservation_declined:insufficient_funds",
    "wallet.refund_declined:not_wallet_owner",
    "wallet.refund_declined:record_mismatch",
    "wallet.refund_declined:refund_exceeds_payment",
    "poison: invalid amount in event",
    "poison: record_mismatch",
];

#[test]
fn both_paths_agree_on_random_sequences() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(192);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let case = (
        prop::bool::weighted(0.8),
        (
            well_formed_payment(),
            prop::collection::vec(payment(), PAYMENTS - 1),
        )
            .prop_map(|(first, rest)| [vec![first], rest].concat()),
        prop::collection::vec(op(), 1..40),
        prop::collection::vec(1_usize..=8, 40),
    );
    let reached = std::cell::RefCell::new(BTreeMap::<String, usize>::new());
    let result = runner.run(&case, |(setup, payments, ops, sizes)| {
        let messages = messages(setup, &payments, &ops);
        let batches = batches(&messages, &sizes);
        rt.block_on(async {
            let one = db().await;
            let expected = one_by_one(&one, &messages).await;
            for label in expected.iter().flat_map(labels) {
                *reached.borrow_mut().entry(label).or_default() += 1;
            }
            let booked = db().await;
            prop_assert_eq!(by_book(&booked, &batches).await, expected);
            let rows = contents(&one).await;
            prop_assert_eq!(&contents(&booked).await, &rows);
            prop_assert_eq!(violations(&one).await, Vec::<String>::new());
            prop_assert_eq!(violations(&booked).await, Vec::<String>::new());
            let (circulation, deposited) = circulation_and_deposits(&rows);
            prop_assert_eq!(circulation, deposited);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let reached = reached.into_inner();
    let missed: Vec<&str> = REACHED
        .into_iter()
        .filter(|l| !reached.contains_key(*l))
        .collect();
    assert!(
        missed.is_empty(),
        "never reached {missed:?}; reached {reached:?}"
    );
}
