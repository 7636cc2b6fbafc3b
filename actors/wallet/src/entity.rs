//! The wallet actor's tables, and the states a hold and a refund can be in.
//! Money is `i64` minor units everywhere.

pub use states::{HoldState, RefundState};

/// The states of a hold and of a wallet refund, stored as the strings they
/// have always been (`reserved`, …), so existing databases stay valid.
mod states {
    use sea_orm::entity::prelude::*;

    /// Where a payment's hold is: `Reserved`, then `Committed` or
    /// `Released`; `Declined` records a reservation refused (nothing held).
    /// `Released` is also the tombstone a release leaves for a payment not
    /// yet reserved, so that a late reservation reserves nothing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum HoldState {
        #[sea_orm(string_value = "reserved")]
        Reserved,
        #[sea_orm(string_value = "committed")]
        Committed,
        #[sea_orm(string_value = "released")]
        Released,
        #[sea_orm(string_value = "declined")]
        Declined,
    }

    /// What became of a refund: its money moved (`Committed`) or not
    /// (`Declined`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum RefundState {
        #[sea_orm(string_value = "committed")]
        Committed,
        #[sea_orm(string_value = "declined")]
        Declined,
    }

    impl HoldState {
        /// The stored string.
        pub fn as_str(self) -> &'static str {
            match self {
                HoldState::Reserved => "reserved",
                HoldState::Committed => "committed",
                HoldState::Released => "released",
                HoldState::Declined => "declined",
            }
        }

        /// The state a stored string names; `None` for any other string.
        pub fn parse(s: &str) -> Option<HoldState> {
            <HoldState as sea_orm::Iterable>::iter().find(|h| h.as_str() == s)
        }
    }

    impl RefundState {
        /// The stored string.
        pub fn as_str(self) -> &'static str {
            match self {
                RefundState::Committed => "committed",
                RefundState::Declined => "declined",
            }
        }

        /// The state a stored string names; `None` for any other string.
        pub fn parse(s: &str) -> Option<RefundState> {
            <RefundState as sea_orm::Iterable>::iter().find(|r| r.as_str() == s)
        }
    }

    impl std::fmt::Display for HoldState {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl std::fmt::Display for RefundState {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }
}

/// A wallet with its materialised balance. `balance_minor` always equals the
/// sum of the wallet's ledger entries; `held_minor` the sum of its reserved
/// holds; available = balance − held, never below zero (the database
/// refuses a row that breaks either: see
/// [`migration`](crate::migration)'s `Checks`).
pub mod wallet {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub wallet_id: String,
        /// A display name given by the opener; it authorises nothing.
        pub owner: String,
        /// The authenticated principal that opened the wallet (the last
        /// token of its `wallet.open` subject): the only one that may pay
        /// from it, or refund from it. Wallets opened before identities
        /// were back-filled with their `owner`.
        pub principal: String,
        pub currency: String,
        pub balance_minor: i64,
        pub held_minor: i64,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A hold on a payment's source wallet, keyed by payment id, in a
/// [`HoldState`].
pub mod hold {
    use super::HoldState;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "holds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: String,
        #[sea_orm(indexed)]
        pub wallet_id: String,
        pub to_wallet: String,
        pub amount_minor: i64,
        /// Of a committed hold: how much of it refunds have moved back, at
        /// most `amount_minor`. Default 0.
        #[sea_orm(default_value = 0)]
        pub refunded_minor: i64,
        pub currency: String,
        #[sea_orm(indexed)]
        pub state: HoldState,
        /// The [`falcon_schemas::Reason`] string of a decline or release.
        pub reason: Option<String>,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The double-entry ledger: every movement is two or more entries that sum
/// to zero per currency. Accounts are wallet ids or system accounts
/// (`@funding`), which no wallet id can collide with.
pub mod ledger_entry {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_entries")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// `deposit:<reference>`, `transfer:<payment_id>`, `refund:<refund_id>`.
        #[sea_orm(indexed)]
        pub movement_id: String,
        #[sea_orm(indexed)]
        pub account: String,
        /// Signed: credit positive, debit negative.
        pub amount_minor: i64,
        pub currency: String,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Deposits by reference (the command's idempotency key).
pub mod deposit {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deposits")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reference: String,
        pub wallet_id: String,
        pub amount_minor: i64,
        pub currency: String,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Refund movements by refund id, in a [`RefundState`].
pub mod refund {
    use super::RefundState;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallet_refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub refund_id: String,
        pub payment_id: String,
        pub amount_minor: i64,
        pub currency: String,
        pub state: RefundState,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The money in circulation per currency: the sum of its deposits (minus
/// the `@funding` account's balance). Money enters a wallet only through a
/// deposit and no balance is negative, so no balance or held amount can be
/// larger than this; a deposit that would take it past `i64::MAX` is
/// refused, and so no balance anywhere can overflow.
pub mod circulation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallet_circulation")]
    pub struct Model {
        /// ISO 4217 code.
        #[sea_orm(primary_key, auto_increment = false)]
        pub currency: String,
        /// The sum of the currency's deposits, in its minor units.
        pub deposited_minor: i64,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
