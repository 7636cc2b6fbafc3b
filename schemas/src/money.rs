//! [`Money`]: an exact amount in one currency.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::currency::Currency;
use crate::reason::{Invalid, Reason};

/// An amount in one currency whose scale never exceeds the currency's minor
/// units. Built only through [`Money::new`], [`Money::parse`] or
/// [`Money::from_minor`]; arithmetic is checked and refuses to mix currencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

/// Arithmetic that would mix currencies or overflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflows the ledger's 64-bit minor units")]
    Overflow,
}

impl Money {
    /// `amount` in `currency`; refuses more fraction digits than the currency
    /// has minor units and amounts that do not fit `i64` minor units.
    /// Zero and negative amounts are allowed (balances); see [`Money::positive`].
    pub fn new(amount: Decimal, currency: Currency) -> Result<Money, Invalid> {
        let amount = amount.normalize();
        if amount.scale() > currency.minor_units() {
            return Err(Invalid::field(
                Reason::AmountScaleExceedsCurrency,
                "amount",
                format!(
                    "{amount} has {} fraction digits; {currency} has {}",
                    amount.scale(),
                    currency.minor_units()
                ),
            ));
        }
        let money = Money { amount, currency };
        money.minor_checked().ok_or_else(|| {
            Invalid::field(
                Reason::AmountTooLarge,
                "amount",
                format!("{amount} {currency} is too large"),
            )
        })?;
        Ok(money)
    }

    /// Parses a decimal string such as `"12.50"` in `currency`.
    pub fn parse(amount: &str, currency: Currency) -> Result<Money, Invalid> {
        let decimal = parse_decimal(amount)?;
        Money::new(decimal, currency)
    }

    /// Like [`Money::new`], and also refuses zero and negative amounts.
    pub fn positive(amount: Decimal, currency: Currency) -> Result<Money, Invalid> {
        if amount <= Decimal::ZERO {
            return Err(Invalid::field(
                Reason::AmountNotPositive,
                "amount",
                format!("amount must be positive, got {amount}"),
            ));
        }
        Money::new(amount, currency)
    }

    /// From a count of minor units (cents for USD, yen for JPY).
    pub fn from_minor(minor: i64, currency: Currency) -> Money {
        Money {
            amount: Decimal::new(minor, currency.minor_units()).normalize(),
            currency,
        }
    }

    pub fn zero(currency: Currency) -> Money {
        Money::from_minor(0, currency)
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount as a count of minor units; exact by construction.
    pub fn minor(&self) -> i64 {
        self.minor_checked()
            .expect("Money is only built when its minor units fit i64")
    }

    fn minor_checked(&self) -> Option<i64> {
        let scaled = self.amount.checked_mul(Decimal::from(
            10_i64.checked_pow(self.currency.minor_units())?,
        ))?;
        i64::try_from(scaled.trunc()).ok()
    }

    pub fn checked_add(&self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let sum = self
            .minor()
            .checked_add(other.minor())
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::from_minor(sum, self.currency))
    }

    pub fn checked_sub(&self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let diff = self
            .minor()
            .checked_sub(other.minor())
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::from_minor(diff, self.currency))
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    /// The amount with exactly the currency's minor units as its scale
    /// (`12.50`, not `12.5`): the form every event carries.
    pub fn wire_amount(&self) -> Decimal {
        let mut a = self.amount;
        a.rescale(self.currency.minor_units());
        a
    }

    /// The amount as a wire string with exactly the currency's minor units
    /// (`"12.50"`, `"1000"` for JPY).
    pub fn amount_string(&self) -> String {
        self.wire_amount().to_string()
    }
}

/// Parses a decimal string; refuses exponents, signs other than `-`, and
/// anything `rust_decimal` cannot hold exactly.
pub fn parse_decimal(s: &str) -> Result<Decimal, Invalid> {
    let well_formed = !s.is_empty()
        && s.len() <= 40
        && s.trim() == s
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    let parsed = if well_formed {
        Decimal::from_str(s).ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        Invalid::field(
            Reason::InvalidAmount,
            "amount",
            format!(
                "amount must be a decimal string such as \"12.50\", got {}",
                crate::shown(s)
            ),
        )
    })
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::from_code(c).expect("test currency is in the table")
    }

    #[test]
    fn scale_is_checked_against_minor_units() {
        assert!(Money::parse("12.50", cur("USD")).is_ok());
        assert!(
            Money::parse("12.500", cur("USD")).is_ok(),
            "trailing zeros are not extra precision"
        );
        let e = Money::parse("12.505", cur("USD")).expect_err("three digits in USD");
        assert_eq!(e.reason, Reason::AmountScaleExceedsCurrency);
        assert_eq!(
            Money::parse("1.5", cur("JPY")).expect_err("JPY").reason,
            Reason::AmountScaleExceedsCurrency
        );
        assert!(Money::parse("1.505", cur("OMR")).is_ok());
    }

    #[test]
    fn minor_units_round_trip() {
        let m = Money::parse("12.5", cur("USD")).expect("valid");
        assert_eq!(m.minor(), 1250);
        assert_eq!(Money::from_minor(1250, cur("USD")), m);
        assert_eq!(m.amount_string(), "12.50");
        assert_eq!(
            Money::parse("1000", cur("JPY")).expect("valid").minor(),
            1000
        );
        assert_eq!(
            Money::parse("1.005", cur("OMR")).expect("valid").minor(),
            1005
        );
    }

    #[test]
    fn positive_and_malformed() {
        assert_eq!(
            Money::positive(Decimal::ZERO, cur("USD"))
                .expect_err("zero")
                .reason,
            Reason::AmountNotPositive
        );
        assert_eq!(
            parse_decimal("1e5").expect_err("exponent").reason,
            Reason::InvalidAmount
        );
        assert_eq!(
            parse_decimal(" 1").expect_err("space").reason,
            Reason::InvalidAmount
        );
        assert_eq!(
            parse_decimal("").expect_err("empty").reason,
            Reason::InvalidAmount
        );
        assert_eq!(
            Money::parse("99999999999999999999", cur("USD"))
                .expect_err("too large")
                .reason,
            Reason::AmountTooLarge
        );
    }

    #[test]
    fn arithmetic_is_checked() {
        let usd = Money::from_minor(100, cur("USD"));
        let eur = Money::from_minor(100, cur("EUR"));
        assert!(usd.checked_add(eur).is_err());
        assert_eq!(usd.checked_sub(usd).expect("same currency").minor(), 0);
        assert_eq!(
            Money::from_minor(i64::MAX, cur("USD")).checked_add(usd),
            Err(MoneyError::Overflow)
        );
    }
}
