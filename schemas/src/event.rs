//! Events: the CloudEvents 1.0 envelope (structured mode) and every event's
//! `data`.
//!
//! Subjects are `falcon.evt.<aggregate>.<event>.<key>`; the key is the saga
//! id for saga events (the payment id, or the refund id for a refund saga)
//! and the wallet id for wallet-only events. The envelope's `sagaid` is that
//! same key.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::currency::Currency;
use crate::money::Money;
use crate::reason::Reason;
use crate::subject::EVT_PREFIX;

/// CloudEvents spec version of every envelope.
pub const SPEC_VERSION: &str = "1.0";
/// `datacontenttype` of every envelope.
pub const CONTENT_TYPE: &str = "application/json";

/// The details every payment saga event carries, so that each actor can take
/// its step from the event alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentData {
    pub payment_id: String,
    pub from_wallet: String,
    pub to_wallet: String,
    /// Decimal string, scale at most the currency's minor units.
    pub amount: Decimal,
    pub currency: Currency,
    /// The authenticated principal whose command started the payment (the
    /// last token of its command subject); the wallet reserves only when
    /// it owns `from_wallet`. Absent on events from before identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

impl PaymentData {
    /// The amount as [`Money`]; fails only on a malformed event.
    pub fn money(&self) -> Result<Money, crate::Invalid> {
        Money::new(self.amount, self.currency)
    }
}

/// `payment.captured`: the provider settled the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedData {
    #[serde(flatten)]
    pub payment: PaymentData,
    /// The provider's reference for the settlement.
    pub settlement_id: String,
}

/// `risk.approved` / `risk.rejected`: the decision with its score (0–100,
/// higher is riskier) and the rules that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskData {
    #[serde(flatten)]
    pub payment: PaymentData,
    pub score: u32,
    pub risk_reasons: Vec<Reason>,
}

/// A failed step of a payment saga: `wallet.reservation_declined`,
/// `payment.capture_failed`, `wallet.funds_released`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureData {
    #[serde(flatten)]
    pub payment: PaymentData,
    pub reason: Reason,
    pub message: String,
}

/// `payment.failed`: the terminal failure; `compensated` is true when held
/// funds were released on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailedData {
    #[serde(flatten)]
    pub payment: PaymentData,
    pub reason: Reason,
    pub message: String,
    pub compensated: bool,
}

/// What a reconciliation found disagreeing for one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// A completed payment with no standing charge at the provider.
    ProviderMissing,
    /// A standing charge at the provider for a payment that failed, or
    /// that FalconPay never completed.
    ProviderUnexpected,
    /// The provider charged another amount or currency than the payment's.
    ProviderAmount,
    /// A completed payment whose transfer the wallet ledger does not hold.
    WalletMissing,
    /// A transfer in the wallet ledger for a payment that failed, or that
    /// FalconPay never completed.
    WalletUnexpected,
    /// The wallet moved another amount than the payment's.
    WalletAmount,
    /// The refunds the payment records and those the wallet moved differ.
    RefundDiffers,
}

