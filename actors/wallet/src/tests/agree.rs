//! The property that keeps the two paths one: random sequences of wallet
//! messages (opens, deposits up to and past the circulation bound,
//! reservations, commits, releases, refunds, refused commands; with
//! repeats, unknown wallets, foreign currencies, malformed amounts,
//! duplicates and every order) give the same events, errors and rows
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

/// A payment the saga events of a case are about.
#[derive(Debug, Clone)]
struct Payment {
    from: usize,
    to: usize,
    minor: i64,
    currency: Option<usize>,
    /// A zero amount: a malformed event, which is poison.
    malformed: bool,
}

fn payment() -> impl Strategy<Value = Payment> {
    (
        wallet(),
        wallet(),
        amount(),
        currency_choice(),
        prop::bool::weighted(0.03),
    )
        .prop_map(|(from, to, minor, currency, malformed)| Payment {
            from,
            to,
            minor,
            currency,
            malformed,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        wallet: usize,
        owner: usize,
        currency: Option<usize>,
    },
    Deposit {
        wallet: usize,
        minor: i64,
        currency: Option<usize>,
        reference: usize,
    },
    Reserve(usize),
    Commit(usize),
    Release(usize),
    /// A refund of a payment: all of it, or `Some` part.
    Refund {
        refund: usize,
        payment: usize,
        minor: Option<i64>,
    },
    /// A command refused by validation.
    Invalid,
    /// An earlier message again (a redelivery under another id).
    Repeat(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..WALLETS.len() - 1, prop_oneof![4 => Just(0_usize), 1 => Just(1_usize)], currency_choice())
            .prop_map(|(wallet, owner, currency)| Op::Open { wallet, owner, currency }),
        4 => (wallet(), amount(), currency_choice(), 0..8_usize).prop_map(
            |(wallet, minor, currency, reference)| Op::Deposit { wallet, minor, currency, reference }
        ),
        4 => (0..PAYMENTS).prop_map(Op::Reserve),
        3 => (0..PAYMENTS).prop_map(Op::Commit),
        2 => (0..PAYMENTS).prop_map(Op::Release),
        2 => (0..4_usize, 0..PAYMENTS, prop::option::of(1_i64..=200))
            .prop_map(|(refund, payment, minor)| Op::Refund { refund, payment, minor }),
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
    data
}

/// The case's messages: usually after a setup that opens the wallets and
/// funds them, then the ops in their random order.
fn messages(setup: bool, payments: &[Payment], ops: &[Op]) -> Vec<Message> {
    let mut messages: Vec<Message> = Vec::with_capacity(ops.len() + 6);
    if setup {
        for (i, w) in WALLETS[..3].iter().enumerate() {
            messages.push(open(w, OWNERS[0], currency(HOMES[i])));
            messages.push(deposit(w, 1000, currency(HOMES[i]), &format!("s{i}")));
        }
    }
    for op in ops {
        let message = match op {
            Op::Open {
                wallet,
                owner,
                currency: c,
            } => open(
                WALLETS[*wallet],
                OWNERS[*owner],
                currency(c.unwrap_or(HOMES[*wallet])),
            ),
            Op::Deposit {
                wallet,
                minor,
                currency: c,
                reference,
            } => deposit(
                WALLETS[*wallet],
                *minor,
                currency(c.unwrap_or(HOMES[*wallet])),
                &format!("r{reference}"),
            ),
            Op::Reserve(i) => Message::Reserve(payment_data(*i, &payments[*i])),
            Op::Commit(i) => Message::Commit(payment_data(*i, &payments[*i])),
            Op::Release(i) => capture_failed(payment_data(*i, &payments[*i])),
            Op::Refund {
                refund,
                payment,
                minor,
            } => {
                let p = payment_data(*payment, &payments[*payment]);
                let minor = minor.unwrap_or(payments[*payment].minor);
                refund_of(&format!("f{refund}"), &p, minor)
            }
            Op::Invalid => Message::Invalid(falcon_schemas::event::RejectedData {
                command: "wallet.deposit".into(),
                key: "unkeyed~1".into(),
                reason: Reason::InvalidAmount,
                message: "amount is not a decimal string".into(),
                field: Some("amount".into()),
            }),
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
        prop::collection::vec(payment(), PAYMENTS),
        prop::collection::vec(op(), 1..40),
        prop::collection::vec(1_usize..=8, 40),
    );
    let result = runner.run(&case, |(setup, payments, ops, sizes)| {
        let messages = messages(setup, &payments, &ops);
        let batches = batches(&messages, &sizes);
        rt.block_on(async {
            let one = db().await;
            let expected = one_by_one(&one, &messages).await;
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
}
