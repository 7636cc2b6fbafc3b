//! What disagrees, from one row of facts.
//!
//! | the payment | the wallet ledger must hold | the provider must hold |
//! | --- | --- | --- |
//! | completed for A | a transfer of A (`wallet_missing`, `wallet_amount`), and refunds equal to the payment's (`refund_differs`) | a standing charge of A in the payment's currency (`provider_missing`, `provider_amount`) |
//! | failed | no transfer (`wallet_unexpected`) | no standing charge (`provider_unexpected`) |
//! | no outcome seen, its facts quiet for `recon.settle_s` | no transfer (`wallet_unexpected`) | no standing charge (`provider_unexpected`) |
//!
//! A provider record that is declined, voided, or a key closed before it
//! charged is no standing charge.

use falcon_schemas::event::{MismatchData, MismatchKind};
use falcon_schemas::Currency;

use crate::entity::fact;

/// The payment states a fact row holds.
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
/// The provider status of a standing charge.
pub const CHARGED: &str = "charged";

/// Every mismatch `row` shows. With `provider` false (no provider to
/// reconcile, or its list not read to the end) the provider is not
/// compared.
pub fn mismatches(row: &fact::Model, provider: bool) -> Vec<MismatchData> {
    let mut found = Vec::new();
    let currency = row
        .currency
        .as_deref()
        .or(row.provider_currency.as_deref())
        .and_then(Currency::from_code);
    let found_one = |kind: MismatchKind, difference: i64, message: String| MismatchData {
        key: row.key.clone(),
        kind,
        currency,
        payment_state: row.payment_state.clone(),
        payment_minor: row.payment_minor,
        wallet_minor: if kind == MismatchKind::RefundDiffers {
            Some(row.wallet_refunded_minor)
        } else {
            row.wallet_minor
        },
        provider_status: row.provider_status.clone(),
        provider_minor: row.provider_minor,
        difference_minor: difference.max(0),
        message,
        action: None,
    };
    let code = currency.map(|c| c.code()).unwrap_or("?");
    let key = &row.key;
    let charged = row.provider_status.as_deref() == Some(CHARGED);
    let provider_minor = row.provider_minor.unwrap_or(0);
    match (row.payment_state.as_deref(), row.payment_minor) {
        (Some(COMPLETED), Some(amount)) => {
            match row.wallet_minor {
                None => found.push(found_one(
                    MismatchKind::WalletMissing,
                    amount,
                    format!("{key} completed for {amount} {code}; the wallet ledger moved nothing for it"),
                )),
                Some(moved) if moved != amount => found.push(found_one(
                    MismatchKind::WalletAmount,
                    moved.abs_diff(amount).try_into().unwrap_or(i64::MAX),
                    format!("{key} completed for {amount} {code}; the wallet ledger moved {moved}"),
                )),
                Some(_) => {}
            }
            if row.payment_refunded_minor != row.wallet_refunded_minor {
                found.push(found_one(
                    MismatchKind::RefundDiffers,
                    row.payment_refunded_minor
                        .abs_diff(row.wallet_refunded_minor)
                        .try_into()
                        .unwrap_or(i64::MAX),
                    format!(
                        "{key}: refunds of {} {code} completed; the wallet ledger refunded {}",
                        row.payment_refunded_minor, row.wallet_refunded_minor
                    ),
                ));
            }
            if provider {
                if !charged {
                    let holds = row.provider_status.as_deref().unwrap_or("nothing");
                    found.push(found_one(
                        MismatchKind::ProviderMissing,
                        amount,
                        format!("{key} completed for {amount} {code}; the provider holds no standing charge ({holds})"),
                    ));
                } else if provider_minor != amount
                    || row.provider_currency.as_deref() != row.currency.as_deref()
                {
                    found.push(found_one(
                        MismatchKind::ProviderAmount,
                        provider_minor.abs_diff(amount).try_into().unwrap_or(i64::MAX),
                        format!(
                            "{key} completed for {amount} {code}; the provider charged {provider_minor} {}",
                            row.provider_currency.as_deref().unwrap_or("?")
                        ),
                    ));
                }
            }
        }
        (state, _) => {
            let what = match state {
                Some(FAILED) => format!("{key} failed"),
                _ => format!("{key} has no outcome"),
            };
            if let Some(moved) = row.wallet_minor.filter(|m| *m != 0) {
                found.push(found_one(
                    MismatchKind::WalletUnexpected,
                    moved.checked_abs().unwrap_or(i64::MAX),
                    format!("{what}; the wallet ledger moved {moved} {code} for it"),
                ));
            }
            if provider && charged {
                found.push(found_one(
                    MismatchKind::ProviderUnexpected,
                    provider_minor.checked_abs().unwrap_or(i64::MAX),
                    format!(
                        "{what}; the provider holds a standing charge of {provider_minor} {}",
                        row.provider_currency.as_deref().unwrap_or("?")
                    ),
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> fact::Model {
        fact::Model {
            key: "p1".into(),
            currency: Some("USD".into()),
            payment_state: Some(COMPLETED.into()),
            payment_minor: Some(1250),
            wallet_minor: Some(1250),
            payment_refunded_minor: 0,
            wallet_refunded_minor: 0,
            provider_seq: Some(1),
            provider_status: Some(CHARGED.into()),
            provider_minor: Some(1250),
            provider_currency: Some("USD".into()),
            changed_at: chrono::Utc::now(),
            dirty: true,
        }
    }

    fn kinds(row: &fact::Model, provider: bool) -> Vec<(MismatchKind, i64)> {
        mismatches(row, provider)
            .into_iter()
            .map(|m| (m.kind, m.difference_minor))
            .collect()
    }

    #[test]
    fn agreeing_sources_show_nothing() {
        assert!(kinds(&row(), true).is_empty());
        let failed = fact::Model {
            payment_state: Some(FAILED.into()),
            wallet_minor: None,
            provider_status: Some("voided".into()),
            ..row()
        };
        assert!(kinds(&failed, true).is_empty());
        let declined = fact::Model {
            provider_status: Some("declined".into()),
            ..failed
        };
        assert!(kinds(&declined, true).is_empty());
    }

    #[test]
    fn each_kind_with_its_difference() {
        use MismatchKind as K;
        let cases = [
            (
                fact::Model {
                    wallet_minor: None,
                    ..row()
                },
                vec![(K::WalletMissing, 1250)],
            ),
            (
                fact::Model {
                    wallet_minor: Some(1000),
                    ..row()
                },
                vec![(K::WalletAmount, 250)],
            ),
            (
                fact::Model {
                    provider_status: Some("voided".into()),
                    ..row()
                },
                vec![(K::ProviderMissing, 1250)],
            ),
            (
                fact::Model {
                    provider_status: None,
                    provider_minor: None,
                    ..row()
                },
                vec![(K::ProviderMissing, 1250)],
            ),
            (
                fact::Model {
                    provider_minor: Some(1300),
                    ..row()
                },
                vec![(K::ProviderAmount, 50)],
            ),
            (
                fact::Model {
                    provider_currency: Some("EUR".into()),
                    ..row()
                },
                vec![(K::ProviderAmount, 0)],
            ),
            (
                fact::Model {
                    payment_refunded_minor: 500,
                    ..row()
                },
                vec![(K::RefundDiffers, 500)],
            ),
            (
                fact::Model {
                    payment_state: Some(FAILED.into()),
                    ..row()
                },
                vec![(K::WalletUnexpected, 1250), (K::ProviderUnexpected, 1250)],
            ),
            (
                fact::Model {
                    payment_state: None,
                    payment_minor: None,
                    currency: None,
                    wallet_minor: None,
                    ..row()
                },
                vec![(K::ProviderUnexpected, 1250)],
            ),
        ];
        for (row, expected) in cases {
            assert_eq!(kinds(&row, true), expected, "{row:?}");
        }
    }

    #[test]
    fn the_provider_is_compared_only_when_read() {
        let voided = fact::Model {
            provider_status: Some("voided".into()),
            ..row()
        };
        assert!(kinds(&voided, false).is_empty());
    }

    #[test]
    fn extreme_amounts_do_not_overflow() {
        let row = fact::Model {
            payment_minor: Some(i64::MAX),
            wallet_minor: Some(i64::MIN),
            provider_minor: Some(i64::MIN),
            ..row()
        };
        let found = kinds(&row, true);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|(_, d)| *d == i64::MAX), "{found:?}");
    }
}
