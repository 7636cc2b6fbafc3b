//! Hand-picked batches through the book against the same messages one by
//! one through the steps, and the guards of both paths' writes.

use chrono::Utc;
use falcon_kernel::StepError;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use super::*;
use crate::HoldState;

/// Wallets a (1000), b (0), c (50) in USD and e (500) in EUR.
fn setup() -> Vec<Message> {
    vec![
        open("a", "o", usd()),
        open("b", "o", usd()),
        open("c", "o", usd()),
        open("e", "o", eur()),
        deposit("a", 1000, usd(), "d-a"),
        deposit("c", 50, usd(), "d-c"),
        deposit("e", 500, eur(), "d-e"),
    ]
}

fn approved(p: PaymentData) -> Message {
    Message::Reserve(p)
}

fn captured(p: PaymentData) -> Message {
    Message::Commit(p)
}

/// Opens and deposits (with repeats and refusals), reservations that pass
/// and fail each check, commits, releases with and without a hold, refunds
/// that pass and fail, and repeats, in batches (so that later ones read
/// earlier ones' rows): the book leaves the same rows and emits the same
/// events as the steps one message at a time.
#[tokio::test]
async fn a_batch_moves_money_like_its_steps_one_by_one() {
    let p = |id, from, to, minor| pay(id, from, to, minor, usd());
    let batches: Vec<Vec<Message>> = vec![
        [
            setup(),
            vec![
                open("a", "someone else", usd()), // the key reused
                open("a", "o", usd()),            // a repeat
                deposit("a", 1000, usd(), "d-a"), // a repeat
                deposit("b", 5, usd(), "d-a"),    // the reference reused
                deposit("e", 5, usd(), "d-x"),    // e holds EUR
                deposit("zz", 5, usd(), "d-y"),   // no such wallet
            ],
        ]
        .concat(),
        vec![
            approved(p("p1", "a", "b", 300)),
            approved(p("p2", "c", "b", 100)), // too little in c
            approved(p("p3", "a", "e", 10)),  // e holds EUR
            approved(p("p4", "a", "zz", 10)), // no such wallet
            approved(p("p5", "a", "b", 600)),
            approved(p("p6", "a", "b", 200)),      // 100 left in a
            capture_failed(p("p7", "a", "b", 10)), // released before reserved
            approved(p("p7", "a", "b", 10)),
            approved(p("p1", "a", "b", 300)), // a repeat
        ],
        vec![
            captured(p("p1", "a", "b", 300)),
            capture_failed(p("p5", "a", "b", 600)),
            approved(p("p8", "a", "b", 650)), // fits once p5 is released
            capture_failed(p("p2", "c", "b", 100)), // declined: released at once
            captured(p("p1", "a", "b", 300)), // a repeat
            capture_failed(p("p5", "a", "b", 600)), // a repeat
            refund_of("f1", &p("p1", "a", "b", 300), 100),
            refund_of("f2", &p("p1", "a", "b", 300), 250), // 200 left in b
            refund_of("f1", &p("p1", "a", "b", 300), 100), // a repeat
        ],
        vec![
            captured(p("p8", "a", "b", 650)),
            refund_of("f3", &p("p8", "a", "b", 650), 650),
            captured(p("p9", "a", "b", 1)), // no hold: poison
        ],
    ];
    let messages: Vec<Message> = batches.concat();
    let one = db().await;
    let expected = one_by_one(&one, &messages).await;
    let booked = db().await;
    let slices: Vec<&[Message]> = batches.iter().map(Vec::as_slice).collect();
    assert_eq!(by_book(&booked, &slices).await, expected);
    let expected = contents(&one).await;
    assert_eq!(contents(&booked).await, expected);
    let balances: Vec<(&str, i64, i64)> = expected
        .wallets
        .iter()
        .map(|w| (w.wallet_id.as_str(), w.balance_minor, w.held_minor))
        .collect();
    assert_eq!(
        balances,
        [("a", 800, 0), ("b", 200, 0), ("c", 50, 0), ("e", 500, 0)]
    );
    assert!(violations(&booked).await.is_empty());
    assert_eq!(
        expected.refunds.iter().map(|r| r.state).collect::<Vec<_>>(),
        [
            crate::RefundState::Committed,
            crate::RefundState::Declined,
            crate::RefundState::Committed
        ]
    );
}

