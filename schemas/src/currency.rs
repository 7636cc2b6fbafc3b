//! ISO 4217 currencies and their minor units, from one table.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `(code, minor units)` for every currency FalconPay accepts.
///
/// Minor units follow ISO 4217 (the number of digits after the decimal
/// point an amount in that currency may have). Add a currency here and
/// nowhere else.
const TABLE: &[(&str, u32)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("TRY", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// A currency from the ISO 4217 table. Copyable, compared by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

impl Currency {
    /// Looks a currency up by its three-letter code (exact, upper case).
    pub fn from_code(code: &str) -> Option<Currency> {
        TABLE
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, minor_units)| Currency { code, minor_units })
    }

    /// The three-letter ISO 4217 code, e.g. `"USD"`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point an amount may have (USD 2, JPY 0, OMR 3).
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Every currency in the table.
    pub fn all() -> impl Iterator<Item = Currency> {
        TABLE
            .iter()
            .map(|&(code, minor_units)| Currency { code, minor_units })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::from_code(&code).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown currency {}", crate::shown(&code)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_come_from_the_table() {
        let units = |c: &str| Currency::from_code(c).map(|c| c.minor_units());
        assert_eq!(units("USD"), Some(2));
        assert_eq!(units("EUR"), Some(2));
        assert_eq!(units("JPY"), Some(0));
        assert_eq!(units("OMR"), Some(3));
        assert_eq!(units("usd"), None);
        assert_eq!(units("XXX"), None);
    }

    #[test]
    fn table_is_sorted_and_unique() {
        let codes: Vec<_> = TABLE.iter().map(|(c, _)| *c).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
        assert!(codes
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
    }
}
