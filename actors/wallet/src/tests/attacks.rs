//! Attacks on the wallet, each on a real database (a SQLite file; and
//! PostgreSQL when `FALCON_TEST_DATABASE_URL` is set), through both paths
//! (the steps one by one, and the book in one batch), which must agree:
//! who may pay, deposit and refund, and events that disagree with the
//! wallet's own records. Each ends with `falcon verify` finding nothing,
//! the money in wallets equal to the money deposited, and (where the
//! attack is refused) no wallet balance or ledger entry changed.

use falcon_schemas::event::RefundData;

use super::backend::{backends, migrated};
use super::*;
use crate::HoldState;

/// Wallets `a` (alice's, 1000 USD), `b` (bob's, 0 USD), `c` (mallory's,
/// 0 USD) and `e` (bob's, 0 EUR); and payment `p1` of 3.00 USD from `a` to
/// `b`, created by alice, reserved and committed.
fn setup() -> Vec<Message> {
    let p1 = p1();
    vec![
        open_by("a", "Alice", usd(), "alice"),
        open_by("b", "Bob", usd(), "bob"),
        open_by("c", "Mallory", usd(), "mallory"),
        open_by("e", "Bob", eur(), "bob"),
        deposit("a", 1000, usd(), "d-a"),
        Message::Reserve(p1.clone()),
        Message::Commit(p1),
    ]
}

/// Payment `p1` as its events carry it: 3.00 USD, `a` to `b`, by alice.
fn p1() -> PaymentData {
    PaymentData {
        principal: Some("alice".into()),
        ..pay("p1", "a", "b", 300, usd())
    }
}

/// A refund of `p1` asked by bob (who owns `b`, the payee that pays it).
fn refund(id: &str, minor: i64) -> RefundData {
    RefundData {
        principal: Some("bob".into()),
        ..refund_data(id, &p1(), minor)
    }
}

/// What an attack did, and the rows before and after it.
struct Attacked {
    outcomes: Vec<Outcome>,
    before: Contents,
    after: Contents,
}

impl Attacked {
    /// The balances of every wallet, `(id, balance, held)`.
    fn balances(&self) -> Vec<(&str, i64, i64)> {
        self.after
            .wallets
            .iter()
            .map(|w| (w.wallet_id.as_str(), w.balance_minor, w.held_minor))
            .collect()
    }

    /// No wallet balance, held amount or ledger entry changed.
    fn assert_nothing_moved(&self) {
        assert_eq!(self.after.wallets, self.before.wallets, "wallets");
        assert_eq!(self.after.ledger, self.before.ledger, "ledger");
    }
}

/// `setup`, then `attack`, on both paths on fresh databases of `backend`:
/// they must agree on every outcome and row, `falcon verify` must find
/// nothing, and the wallets must hold exactly what was deposited.
async fn attack(backend: &Option<String>, setup: &[Message], attack: &[Message]) -> Attacked {
    let one = migrated(backend).await;
    let booked = migrated(backend).await;
    for db in [&one.db, &booked.db] {
        let done = one_by_one(db, setup).await;
        assert!(done.iter().all(Result::is_ok), "the setup: {done:?}");
    }
    let before = contents(&one.db).await;
    let outcomes = one_by_one(&one.db, attack).await;
    assert_eq!(
        by_book(&booked.db, &[attack]).await,
        outcomes,
        "the book, on {}",
        one.backend
    );
    let after = contents(&one.db).await;
    assert_eq!(contents(&booked.db).await, after, "the book's rows");
    for fresh in [&one, &booked] {
        assert_eq!(violations(&fresh.db).await, Vec::<String>::new());
    }
    assert_conserved(&after);
    Attacked {
        outcomes,
        before,
        after,
    }
}

