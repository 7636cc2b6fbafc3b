//! The wallet actor's tables. Money is `i64` minor units everywhere.

/// A wallet with its materialised balance. `balance_minor` always equals the
/// sum of the wallet's ledger entries; `held_minor` the sum of its reserved
/// holds; available = balance − held, never below zero.
pub mod wallet {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub wallet_id: String,
        pub owner: String,
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

/// A hold on a payment's source wallet, keyed by payment id: `reserved`,
/// then `committed` or `released`; `declined` records a reservation refused.
pub mod hold {
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
        pub currency: String,
        #[sea_orm(indexed)]
        pub state: String,
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

/// Refund movements by refund id: `committed` or `declined`.
pub mod refund {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallet_refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub refund_id: String,
        pub payment_id: String,
        pub amount_minor: i64,
        pub currency: String,
        pub state: String,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
