//! The reconciliation actor's tables.

/// One payment's facts, as each source states them.
pub mod fact {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_facts")]
    pub struct Model {
        /// The payment id, or `provider-<seq>` for a provider record whose
        /// key is no payment id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// The payment's currency, from its events.
        pub currency: Option<String>,
        /// `completed` or `failed`; null while no outcome was seen.
        pub payment_state: Option<String>,
        pub payment_minor: Option<i64>,
        /// What the wallet moved for it (`wallet.transfer_committed`).
        pub wallet_minor: Option<i64>,
        /// Refunds the payment completed (`payment.refunded`), summed.
        pub payment_refunded_minor: i64,
        /// Refunds the wallet moved (`wallet.refund_committed`), summed.
        pub wallet_refunded_minor: i64,
        /// The provider's record: its sequence, status, amount, currency.
        pub provider_seq: Option<i64>,
        pub provider_status: Option<String>,
        pub provider_minor: Option<i64>,
        pub provider_currency: Option<String>,
        /// When a fact last changed.
        pub changed_at: ChronoDateTimeUtc,
        /// A fact changed since the row was last compared.
        #[sea_orm(indexed)]
        pub dirty: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every mismatch found: open until a comparison no longer finds it.
pub mod mismatch {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_mismatches")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: String,
        pub difference_minor: i64,
        /// The published `MismatchData`, as JSON.
        pub data: String,
        pub opened_at: ChronoDateTimeUtc,
        pub last_seen_at: ChronoDateTimeUtc,
        #[sea_orm(indexed)]
        pub resolved_at: Option<ChronoDateTimeUtc>,
        pub action: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One row per reconciliation run (the last [`crate::run::RUNS_KEPT`]).
pub mod run {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_runs")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub started_at: ChronoDateTimeUtc,
        pub finished_at: ChronoDateTimeUtc,
        /// Provider records read this run.
        pub provider_read: i64,
        /// `synced` (read to the end of its list), `behind` (more pages
        /// wait), `failed` (it did not answer), `none` (no provider to
        /// reconcile: the built-in simulator).
        pub provider: String,
        /// Payments compared.
        pub checked: i64,
        pub opened: i64,
        pub resolved: i64,
        /// Mismatches open after the run.
        pub open: i64,
        pub error: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Named positions: the provider checkpoint and the run lease.
pub mod state {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_state")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub position: i64,
        pub holder: Option<String>,
        pub until: Option<ChronoDateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