/// The money in wallets, per currency, is what was deposited.
fn assert_conserved(rows: &Contents) {
    for c in &rows.circulation {
        let in_wallets: i128 = rows
            .wallets
            .iter()
            .filter(|w| w.currency == c.currency)
            .map(|w| i128::from(w.balance_minor))
            .sum();
        assert_eq!(in_wallets, i128::from(c.deposited_minor), "{}", c.currency);
    }
}

/// The reason of a reservation's, a refund's or a command's refusal.
fn refused(outcome: &Outcome) -> Reason {
    match outcome.as_deref() {
        Ok([EventData::ReservationDeclined(f)]) => f.reason,
        Ok([EventData::RefundDeclined(f)]) => f.reason,
        Ok([EventData::WalletRejected(r)]) => r.reason,
        other => panic!("not one refusal: {other:?}"),
    }
}

/// The message of a poisoned step.
fn poisoned(outcome: &Outcome) -> &str {
    match outcome {
        Err(e) => e
            .strip_prefix("poison: ")
            .unwrap_or_else(|| panic!("not poison: {e}")),
        Ok(events) => panic!("not poison, but {events:?}"),
    }
}

/// A payment from `a` by anyone but alice (bob, who is paid; mallory; an
/// event naming no one) is declined, holds nothing and moves nothing; the
/// payment actor fails the saga on the decline.
#[tokio::test]
async fn a_reservation_from_a_non_owner_is_declined() {
    for backend in backends() {
        let theft = |id: &str, principal: Option<&str>| {
            Message::Reserve(PaymentData {
                principal: principal.map(str::to_owned),
                ..pay(id, "a", "c", 500, usd())
            })
        };
        let messages = [
            theft("p2", Some("mallory")),
            theft("p3", Some("bob")),
            theft("p4", None),
        ];
        let done = attack(&backend, &setup(), &messages).await;
        for outcome in &done.outcomes {
            assert_eq!(refused(outcome), Reason::NotWalletOwner, "{outcome:?}");
        }
        done.assert_nothing_moved();
        assert_eq!(
            done.balances(),
            [("a", 700, 0), ("b", 300, 0), ("c", 0, 0), ("e", 0, 0)]
        );
        let declined: Vec<_> = done
            .after
            .holds
            .iter()
            .filter(|h| h.payment_id != "p1")
            .map(|h| (h.state, h.reason.as_deref()))
            .collect();
        assert_eq!(
            declined,
            [(HoldState::Declined, Some("not_wallet_owner")); 3]
        );
    }
}

/// A deposit sent by a client, even its own wallet's owner, is refused
/// (`not_treasury`): no deposit row, no circulation, no money.
#[tokio::test]
async fn a_deposit_from_a_client_is_refused() {
    for backend in backends() {
        let messages = [
            deposit_by("a", 500, usd(), "d-alice", "alice"),
            deposit_by("c", 500, usd(), "d-mallory", "mallory"),
            // Refused before anything else: even for a wallet that is not.
            deposit_by("ghost", 500, usd(), "d-ghost", "mallory"),
        ];
        let done = attack(&backend, &setup(), &messages).await;
        for outcome in &done.outcomes {
            assert_eq!(refused(outcome), Reason::NotTreasury, "{outcome:?}");
        }
        done.assert_nothing_moved();
        assert_eq!(done.after.deposits, done.before.deposits);
        assert_eq!(done.after.circulation, done.before.circulation);
        assert_eq!(done.after.circulation[0].deposited_minor, 1000);
    }
}

/// A wallet opened again by another principal (taking it over) is refused
/// as a reuse of its key, and stays its opener's.
#[tokio::test]
async fn a_wallet_opened_again_by_another_principal_is_refused() {
    for backend in backends() {
        let done = attack(
            &backend,
            &setup(),
            &[open_by("a", "Alice", usd(), "mallory")],
        )
        .await;
        assert_eq!(refused(&done.outcomes[0]), Reason::IdempotencyKeyReused);
        done.assert_nothing_moved();
        assert_eq!(done.after.wallets[0].principal, "alice");
    }
}

