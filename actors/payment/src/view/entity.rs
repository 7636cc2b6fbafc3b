//! The saga view's table: one row per saga.

pub mod saga_view {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saga_view")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub saga_id: String,
        /// `payment` or `refund` (`falcon_sagas::SagaKind::as_str`).
        pub kind: String,
        /// A saga state (`falcon_sagas::State::as_str`), or
        /// [`UNKNOWN`](crate::view::UNKNOWN) while the saga's events fold
        /// to none.
        #[sea_orm(indexed)]
        pub state: String,
        pub terminal: bool,
        /// Decimal string with the currency's minor units; empty for a
        /// rejected command.
        pub amount: String,
        pub currency: String,
        pub from_wallet: String,
        pub to_wallet: String,
        /// The payment a refund belongs to (the saga itself for payments).
        pub payment_id: String,
        pub reason: Option<String>,
        #[sea_orm(indexed)]
        pub started_at: ChronoDateTimeUtc,
        #[sea_orm(indexed)]
        pub updated_at: ChronoDateTimeUtc,
        /// FALCON_EVT sequence of the last event applied.
        pub last_seq: i64,
        /// Events the state machine refused (out of order or foreign).
        pub anomalies: i32,
        /// The saga's event types seen so far, one bit each in
        /// [`CANONICAL`](crate::view::CANONICAL) order: the state is folded
        /// from this set, so it does not depend on the order the events
        /// were delivered in.
        pub events_seen: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
