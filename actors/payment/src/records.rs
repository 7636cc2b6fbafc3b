//! Events checked against the payment actor's own records: an event about
//! a payment or a refund is believed only as far as the rows agree with
//! it. Its amount must be a positive amount of its currency, as a
//! command's must (`invalid amount in event: …`), and its amount, currency
//! and wallets must be the row's (`record_mismatch: …`); otherwise it is
//! poison: the step moves nothing, calls no provider, and the kernel
//! dead-letters it. The events a step publishes are then built from the
//! rows, not from what came in.

use falcon_kernel::handler::{payment_amount, refund_amount};
use falcon_kernel::StepError;
use falcon_schemas::event::{PaymentData, RefundData};
use falcon_schemas::{Currency, Money};

use crate::entity::{payment, refund};

/// The currency of a stored row; one this code does not know is a row it
/// did not write.
fn currency_of(what: &str, id: &str, code: &str) -> Result<Currency, StepError> {
    Currency::from_code(code)
        .ok_or_else(|| StepError::Poison(format!("{what} {id} has unknown currency {code:?}")))
}

/// Notes `field` in `differs` when the event's value is not the record's.
fn note<T: PartialEq + std::fmt::Debug + ?Sized>(
    differs: &mut Vec<String>,
    field: &str,
    event: &T,
    record: &T,
) {
    if event != record {
        differs.push(format!(
            "{field} is {event:?} in the event, {record:?} on record"
        ));
    }
}

fn mismatch(what: &str, id: &str, differs: &[String]) -> StepError {
    StepError::Poison(format!(
        "record_mismatch: {what} {id} disagrees with its record: {}",
        differs.join("; ")
    ))
}

/// The payment `p` names is the row's: same amount, currency and wallets.
/// Returns the amount, as the row has it.
pub(crate) fn same_payment(row: &payment::Model, p: &PaymentData) -> Result<Money, StepError> {
    let amount = payment_amount(p)?;
    let mut differs = Vec::new();
    note(
        &mut differs,
        "amount_minor",
        &amount.minor(),
        &row.amount_minor,
    );
    note(&mut differs, "currency", p.currency.code(), &row.currency);
    note(
        &mut differs,
        "from_wallet",
        &p.from_wallet,
        &row.from_wallet,
    );
    note(&mut differs, "to_wallet", &p.to_wallet, &row.to_wallet);
    if !differs.is_empty() {
        return Err(mismatch("payment", &p.payment_id, &differs));
    }
    Ok(amount)
}

/// The refund `r` names is the row's, of the payment `payment`: same
/// payment, amount, currency, and the payment's wallets.
pub(crate) fn same_refund(
    row: &refund::Model,
    payment: &payment::Model,
    r: &RefundData,
) -> Result<(), StepError> {
    let amount = refund_amount(r)?;
    let mut differs = Vec::new();
    note(&mut differs, "payment_id", &r.payment_id, &row.payment_id);
    note(
        &mut differs,
        "amount_minor",
        &amount.minor(),
        &row.amount_minor,
    );
    note(&mut differs, "currency", r.currency.code(), &row.currency);
    note(
        &mut differs,
        "from_wallet",
        &r.from_wallet,
        &payment.from_wallet,
    );
    note(&mut differs, "to_wallet", &r.to_wallet, &payment.to_wallet);
    if !differs.is_empty() {
        return Err(mismatch("refund", &r.refund_id, &differs));
    }
    Ok(())
}

/// A refund as its events carry it, from its row and its payment's.
pub(crate) fn refund_data(
    row: &refund::Model,
    payment: &payment::Model,
) -> Result<RefundData, StepError> {
    let currency = currency_of("refund", &row.refund_id, &row.currency)?;
    Ok(RefundData {
        refund_id: row.refund_id.clone(),
        payment_id: row.payment_id.clone(),
        from_wallet: payment.from_wallet.clone(),
        to_wallet: payment.to_wallet.clone(),
        amount: Money::from_minor(row.amount_minor, currency).wire_amount(),
        currency,
        principal: row.principal.clone(),
    })
}
