//! What a client may send, checked: request bodies and query strings turned
//! into typed values, or refused naming the field at fault. Pure functions,
//! no I/O, so every refusal is unit-tested here.
//!
//! Bodies are read into `Option<serde_json::Value>` fields first and typed
//! by hand: serde's own type errors do not name the field, and a client
//! needs to know which one it got wrong.

use serde::Deserialize;
use serde_json::Value;

use crate::faults::Patch;

/// The longest idempotency key, in bytes.
pub const KEY_BYTES_MAX: usize = 128;

/// The largest page of `GET /v1/charges`, in records.
pub const PAGE_LIMIT_MAX: u32 = 1_000;

/// The page size of `GET /v1/charges` when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: u32 = 100;

/// A refusal of a request: the field (`body` for the body as a whole) and
/// what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadRequest {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> BadRequest {
    BadRequest {
        field,
        reason: reason.into(),
    }
}

/// `POST /v1/charges`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The caller's idempotency key ([`key`]).
    pub key: String,
    /// The amount in the currency's minor units, 1..=i64::MAX.
    pub amount_minor: i64,
    /// An ISO 4217-shaped code: three ASCII uppercase letters.
    pub currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCharge {
    key: Option<Value>,
    amount_minor: Option<Value>,
    currency: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatch {
    latency_ms: Option<Value>,
    decline_bps: Option<Value>,
    hang_after_charge_bps: Option<Value>,
    hang_ms: Option<Value>,
    outage: Option<Value>,
}

/// Parses a JSON object body into `T`, refusing anything but one object
/// (serde would also take a struct from an array), unknown fields and
/// duplicate fields.
fn object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadRequest> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(bad("body", "must be a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| bad("body", e.to_string()))
}

/// The body of `POST /v1/charges`.
pub fn charge(body: &[u8]) -> Result<Charge, BadRequest> {
    let raw: RawCharge = object(body)?;
    let key = match raw.key {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("key", "must be a string")),
        None => return Err(bad("key", "is required")),
    };
    self::key(&key)?;
    let amount_minor = match raw.amount_minor {
        Some(Value::Number(n)) => n.as_i64().filter(|a| *a >= 1),
        Some(_) => None,
        None => return Err(bad("amount_minor", "is required")),
    }
    .ok_or_else(|| {
        bad(
            "amount_minor",
            "must be an integer from 1 to 9223372036854775807",
        )
    })?;
    let currency = match raw.currency {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("currency", "must be a string")),
        None => return Err(bad("currency", "is required")),
    };
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("currency", "must be three ASCII uppercase letters"));
    }
    Ok(Charge {
        key,
        amount_minor,
        currency,
    })
}

/// Checks an idempotency key: 1..=128 bytes, no whitespace, no control
/// characters.
pub fn key(key: &str) -> Result<(), BadRequest> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(bad("key", format!("must be 1 to {KEY_BYTES_MAX} bytes")));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("key", "must not hold whitespace or control characters"));
    }
    Ok(())
}

/// The body of `PUT /admin/faults`: any subset of the fields of
/// [`crate::Faults`]. Ranges are checked by [`Patch::apply`].
pub fn faults_patch(body: &[u8]) -> Result<Patch, BadRequest> {
    let raw: RawPatch = object(body)?;
    Ok(Patch {
        latency_ms: raw
            .latency_ms
            .map(|v| u64_of("latency_ms", v))
            .transpose()?,
        decline_bps: raw
            .decline_bps
            .map(|v| u32_of("decline_bps", v))
            .transpose()?,
        hang_after_charge_bps: raw
            .hang_after_charge_bps
            .map(|v| u32_of("hang_after_charge_bps", v))
            .transpose()?,
        hang_ms: raw.hang_ms.map(|v| u64_of("hang_ms", v)).transpose()?,
        outage: raw
            .outage
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| bad("outage", "must be true or false"))
            })
            .transpose()?,
    })
}

fn u64_of(field: &'static str, v: Value) -> Result<u64, BadRequest> {
    v.as_u64()
        .ok_or_else(|| bad(field, "must be a non-negative integer"))
}

fn u32_of(field: &'static str, v: Value) -> Result<u32, BadRequest> {
    u64_of(field, v)
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(field, "must be an integer from 0 to 10000"))
}

/// The query of `GET /v1/charges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Records with a `rev` greater than this (written or changed after
    /// that change); default 0.
    pub after: i64,
    /// At most this many records, 1..=[`PAGE_LIMIT_MAX`]; default
    /// [`PAGE_LIMIT_DEFAULT`].
    pub limit: u32,
}