/// A wallet another writer changed after the book read it is not
/// overwritten: the write is a conflict (the batch reruns).
#[tokio::test]
async fn a_wallet_changed_meanwhile_is_a_conflict_for_the_book() {
    let db = db().await;
    one_by_one(&db, &setup()).await;
    let batch = vec![approved(pay("p1", "a", "b", 300, usd()))];
    let txn = db.begin().await.expect("txn");
    let mut book = Book::read(&txn, &batch).await.expect("read");
    txn.commit().await.expect("commit");
    let mut out = Outbox::standalone("falcon/wallet", "cause".into(), Utc::now());
    book.apply(&batch[0], &crate::decide::Policy::default(), &mut out)
        .expect("reserved in memory");
    change_balance(&db, "a", 10).await;
    let txn = db.begin().await.expect("txn");
    let err = book.write(&txn).await.expect_err("stale");
    assert!(matches!(err, StepError::Conflict(_)), "{err}");
}

async fn change_balance(db: &DatabaseConnection, wallet_id: &str, minor: i64) {
    wallet::Entity::update_many()
        .col_expr(wallet::Column::BalanceMinor, Expr::value(minor))
        .filter(wallet::Column::WalletId.eq(wallet_id))
        .exec(db)
        .await
        .expect("changed meanwhile");
}

/// The same on the one-message path: each of its guarded writes (a
/// wallet's balances, a claimed key, a hold's state, a currency's
/// circulation) finds the row as it was read, or the step is a conflict.
#[tokio::test]
async fn a_row_changed_meanwhile_is_a_conflict_for_the_steps() {
    use crate::steps::tests::read_then_write;
    let db = db().await;
    one_by_one(&db, &setup()).await;
    let p1 = pay("p1", "a", "b", 300, usd());
    // A wallet's balances.
    let step = read_then_write(&db, &approved(p1.clone()), |db| async move {
        change_balance(&db, "a", 10).await;
    })
    .await;
    assert!(matches!(step, Err(StepError::Conflict(_))), "{step:?}");
    // A claimed key: the hold another writer inserted (for the payment
    // as that writer's event had it, which is the record from then on).
    let step = read_then_write(&db, &approved(p1.clone()), |db| async move {
        one_by_one(&db, &[approved(pay("p1", "c", "b", 5, usd()))]).await;
    })
    .await;
    assert!(matches!(step, Err(StepError::Conflict(_))), "{step:?}");
    let p1 = pay("p1", "c", "b", 5, usd());
    // A hold's state.
    let step = read_then_write(&db, &captured(p1.clone()), |db| async move {
        hold::Entity::update_many()
            .col_expr(hold::Column::State, Expr::value(HoldState::Released))
            .filter(hold::Column::PaymentId.eq("p1"))
            .exec(&db)
            .await
            .expect("released meanwhile");
    })
    .await;
    assert!(matches!(step, Err(StepError::Conflict(_))), "{step:?}");
    // A transfer's refunded amount: two refunds of it racing.
    let p2 = pay("p2", "c", "b", 20, usd());
    one_by_one(&db, &[approved(p2.clone()), captured(p2.clone())]).await;
    let step = read_then_write(&db, &refund_of("f1", &p2, 15), |db| async move {
        let raced = one_by_one(&db, &[refund_of("f2", &p2, 15)]).await;
        assert!(
            matches!(raced[0].as_deref(), Ok([EventData::RefundCommitted(_)])),
            "{raced:?}"
        );
    })
    .await;
    assert!(
        matches!(&step, Err(StepError::Conflict(m)) if m.contains("hold p2")),
        "{step:?}"
    );
    // A currency's circulation.
    let step = read_then_write(&db, &deposit("b", 1, usd(), "d-b"), |db| async move {
        one_by_one(&db, &[deposit("c", 1, usd(), "d-c2")]).await;
    })
    .await;
    assert!(matches!(step, Err(StepError::Conflict(_))), "{step:?}");
    // Nothing of the conflicting steps was written.
    let after = contents(&db).await;
    assert!(after.deposits.iter().all(|d| d.reference != "d-b"));
    let usd = after.circulation.iter().find(|c| c.currency == "USD");
    assert_eq!(usd.map(|c| c.deposited_minor), Some(1051));
}