impl MismatchKind {
    pub const ALL: [MismatchKind; 7] = [
        MismatchKind::ProviderMissing,
        MismatchKind::ProviderUnexpected,
        MismatchKind::ProviderAmount,
        MismatchKind::WalletMissing,
        MismatchKind::WalletUnexpected,
        MismatchKind::WalletAmount,
        MismatchKind::RefundDiffers,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            MismatchKind::ProviderMissing => "provider_missing",
            MismatchKind::ProviderUnexpected => "provider_unexpected",
            MismatchKind::ProviderAmount => "provider_amount",
            MismatchKind::WalletMissing => "wallet_missing",
            MismatchKind::WalletUnexpected => "wallet_unexpected",
            MismatchKind::WalletAmount => "wallet_amount",
            MismatchKind::RefundDiffers => "refund_differs",
        }
    }

    pub fn parse(s: &str) -> Option<MismatchKind> {
        MismatchKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for MismatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `recon.mismatch`: the wallet ledger, the payment's state and the
/// provider's settlement disagree for one payment. Amounts are in minor
/// units of `currency`; a source that holds nothing is null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MismatchData {
    /// The payment id; for a provider record whose key is no payment id,
    /// `provider-<seq>` (the record's sequence at the provider).
    pub key: String,
    pub kind: MismatchKind,
    /// The payment's currency, or the provider's when only it knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// `completed`, `failed`, or null when no outcome of the payment was
    /// seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_state: Option<String>,
    /// The payment's amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_minor: Option<i64>,
    /// What the wallet ledger moved for the payment (or, for
    /// `refund_differs`, refunded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_minor: Option<i64>,
    /// The provider's record: `charged`, `declined`, `voided`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
    /// What the provider's record is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_minor: Option<i64>,
    /// How much money the sources are apart, at least 0.
    pub difference_minor: i64,
    pub message: String,
    /// What the actor did about it: `voided` (a standing charge for a
    /// failed payment, voided at the provider); null for nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// A refund saga event. `from_wallet` and `to_wallet` are the original
/// payment's: the refund moves `amount` from `to_wallet` back to `from_wallet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundData {
    pub refund_id: String,
    pub payment_id: String,
    pub from_wallet: String,
    pub to_wallet: String,
    pub amount: Decimal,
    pub currency: Currency,
    /// The authenticated principal whose command asked for the refund; the
    /// wallet refunds only when it owns `to_wallet` (the one that pays the
    /// refund). Absent on events from before identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

impl RefundData {
    pub fn money(&self) -> Result<Money, crate::Invalid> {
        Money::new(self.amount, self.currency)
    }
}

/// `wallet.refund_declined` / `payment.refund_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundFailureData {
    #[serde(flatten)]
    pub refund: RefundData,
    pub reason: Reason,
    pub message: String,
}

/// `payment.rejected` / `wallet.rejected`: a command that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedData {
    /// The command's name, e.g. `payment.create`.
    pub command: String,
    /// The subject key: the command's id, or `unkeyed~<stream_seq>` when the
    /// command had no valid one.
    pub key: String,
    pub reason: Reason,
    pub message: String,
    /// The offending field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `wallet.opened`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletOpenedData {
    pub wallet_id: String,
    pub owner: String,
    pub currency: Currency,
}

/// `wallet.deposited`: money moved from the system funding account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositedData {
    pub wallet_id: String,
    pub reference: String,
    pub amount: Decimal,
    pub currency: Currency,
}

macro_rules! events {
    ($( $variant:ident => ($agg:literal, $name:literal, $data:ident) ),* $(,)?) => {
        /// Every event type of the contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType { $($variant),* }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// `payment`, `risk` or `wallet`.
            pub fn aggregate(&self) -> &'static str {
                match self { $(EventType::$variant => $agg),* }
            }

            /// `requested`, `funds_reserved`, …
            pub fn name(&self) -> &'static str {
                match self { $(EventType::$variant => $name),* }
            }

            /// The CloudEvents `type`, e.g. `falcon.payment.requested.v1`.
            pub fn type_str(&self) -> &'static str {
                match self { $(EventType::$variant => concat!("falcon.", $agg, ".", $name, ".v1")),* }
            }

            pub fn from_type_str(s: &str) -> Option<EventType> {
                match s {
                    $(concat!("falcon.", $agg, ".", $name, ".v1") => Some(EventType::$variant),)*
                    _ => None,
                }
            }

            /// `aggregate.name`, e.g. `wallet.funds_reserved`.
            pub fn short(&self) -> &'static str {
                match self { $(EventType::$variant => concat!($agg, ".", $name)),* }
            }

            /// The subject filter for every event of this type.
            pub fn filter(&self) -> String {
                format!("{EVT_PREFIX}{}.*", self.short())
            }
        }

        /// An event's `data`, typed by its event type.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum EventData { $($variant($data)),* }

        impl EventData {
            pub fn event_type(&self) -> EventType {
                match self { $(EventData::$variant(_) => EventType::$variant),* }
            }

            /// Decodes `data` of the given type.
            pub fn from_value(ty: EventType, data: Value) -> Result<EventData, serde_json::Error> {
                Ok(match ty { $(EventType::$variant => EventData::$variant(serde_json::from_value(data)?)),* })
            }
        }
    };
}

