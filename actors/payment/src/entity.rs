//! The payment actor's tables, and the states their `state` columns hold.
//!
//! A payment row's `state` is a payment saga state ([`falcon_sagas::State`],
//! stored as its `as_str`); a refund row's is a [`RefundState`]. Both stay
//! strings in the database, so an operator's SQL reads them; Rust code
//! reads them only through the enums ([`payment::Model::saga_state`],
//! [`refund::Model::refund_state`]) and never compares the strings.

use std::fmt;

use falcon_sagas::State;

/// One row per accepted `payment.create`, keyed by payment id. `state` is a
/// saga state (`falcon_sagas::State`); `refunded_minor` counts refunds
/// requested or done, so concurrent refunds cannot exceed the payment.
pub mod payment {
    use falcon_kernel::StepError;
    use falcon_schemas::event::PaymentData;
    use falcon_schemas::{Currency, Money};
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
        /// The authenticated principal whose `payment.create` it is (the
        /// last token of the command's subject), carried in every event
        /// built from the row; `None` for payments from before identities.
        pub principal: Option<String>,
        /// When the payment was first marked capturing, in a transaction of
        /// its own, before the provider was asked: from then on the
        /// provider may have charged, so the deadline no longer compensates
        /// the saga; only the provider's answer (asked again by the payment
        /// id, its idempotency key, after a crash or an outage) moves it.
        pub capture_started_at: Option<ChronoDateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        /// The saga state the row is in; `None` for a string that names no
        /// state (a row this code did not write).
        pub fn saga_state(&self) -> Option<falcon_sagas::State> {
            falcon_sagas::State::parse(&self.state)
        }

        /// The payment as its events carry it. A row whose currency is not
        /// known can never be published: poison.
        pub fn data(&self) -> Result<PaymentData, StepError> {
            let currency = Currency::from_code(&self.currency).ok_or_else(|| {
                StepError::Poison(format!(
                    "payment {} has unknown currency {}",
                    self.payment_id, self.currency
                ))
            })?;
            Ok(PaymentData {
                payment_id: self.payment_id.clone(),
                from_wallet: self.from_wallet.clone(),
                to_wallet: self.to_wallet.clone(),
                amount: Money::from_minor(self.amount_minor, currency).wire_amount(),
                currency,
                principal: self.principal.clone(),
            })
        }
    }
}

/// One row per accepted `payment.refund`, keyed by refund id. `state` is a
/// [`RefundState`] (stored as its `as_str`).
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
        /// The authenticated principal whose `payment.refund` it is,
        /// carried in the refund's events (the wallet refunds only for the
        /// payee wallet's owner); `None` for refunds from before identities.
        pub principal: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        /// The state the row is in; `None` for a string that names no
        /// refund state (a row this code did not write).
        pub fn refund_state(&self) -> Option<super::RefundState> {
            super::RefundState::parse(&self.state)
        }
    }
}

/// Where a refund row is. The database holds [`RefundState::as_str`]:
/// `refund_requested`, `refunded`, `refund_failed`, the names of the refund
/// saga's states the row can be in ([`RefundState::saga_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundState {
    /// Recorded, its amount counted in the payment's `refunded_minor`, and
    /// `payment.refund_requested` published: the wallet decides.
    Requested,
    /// The wallet moved the money back (`payment.refunded`). Terminal.
    Refunded,
    /// The wallet declined (`payment.refund_failed`); its amount is
    /// refundable again. Terminal.
    Failed,
}

impl RefundState {
    pub const ALL: [RefundState; 3] = [
        RefundState::Requested,
        RefundState::Refunded,
        RefundState::Failed,
    ];

    /// The string the database holds. These are stored: never rename one.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Requested => "refund_requested",
            RefundState::Refunded => "refunded",
            RefundState::Failed => "refund_failed",
        }
    }

    pub fn parse(s: &str) -> Option<RefundState> {
        RefundState::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The refund saga's state of the same name.
    pub fn saga_state(self) -> State {
        match self {
            RefundState::Requested => State::RefundRequested,
            RefundState::Refunded => State::Refunded,
            RefundState::Failed => State::RefundFailed,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.saga_state().is_terminal()
    }
}

impl fmt::Display for RefundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored strings are those rows were written with, and each is
    /// its saga state's name, so `falcon saga show` and the view agree.
    #[test]
    fn refund_states_keep_their_stored_strings() {
        let stored: Vec<&str> = RefundState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(stored, ["refund_requested", "refunded", "refund_failed"]);
        for s in RefundState::ALL {
            assert_eq!(RefundState::parse(s.as_str()), Some(s));
            assert_eq!(s.as_str(), s.saga_state().as_str());
        }
        assert_eq!(RefundState::parse("requested"), None);
        assert!(!RefundState::Requested.is_terminal());
        assert!(RefundState::Refunded.is_terminal() && RefundState::Failed.is_terminal());
    }
}
