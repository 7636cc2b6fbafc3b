//! What the wallet is asked to do: a delivery decoded into a [`Message`],
//! the same for both paths. A body that is not a wallet command or an event
//! the saga table gives the wallet is poison; a command that fails
//! validation becomes its rejection, which needs no rows.

use falcon_nats::Delivery;
use falcon_sagas::Actor;
use falcon_schemas::command::{Deposit, OpenWallet};
use falcon_schemas::event::{FailureData, PaymentData, RefundData, RejectedData};
use falcon_schemas::subject::STREAM_CMD;
use falcon_schemas::{Command, EventData, ParseError};

use falcon_kernel::handler::decode_event;
use falcon_kernel::StepError;

/// One message for the wallet, by the step it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// `wallet.open`.
    Open(OpenWallet),
    /// `wallet.deposit`.
    Deposit(Deposit),
    /// A wallet command refused by validation: its rejection.
    Invalid(RejectedData),
    /// `risk.approved`: reserve the payment's funds.
    Reserve(PaymentData),
    /// `payment.captured`: commit the payment's hold.
    Commit(PaymentData),
    /// `payment.capture_failed`: release the payment's hold.
    Release(FailureData),
    /// `payment.refund_requested`: move the refund back.
    Refund(RefundData),
}

impl Message {
    /// Decodes a delivery from the wallet's consumers.
    pub(crate) fn decode(delivery: &Delivery) -> Result<Message, StepError> {
        if delivery.stream == STREAM_CMD {
            return match Command::parse(&delivery.subject, &delivery.payload) {
                Err(ParseError::Unparseable(e)) => Err(StepError::Poison(e)),
                Err(ParseError::Rejected(r)) => {
                    Ok(Message::Invalid(falcon_kernel::rejection(&r, delivery)))
                }
                Ok(Command::OpenWallet(c)) => Ok(Message::Open(c)),
                Ok(Command::Deposit(c)) => Ok(Message::Deposit(c)),
                Ok(other) => Err(StepError::Poison(format!(
                    "{} is not a wallet command",
                    other.kind().as_str()
                ))),
            };
        }
        match decode_event(Actor::Wallet, delivery)?.data {
            EventData::RiskApproved(d) => Ok(Message::Reserve(d.payment)),
            EventData::PaymentCaptured(d) => Ok(Message::Commit(d.payment)),
            EventData::PaymentCaptureFailed(d) => Ok(Message::Release(d)),
            EventData::RefundRequested(d) => Ok(Message::Refund(d)),
            other => Err(StepError::Poison(format!(
                "wallet does not handle {}",
                other.event_type().type_str()
            ))),
        }
    }

    /// The payment whose hold the step reads, if it reads one (a refund
    /// reads the hold of the transfer it gives back).
    pub(crate) fn payment_id(&self) -> Option<&str> {
        match self {
            Message::Reserve(p) | Message::Commit(p) => Some(&p.payment_id),
            Message::Release(f) => Some(&f.payment.payment_id),
            Message::Refund(r) => Some(&r.payment_id),
            _ => None,
        }
    }

    /// The wallets the message itself names (a commit or a release also
    /// reads the wallets its hold names).
    pub(crate) fn wallet_ids(&self) -> Vec<&str> {
        match self {
            Message::Open(c) => vec![&c.wallet_id],
            Message::Deposit(c) => vec![&c.wallet_id],
            Message::Invalid(_) => vec![],
            Message::Reserve(p) | Message::Commit(p) => vec![&p.from_wallet, &p.to_wallet],
            Message::Release(f) => vec![&f.payment.from_wallet, &f.payment.to_wallet],
            Message::Refund(r) => vec![&r.from_wallet, &r.to_wallet],
        }
    }
}