events! {
    PaymentRequested => ("payment", "requested", PaymentData),
    PaymentRejected => ("payment", "rejected", RejectedData),
    PaymentCaptured => ("payment", "captured", CapturedData),
    PaymentCaptureFailed => ("payment", "capture_failed", FailureData),
    PaymentCompleted => ("payment", "completed", PaymentData),
    PaymentFailed => ("payment", "failed", PaymentFailedData),
    RefundRequested => ("payment", "refund_requested", RefundData),
    PaymentRefunded => ("payment", "refunded", RefundData),
    RefundFailed => ("payment", "refund_failed", RefundFailureData),
    RiskApproved => ("risk", "approved", RiskData),
    RiskRejected => ("risk", "rejected", RiskData),
    WalletOpened => ("wallet", "opened", WalletOpenedData),
    WalletDeposited => ("wallet", "deposited", DepositedData),
    WalletRejected => ("wallet", "rejected", RejectedData),
    FundsReserved => ("wallet", "funds_reserved", PaymentData),
    ReservationDeclined => ("wallet", "reservation_declined", FailureData),
    TransferCommitted => ("wallet", "transfer_committed", PaymentData),
    FundsReleased => ("wallet", "funds_released", FailureData),
    RefundCommitted => ("wallet", "refund_committed", RefundData),
    RefundDeclined => ("wallet", "refund_declined", RefundFailureData),
    ReconMismatch => ("recon", "mismatch", MismatchData),
}

impl EventData {
    /// The subject key and saga id: payment id, refund id, wallet id, or a
    /// rejection's key.
    pub fn key(&self) -> &str {
        use EventData::*;
        match self {
            PaymentRequested(d) | PaymentCompleted(d) | FundsReserved(d) | TransferCommitted(d) => {
                &d.payment_id
            }
            PaymentCaptured(d) => &d.payment.payment_id,
            PaymentCaptureFailed(d) | ReservationDeclined(d) | FundsReleased(d) => {
                &d.payment.payment_id
            }
            PaymentFailed(d) => &d.payment.payment_id,
            RiskApproved(d) | RiskRejected(d) => &d.payment.payment_id,
            RefundRequested(d) | PaymentRefunded(d) | RefundCommitted(d) => &d.refund_id,
            RefundFailed(d) | RefundDeclined(d) => &d.refund.refund_id,
            PaymentRejected(d) | WalletRejected(d) => &d.key,
            WalletOpened(d) => &d.wallet_id,
            WalletDeposited(d) => &d.wallet_id,
            ReconMismatch(d) => &d.key,
        }
    }

    /// `falcon.evt.<aggregate>.<event>.<key>`.
    pub fn subject(&self) -> String {
        format!("{EVT_PREFIX}{}.{}", self.event_type().short(), self.key())
    }

    /// The payment details, for payment saga events.
    pub fn payment(&self) -> Option<&PaymentData> {
        use EventData::*;
        match self {
            PaymentRequested(d) | PaymentCompleted(d) | FundsReserved(d) | TransferCommitted(d) => {
                Some(d)
            }
            PaymentCaptured(d) => Some(&d.payment),
            PaymentCaptureFailed(d) | ReservationDeclined(d) | FundsReleased(d) => Some(&d.payment),
            PaymentFailed(d) => Some(&d.payment),
            RiskApproved(d) | RiskRejected(d) => Some(&d.payment),
            _ => None,
        }
    }

