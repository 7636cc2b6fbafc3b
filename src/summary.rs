//! One line about an event's data, as `--wait` prints an outcome and `falcon
//! saga show` a step.

use falcon_schemas::EventData;

/// One line about an event's data.
pub fn line(data: &EventData) -> String {
    match data {
        EventData::PaymentRejected(r) | EventData::WalletRejected(r) => {
            format!("rejected {} ({}): {}", r.command, r.reason, r.message)
        }
        EventData::PaymentFailed(f) => format!(
            "failed ({}){}: {}",
            f.reason,
            if f.compensated { ", compensated" } else { "" },
            f.message
        ),
        EventData::PaymentCompleted(p) => format!(
            "completed {} {} from {} to {}",
            p.amount, p.currency, p.from_wallet, p.to_wallet
        ),
        EventData::PaymentRefunded(r) => format!(
            "refunded {} {} of payment {}",
            r.amount, r.currency, r.payment_id
        ),
        EventData::RefundFailed(f) => format!("refund failed ({}): {}", f.reason, f.message),
        EventData::WalletOpened(w) => format!("opened for {} in {}", w.owner, w.currency),
        EventData::WalletDeposited(d) => format!(
            "deposited {} {} (reference {})",
            d.amount, d.currency, d.reference
        ),
        EventData::PaymentRequested(p) => format!(
            "requested {} {} from {} to {}",
            p.amount, p.currency, p.from_wallet, p.to_wallet
        ),
        EventData::RiskApproved(r) => format!("approved (score {})", r.score),
        EventData::ReconMismatch(m) => format!(
            "mismatch {} of {}{}: {}",
            m.kind,
            m.difference_minor,
            m.currency.map(|c| format!(" {c}")).unwrap_or_default(),
            m.message
        ),
        EventData::RiskRejected(r) => {
            let reasons: Vec<&str> = r.risk_reasons.iter().map(|x| x.as_str()).collect();
            format!("rejected (score {}): {}", r.score, reasons.join(", "))
        }
        EventData::FundsReserved(p) => {
            format!("held {} {} on {}", p.amount, p.currency, p.from_wallet)
        }
        EventData::ReservationDeclined(f) | EventData::PaymentCaptureFailed(f) => {
            format!("{} ({}): {}", data.event_type().name(), f.reason, f.message)
        }
        EventData::FundsReleased(f) => format!(
            "released {} {} on {} ({})",
            f.payment.amount, f.payment.currency, f.payment.from_wallet, f.reason
        ),
        EventData::PaymentCaptured(c) => format!("captured, settlement {}", c.settlement_id),
        EventData::TransferCommitted(p) => format!(
            "moved {} {} {} -> {}",
            p.amount, p.currency, p.from_wallet, p.to_wallet
        ),
        EventData::RefundRequested(r) => format!(
            "refund of {} {} requested for payment {}",
            r.amount, r.currency, r.payment_id
        ),
        EventData::RefundCommitted(r) => format!(
            "moved {} {} {} -> {}",
            r.amount, r.currency, r.to_wallet, r.from_wallet
        ),
        EventData::RefundDeclined(f) => format!("refund declined ({}): {}", f.reason, f.message),
    }
}
