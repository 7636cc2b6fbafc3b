//! The payment actor's tables.

/// One row per accepted `payment.create`, keyed by payment id. `state` is a
/// saga state (`falcon_sagas::State`); `refunded_minor` counts refunds
/// requested or done, so concurrent refunds cannot exceed the payment.
pub mod payment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: String,
        pub from_wallet: String,
        pub to_wallet: String,
        pub amount_minor: i64,
        pub currency: String,
        #[sea_orm(indexed)]
        pub state: String,
        pub reason: Option<String>,
        pub settlement_id: Option<String>,
        pub refunded_minor: i64,
        #[sea_orm(indexed)]
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
        /// When the saga must be terminal (compensated otherwise).
        pub deadline_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One row per accepted `payment.refund`, keyed by refund id.
pub mod refund {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub refund_id: String,
        #[sea_orm(indexed)]
        pub payment_id: String,
        pub amount_minor: i64,
        pub currency: String,
        #[sea_orm(indexed)]
        pub state: String,
        pub reason: Option<String>,
        #[sea_orm(indexed)]
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