/// A refund of `p1` asked by anyone but bob, who owns the payee wallet it
/// comes from (alice, who was paid from `a`, too), is declined.
#[tokio::test]
async fn a_refund_from_a_non_owner_is_declined() {
    for backend in backends() {
        let by = |id: &str, principal: Option<&str>| {
            Message::Refund(RefundData {
                principal: principal.map(str::to_owned),
                ..refund(id, 300)
            })
        };
        let messages = [
            by("f1", Some("alice")),
            by("f2", Some("mallory")),
            by("f3", None),
        ];
        let done = attack(&backend, &setup(), &messages).await;
        for outcome in &done.outcomes {
            assert_eq!(refused(outcome), Reason::NotWalletOwner, "{outcome:?}");
        }
        done.assert_nothing_moved();
        assert_eq!(done.after.holds[0].refunded_minor, 0);
    }
}

/// A refund that names other wallets than the transfer's (to take the
/// payee's money to a third wallet, or to run the transfer backwards), or
/// another currency, is declined as a record mismatch.
#[tokio::test]
async fn a_refund_that_disagrees_with_the_transfer_is_declined() {
    for backend in backends() {
        let to_mallory = RefundData {
            from_wallet: "c".into(),
            ..refund("f1", 100)
        };
        let backwards = RefundData {
            from_wallet: "b".into(),
            to_wallet: "a".into(),
            principal: Some("alice".into()),
            ..refund("f2", 100)
        };
        let in_euros = RefundData {
            currency: eur(),
            to_wallet: "e".into(),
            ..refund("f3", 100)
        };
        let messages = [to_mallory, backwards, in_euros].map(Message::Refund);
        let done = attack(&backend, &setup(), &messages).await;
        for outcome in &done.outcomes {
            assert_eq!(refused(outcome), Reason::RecordMismatch, "{outcome:?}");
        }
        done.assert_nothing_moved();
    }
}

/// Refunds take back at most what was paid: more than the transfer is
/// declined; part of it passes, and then no more than what is left.
#[tokio::test]
async fn a_refund_larger_than_what_is_left_is_declined() {
    for backend in backends() {
        let messages = [301, 200, 101, 100, 1]
            .iter()
            .enumerate()
            .map(|(i, minor)| Message::Refund(refund(&format!("f{i}"), *minor)))
            .collect::<Vec<_>>();
        let done = attack(&backend, &setup(), &messages).await;
        let exceeds = Reason::RefundExceedsPayment;
        assert_eq!(refused(&done.outcomes[0]), exceeds);
        assert!(matches!(
            done.outcomes[1].as_deref(),
            Ok([EventData::RefundCommitted(_)])
        ));
        assert_eq!(refused(&done.outcomes[2]), exceeds);
        assert!(matches!(
            done.outcomes[3].as_deref(),
            Ok([EventData::RefundCommitted(_)])
        ));
        assert_eq!(refused(&done.outcomes[4]), exceeds);
        assert_eq!(
            done.balances(),
            [("a", 1000, 0), ("b", 0, 0), ("c", 0, 0), ("e", 0, 0)]
        );
        assert_eq!(done.after.holds[0].refunded_minor, 300);
    }
}

/// A refund whose amount is negative (which would run the refund
/// backwards: "-7.00" from the payer to the payee), zero, or finer than
/// the currency is poison, and moves nothing.
#[tokio::test]
async fn a_refund_of_an_amount_not_positive_is_poison() {
    for backend in backends() {
        let with = |id: &str, amount: Decimal| {
            Message::Refund(RefundData {
                amount,
                ..refund(id, 1)
            })
        };
        let messages = [
            with("f1", Decimal::new(-700, 2)),
            with("f2", Decimal::ZERO),
            with("f3", Decimal::new(1, 3)),
        ];
        let done = attack(&backend, &setup(), &messages).await;
        for outcome in &done.outcomes {
            let why = poisoned(outcome);
            assert!(
                why.starts_with("invalid amount in event: refund f"),
                "{why}"
            );
        }
        done.assert_nothing_moved();
        assert_eq!(done.after.refunds, done.before.refunds);
    }
}

