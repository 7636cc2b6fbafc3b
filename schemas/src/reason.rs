//! Machine-readable reasons for refusing a command or failing a saga.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a command was refused or a saga step failed. Serialized in
/// `snake_case`; clients match on these strings, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A required field is absent (or `null`).
    MissingField,
    /// A field has the wrong JSON type (an amount sent as a number, say).
    InvalidField,
    /// An id is not 1–64 characters of `[A-Za-z0-9_-]`.
    InvalidId,
    /// An amount is not a decimal string.
    InvalidAmount,
    /// An amount is zero or negative.
    AmountNotPositive,
    /// An amount has more fraction digits than its currency's minor units.
    AmountScaleExceedsCurrency,
    /// An amount does not fit the ledger's 64-bit minor units.
    AmountTooLarge,
    /// A currency code is not in the ISO 4217 table.
    UnknownCurrency,
    /// The command's currency differs from the wallet's or payment's.
    CurrencyMismatch,
    /// A payment's source and destination are the same wallet.
    SameWallet,
    /// The idempotency key was used before by a command with other fields.
    IdempotencyKeyReused,
    /// A command arrived on a subject no actor handles.
    UnknownCommand,
    /// A wallet named by the command does not exist.
    WalletNotFound,
    /// A refund names a payment that does not exist.
    PaymentNotFound,
    /// A refund names a payment that has not completed.
    PaymentNotRefundable,
    /// A refund's amount exceeds what is left to refund of the payment.
    RefundExceedsPayment,
    /// The paying wallet's available balance is below the amount.
    InsufficientFunds,
    /// Risk refused the payment (see the risk reasons).
    RiskRejected,
    /// The amount exceeds the configured maximum for its currency.
    AmountLimitExceeded,
    /// Too many payments, or too much money, from one wallet in the window.
    VelocityExceeded,
    /// A wallet on the payment is on the block list.
    WalletBlocked,
    /// The settlement provider declined the capture.
    CaptureDeclined,
    /// The saga did not finish before its deadline.
    DeadlineExceeded,
    /// A command's subject names no valid principal
    /// (`falcon.cmd.<aggregate>.<verb>.<principal>`).
    Unauthenticated,
    /// The command's principal does not own the wallet it would pay from.
    NotWalletOwner,
    /// A deposit from a principal other than the treasury.
    NotTreasury,
    /// An event disagrees with the actor's own records of its payment,
    /// hold or transfer (amount, wallets, currency, or there is none).
    RecordMismatch,
}

impl Reason {
    /// The wire string, e.g. `"insufficient_funds"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidAmount => "invalid_amount",
            Reason::AmountNotPositive => "amount_not_positive",
            Reason::AmountScaleExceedsCurrency => "amount_scale_exceeds_currency",
            Reason::AmountTooLarge => "amount_too_large",
            Reason::UnknownCurrency => "unknown_currency",
            Reason::CurrencyMismatch => "currency_mismatch",
            Reason::SameWallet => "same_wallet",
            Reason::IdempotencyKeyReused => "idempotency_key_reused",
            Reason::UnknownCommand => "unknown_command",
            Reason::WalletNotFound => "wallet_not_found",
            Reason::PaymentNotFound => "payment_not_found",
            Reason::PaymentNotRefundable => "payment_not_refundable",
            Reason::RefundExceedsPayment => "refund_exceeds_payment",
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::RiskRejected => "risk_rejected",
            Reason::AmountLimitExceeded => "amount_limit_exceeded",
            Reason::VelocityExceeded => "velocity_exceeded",
            Reason::WalletBlocked => "wallet_blocked",
            Reason::CaptureDeclined => "capture_declined",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::Unauthenticated => "unauthenticated",
            Reason::NotWalletOwner => "not_wallet_owner",
            Reason::NotTreasury => "not_treasury",
            Reason::RecordMismatch => "record_mismatch",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a [`Reason`] for machines, a message for people, and the field
/// it concerns when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: Reason,
    pub field: Option<&'static str>,
    pub message: String,
}

impl Invalid {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            field: None,
            message: message.into(),
        }
    }

    pub fn field(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            field: Some(field),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_match_serde() {
        for r in [
            Reason::MissingField,
            Reason::AmountScaleExceedsCurrency,
            Reason::IdempotencyKeyReused,
            Reason::DeadlineExceeded,
            Reason::NotWalletOwner,
            Reason::RecordMismatch,
        ] {
            let json = serde_json::to_string(&r).expect("a unit enum serializes");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
