//! The states are stored as the strings they always were, in columns of the
//! type a `String` field gets (so existing databases stay valid), and the
//! circulation migration back-fills an existing database from its ledger.

use chrono::Utc;
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, EntityTrait, Iterable, QueryFilter, QueryOrder, Set,
    Statement,
};
use sea_orm_migration::MigratorTrait;

use super::*;
use crate::{HoldState, RefundState, FUNDING_ACCOUNT};

#[test]
fn states_are_stored_as_their_strings() {
    let holds: Vec<&str> = HoldState::iter().map(HoldState::as_str).collect();
    assert_eq!(holds, ["reserved", "committed", "released", "declined"]);
    for state in HoldState::iter() {
        assert_eq!(state.to_value(), state.as_str());
        assert_eq!(HoldState::parse(state.as_str()), Some(state));
    }
    let refunds: Vec<&str> = RefundState::iter().map(RefundState::as_str).collect();
    assert_eq!(refunds, ["committed", "declined"]);
    for state in RefundState::iter() {
        assert_eq!(state.to_value(), state.as_str());
        assert_eq!(RefundState::parse(state.as_str()), Some(state));
    }
    assert_eq!(HoldState::parse("held"), None);
    // The column types a `String` field gets, on every backend.
    assert_eq!(
        hold::Column::State.def().get_column_type(),
        hold::Column::Currency.def().get_column_type()
    );
    assert_eq!(
        refund::Column::State.def().get_column_type(),
        refund::Column::Currency.def().get_column_type()
    );
}

/// Rows written with the old strings are read as states.
#[tokio::test]
async fn rows_with_the_stored_strings_read_as_states() {
    let db = db().await;
    let now = Utc::now();
    for (id, state) in [("p1", "reserved"), ("p2", "declined")] {
        db.execute_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "INSERT INTO holds (payment_id, wallet_id, to_wallet, amount_minor, currency, state, created_at, updated_at) VALUES (?, 'a', 'b', 1, 'USD', ?, ?, ?)",
            [id.into(), state.into(), now.into(), now.into()],
        ))
        .await
        .expect("an old row");
    }
    let states: Vec<(String, HoldState)> = hold::Entity::find()
        .order_by_asc(hold::Column::PaymentId)
        .all(&db)
        .await
        .expect("holds")
        .into_iter()
        .map(|h| (h.payment_id, h.state))
        .collect();
    assert_eq!(
        states,
        [
            ("p1".to_owned(), HoldState::Reserved),
            ("p2".to_owned(), HoldState::Declined)
        ]
    );
    let declined = hold::Entity::find()
        .filter(hold::Column::State.eq(HoldState::Declined))
        .all(&db)
        .await
        .expect("holds");
    assert_eq!(declined.len(), 1);
}

/// A database with deposits but no circulation table (before m0002) gets
/// one row per currency: the sum of its deposits, summed exactly even past
/// `i64::MAX` (a database the old wrap reached), where the row is set to
/// the bound, so that the currency takes no more deposits.
#[tokio::test]
async fn the_migration_back_fills_circulation_from_the_ledger() {
    let db = falcon_kernel::store::memory_db(wallet::Entity).await;
    Migrator::up(&db, Some(1))
        .await
        .expect("the first migration");
    let now = Utc::now();
    let entries = [
        ("deposit:1", FUNDING_ACCOUNT, -150, "USD"),
        ("deposit:1", "a", 150, "USD"),
        ("deposit:2", FUNDING_ACCOUNT, -50, "USD"),
        ("deposit:2", "b", 50, "USD"),
        ("transfer:p", "a", -20, "USD"),
        ("transfer:p", "b", 20, "USD"),
        ("deposit:3", FUNDING_ACCOUNT, -i64::MAX, "EUR"),
        ("deposit:3", "e", i64::MAX, "EUR"),
        ("deposit:4", FUNDING_ACCOUNT, -i64::MAX, "EUR"),
        ("deposit:4", "f", i64::MAX, "EUR"),
    ];
    for (movement, account, amount, currency) in entries {
        ledger_entry::Entity::insert(ledger_entry::ActiveModel {
            movement_id: Set(movement.into()),
            account: Set(account.into()),
            amount_minor: Set(amount),
            currency: Set(currency.into()),
            created_at: Set(now),
            ..Default::default()
        })
        .exec(&db)
        .await
        .expect("an entry");
    }
    Migrator::up(&db, None)
        .await
        .expect("the circulation migration");
    let rows: Vec<(String, i64)> = circulation::Entity::find()
        .filter(circulation::Column::Currency.is_not_null())
        .all(&db)
        .await
        .expect("circulation")
        .into_iter()
        .map(|c| (c.currency, c.deposited_minor))
        .collect();
    let mut rows = rows;
    rows.sort();
    assert_eq!(
        rows,
        [("EUR".to_owned(), i64::MAX), ("USD".to_owned(), 200)]
    );
    // The next deposit counts on from there.
    let wallets = [open("a", "o", usd()), deposit("a", 5, usd(), "d-5")];
    one_by_one(&db, &wallets).await;
    let usd = circulation::Entity::find_by_id("USD".to_owned())
        .one(&db)
        .await
        .expect("read")
        .map(|c| c.deposited_minor);
    assert_eq!(usd, Some(205));
}