/// The query parameters of `GET /v1/charges`, as decoded pairs.
pub fn page(params: &[(String, String)]) -> Result<Page, BadRequest> {
    let mut after = None;
    let mut limit = None;
    for (name, value) in params {
        match name.as_str() {
            "after" if after.is_none() => {
                after = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|a| *a >= 0)
                        .ok_or_else(|| bad("after", "must be a non-negative integer"))?,
                );
            }
            "limit" if limit.is_none() => {
                limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|l| (1..=PAGE_LIMIT_MAX).contains(l))
                        .ok_or_else(|| {
                            bad(
                                "limit",
                                format!("must be an integer from 1 to {PAGE_LIMIT_MAX}"),
                            )
                        })?,
                );
            }
            "after" => return Err(bad("after", "is given twice")),
            "limit" => return Err(bad("limit", "is given twice")),
            _ => return Err(bad("query", format!("unknown parameter {name:?}"))),
        }
    }
    Ok(Page {
        after: after.unwrap_or(0),
        limit: limit.unwrap_or(PAGE_LIMIT_DEFAULT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> &'static str {
        charge(body.as_bytes()).expect_err("refused").field
    }

    #[test]
    fn a_good_charge() {
        let c = charge(br#" {"key":"k-1","amount_minor":9223372036854775807,"currency":"USD"}"#)
            .expect("valid");
        assert_eq!(
            c,
            Charge {
                key: "k-1".into(),
                amount_minor: i64::MAX,
                currency: "USD".into()
            }
        );
    }

    #[test]
    fn bad_charges_name_their_field() {
        let cases = [
            (r#"{"amount_minor":1,"currency":"USD"}"#, "key"),
            (r#"{"key":"","amount_minor":1,"currency":"USD"}"#, "key"),
            (r#"{"key":"a b","amount_minor":1,"currency":"USD"}"#, "key"),
            (
                r#"{"key":"a\u0007","amount_minor":1,"currency":"USD"}"#,
                "key",
            ),
            (
                r#"{"key":"a\u00a0b","amount_minor":1,"currency":"USD"}"#,
                "key",
            ),
            (r#"{"key":7,"amount_minor":1,"currency":"USD"}"#, "key"),
            (
                r#"{"key":"k","amount_minor":0,"currency":"USD"}"#,
                "amount_minor",
            ),
            (
                r#"{"key":"k","amount_minor":-5,"currency":"USD"}"#,
                "amount_minor",
            ),
            (
                r#"{"key":"k","amount_minor":1.5,"currency":"USD"}"#,
                "amount_minor",
            ),
            (
                r#"{"key":"k","amount_minor":"10","currency":"USD"}"#,
                "amount_minor",
            ),
            (
                r#"{"key":"k","amount_minor":9223372036854775808,"currency":"USD"}"#,
                "amount_minor",
            ),
            (r#"{"key":"k","currency":"USD"}"#, "amount_minor"),
            (
                r#"{"key":"k","amount_minor":1,"currency":"usd"}"#,
                "currency",
            ),
            (
                r#"{"key":"k","amount_minor":1,"currency":"US"}"#,
                "currency",
            ),
            (
                r#"{"key":"k","amount_minor":1,"currency":"USDX"}"#,
                "currency",
            ),
            (
                r#"{"key":"k","amount_minor":1,"currency":"ÜSD"}"#,
                "currency",
            ),
            (r#"{"key":"k","amount_minor":1}"#, "currency"),
            (
                r#"{"key":"k","amount_minor":1,"currency":"USD","x":1}"#,
                "body",
            ),
            (
                r#"{"key":"k","key":"j","amount_minor":1,"currency":"USD"}"#,
                "body",
            ),
            (r#"["k",1,"USD"]"#, "body"),
            ("", "body"),
            ("{", "body"),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(body), field, "{body}");
        }
        let long = "k".repeat(KEY_BYTES_MAX + 1);
        assert_eq!(
            field_of(&format!(
                r#"{{"key":"{long}","amount_minor":1,"currency":"USD"}}"#
            )),
            "key"
        );
        assert!(key(&"k".repeat(KEY_BYTES_MAX)).is_ok());
    }

    #[test]
    fn patches() {
        let p = faults_patch(br#"{"outage":true,"hang_ms":0}"#).expect("valid");
        assert_eq!(
            p,
            Patch {
                outage: Some(true),
                hang_ms: Some(0),
                ..Patch::default()
            }
        );
        assert_eq!(faults_patch(b"{}").expect("empty"), Patch::default());
        for (body, field) in [
            (r#"{"outage":1}"#, "outage"),
            (r#"{"decline_bps":-1}"#, "decline_bps"),
            (r#"{"decline_bps":4294967296}"#, "decline_bps"),
            (r#"{"latency_ms":"5"}"#, "latency_ms"),
            (r#"{"nope":1}"#, "body"),
        ] {
            assert_eq!(
                faults_patch(body.as_bytes()).expect_err("refused").field,
                field,
                "{body}"
            );
        }
    }

    #[test]
    fn pages() {
        let q = |pairs: &[(&str, &str)]| {
            page(
                &pairs
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            q(&[]),
            Ok(Page {
                after: 0,
                limit: PAGE_LIMIT_DEFAULT
            })
        );
        assert_eq!(
            q(&[("after", "7"), ("limit", "1000")]),
            Ok(Page {
                after: 7,
                limit: 1000
            })
        );
        for (pairs, field) in [
            (vec![("limit", "1001")], "limit"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "x")], "limit"),
            (vec![("after", "-1")], "after"),
            (vec![("after", "1"), ("after", "2")], "after"),
            (vec![("sort", "seq")], "query"),
        ] {
            assert_eq!(q(&pairs).expect_err("refused").field, field);
        }
    }
}