    /// The refund details, for refund saga events.
    pub fn refund(&self) -> Option<&RefundData> {
        use EventData::*;
        match self {
            RefundRequested(d) | PaymentRefunded(d) | RefundCommitted(d) => Some(d),
            RefundFailed(d) | RefundDeclined(d) => Some(&d.refund),
            _ => None,
        }
    }
}

/// A CloudEvents 1.0 envelope in structured mode, with FalconPay's extension
/// attributes `sagaid`, `causationid` and `traceparent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<D> {
    pub specversion: String,
    /// Unique; also sent as `Nats-Msg-Id`.
    pub id: String,
    /// The actor that published it, e.g. `falcon/wallet`.
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The subject key (saga id or wallet id).
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub sagaid: String,
    /// The id of the message that caused this one.
    pub causationid: String,
    /// W3C trace context, also sent as a NATS header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: D,
}

/// An event with typed data.
pub type Event = Envelope<EventData>;

/// Why bytes are not an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a CloudEvents JSON envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("specversion {0:?} is not 1.0")]
    SpecVersion(String),
    #[error("data of {ty} does not match its schema: {source}")]
    Data {
        ty: &'static str,
        source: serde_json::Error,
    },
}

impl Event {
    /// A new event; `id` and `time` are passed in (this crate reads no clock).
    pub fn new(
        data: EventData,
        id: String,
        time: DateTime<Utc>,
        source: &str,
        causation_id: &str,
        traceparent: Option<String>,
    ) -> Event {
        let key = data.key().to_owned();
        Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id,
            source: source.to_owned(),
            ty: data.event_type().type_str().to_owned(),
            subject: key.clone(),
            time,
            datacontenttype: CONTENT_TYPE.to_owned(),
            sagaid: key,
            causationid: causation_id.to_owned(),
            traceparent,
            data,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// The NATS subject to publish on.
    pub fn nats_subject(&self) -> String {
        self.data.subject()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events hold only serializable values")
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let raw: Envelope<Value> = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
        if raw.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(raw.specversion));
        }
        let ty = EventType::from_type_str(&raw.ty)
            .ok_or_else(|| DecodeError::UnknownType(raw.ty.clone()))?;
        let data = EventData::from_value(ty, raw.data).map_err(|source| DecodeError::Data {
            ty: ty.type_str(),
            source,
        })?;
        Ok(Envelope {
            specversion: raw.specversion,
            id: raw.id,
            source: raw.source,
            ty: raw.ty,
            subject: raw.subject,
            time: raw.time,
            datacontenttype: raw.datacontenttype,
            sagaid: raw.sagaid,
            causationid: raw.causationid,
            traceparent: raw.traceparent,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").expect("USD is in the table")
    }

    #[test]
    fn type_strings_round_trip() {
        for ty in EventType::ALL {
            assert_eq!(EventType::from_type_str(ty.type_str()), Some(*ty));
            assert!(ty.type_str().starts_with("falcon."));
        }
        assert_eq!(
            EventType::FundsReserved.type_str(),
            "falcon.wallet.funds_reserved.v1"
        );
        assert_eq!(EventType::ALL.len(), 21);
    }

    #[test]
    fn envelope_round_trips() {
        let data = EventData::PaymentCaptured(CapturedData {
            payment: PaymentData {
                payment_id: "p1".into(),
                from_wallet: "a".into(),
                to_wallet: "b".into(),
                amount: Decimal::new(1250, 2),
                currency: usd(),
                principal: Some("alice".into()),
            },
            settlement_id: "s-1".into(),
        });
        let ev = Event::new(data, "e1".into(), Utc::now(), "falcon/payment", "c1", None);
        assert_eq!(ev.nats_subject(), "falcon.evt.payment.captured.p1");
        let bytes = ev.encode();
        let text = String::from_utf8(bytes.clone()).expect("JSON is UTF-8");
        assert!(
            text.contains("\"amount\":\"12.50\""),
            "amount is a string: {text}"
        );
        assert_eq!(Event::decode(&bytes).expect("own output decodes"), ev);
    }
}