/// A refund of a payment with no committed transfer (unknown, only
/// reserved, released, or declined) is declined as a record mismatch.
#[tokio::test]
async fn a_refund_without_a_committed_transfer_is_declined() {
    for backend in backends() {
        let alices = |id: &str| PaymentData {
            principal: Some("alice".into()),
            ..pay(id, "a", "b", 100, usd())
        };
        let setup = [
            setup(),
            vec![
                Message::Reserve(alices("p2")),
                Message::Reserve(alices("p3")),
                capture_failed(alices("p3")),
                Message::Reserve(pay("p4", "a", "b", 100, usd())), // not alice's
            ],
        ]
        .concat();
        let messages = ["p2", "p3", "p4", "p9"].map(|id| {
            Message::Refund(RefundData {
                principal: Some("bob".into()),
                ..refund_data(&format!("f-{id}"), &alices(id), 100)
            })
        });
        let done = attack(&backend, &setup, &messages).await;
        for outcome in &done.outcomes {
            assert_eq!(refused(outcome), Reason::RecordMismatch, "{outcome:?}");
        }
        done.assert_nothing_moved();
        // p2's hold is still held.
        assert_eq!(
            done.balances(),
            [("a", 700, 100), ("b", 300, 0), ("c", 0, 0), ("e", 0, 0)]
        );
    }
}

/// A capture or a failed capture whose amount or wallets differ from the
/// hold is poison: the hold stays reserved and nothing moves; the event
/// that matches then commits it. So is a capture with no hold at all.
#[tokio::test]
async fn a_commit_or_release_that_disagrees_with_the_hold_is_poison() {
    for backend in backends() {
        let p2 = PaymentData {
            principal: Some("alice".into()),
            ..pay("p2", "a", "b", 100, usd())
        };
        let setup = [setup(), vec![Message::Reserve(p2.clone())]].concat();
        let bigger = PaymentData {
            amount: Decimal::new(100_000, 2),
            ..p2.clone()
        };
        let to_mallory = PaymentData {
            to_wallet: "c".into(),
            ..p2.clone()
        };
        let from_bob = PaymentData {
            from_wallet: "b".into(),
            ..p2.clone()
        };
        let smaller = PaymentData {
            amount: Decimal::new(50, 2),
            ..p2.clone()
        };
        let in_euros = PaymentData {
            currency: eur(),
            ..p2.clone()
        };
        let messages = [
            Message::Commit(bigger),
            Message::Commit(to_mallory.clone()),
            Message::Commit(from_bob),
            Message::Commit(in_euros),
            capture_failed(smaller),
            capture_failed(to_mallory),
            Message::Commit(pay("p9", "a", "c", 100, usd())),
        ];
        let done = attack(&backend, &setup, &messages).await;
        for outcome in &done.outcomes {
            let why = poisoned(outcome);
            assert!(why.starts_with("record_mismatch: payment p"), "{why}");
        }
        assert!(poisoned(&done.outcomes[0]).contains("amount_minor is 100000"));
        assert!(poisoned(&done.outcomes[1]).contains("to_wallet is \"c\""));
        assert!(poisoned(&done.outcomes[6]).contains("no hold"));
        done.assert_nothing_moved();
        assert_eq!(done.after.holds[1].state, HoldState::Reserved);

        // The capture that matches its hold commits it.
        let done = attack(&backend, &setup, &[Message::Commit(p2)]).await;
        assert!(matches!(
            done.outcomes[0].as_deref(),
            Ok([EventData::TransferCommitted(_)])
        ));
        assert_eq!(
            done.balances(),
            [("a", 600, 0), ("b", 400, 0), ("c", 0, 0), ("e", 0, 0)]
        );
    }
}
