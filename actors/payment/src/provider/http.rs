//! The settlement provider over HTTP: the port spoken to a provider that
//! runs as its own process (`falcon-provider`, or a real one behind the
//! same contract, docs/DESIGN.md "The provider port").
//!
//! Every capture is `POST /v1/charges` with the payment id as the
//! idempotency key. An answer the provider gave is final (a charge, a
//! decline, a key reused for another amount); no answer (a timeout, a
//! lost connection) is an unknown outcome, resolved by asking the provider
//! for the key (`GET /v1/charges/{key}`), never by guessing: a charge it
//! recorded is the answer, a key it never saw is retried later with the
//! same key, and a provider that does not answer that either leaves the
//! capture in doubt (transient) until it does.

use std::time::Duration;

use falcon_schemas::Money;
use serde::{Deserialize, Serialize};

use falcon_kernel::endpoint::{self, clip, Endpoint, TEXT_MAX};

use super::{CaptureRequest, Held, ProviderError, Settlement, SettlementProvider};

/// A provider's answer is a small JSON object; anything longer is refused
/// unread.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A charge as the provider records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Charge {
    pub key: String,
    pub status: ChargeStatus,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(default)]
    pub settlement_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Charged,
    Declined,
    Voided,
}

#[derive(Serialize)]
struct ChargeBody<'a> {
    key: &'a str,
    amount_minor: i64,
    currency: &'a str,
}

/// A refusal's body: `{"error": code, "message": text}`.
#[derive(Deserialize, Default)]
struct Refusal {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

/// The HTTP provider: where it is, the API key it is called with, and the
/// timeout of one call.
#[derive(Debug, Clone)]
pub struct HttpProvider {
    endpoint: Endpoint,
}

impl HttpProvider {
    /// A client of the provider at `base` (`http://host:port`), each call
    /// bounded by `timeout`.
    pub fn new(
        base: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<HttpProvider, String> {
        Ok(HttpProvider {
            endpoint: Endpoint::new("provider.url", base, api_key, timeout)?,
        })
    }

    /// The provider's record of `key`: `None` when it never saw the key.
    pub async fn record(&self, key: &str) -> Result<Option<Charge>, ProviderError> {
        let response = self
            .endpoint
            .get(&format!("/v1/charges/{}", path_segment(key)))
            .send()
            .await
            .map_err(|e| ProviderError::unavailable_because(format!("looking up {key}"), e))?;
        let status = response.status();
        let body = bounded_body(response, key).await?;
        match status.as_u16() {
            200 => parse_charge(&body, key).map(Some),
            404 => Ok(None),
            code => Err(ProviderError::unavailable(format!(
                "looking up {key}: {code} {}",
                refusal(&body)
            ))),
        }
    }

    /// Closes the request's key (`POST /v1/charges/{key}/close`): the
    /// provider's record afterwards, a new closed one or the key's record
    /// as it stood.
    pub async fn close_key(&self, request: &CaptureRequest) -> Result<Charge, ProviderError> {
        let key = &request.payment_id;

        let body = ChargeBody {
            key,
            amount_minor: request.amount.minor(),
            currency: request.amount.currency().code(),
        };
        let response = self
            .endpoint
            .post(&format!("/v1/charges/{}/close", path_segment(key)))
            .json(&body)
            .send()
            .await
            .map_err(|e| ProviderError::unavailable_because(format!("closing {key}"), e))?;
        let status = response.status();
        let body = bounded_body(response, key).await?;
        match status.as_u16() {
            200 | 201 => parse_charge(&body, key),
            400 | 404 | 409 | 422 => Err(ProviderError::Declined(format!(
                "close of {key}: {}",
                refusal(&body)
            ))),
            code => Err(ProviderError::unavailable(format!(
                "closing {key}: {code} {}",
                refusal(&body)
            ))),
        }
    }

    async fn charge(&self, request: &CaptureRequest) -> Result<Settlement, Attempt> {
        let key = &request.payment_id;
        let body = ChargeBody {
            key,
            amount_minor: request.amount.minor(),
            currency: request.amount.currency().code(),
        };

        let response = match self.endpoint.post("/v1/charges").json(&body).send().await {
            Ok(r) => r,
            // The request may have reached the provider.
            Err(e) => {
                return Err(Attempt::Unknown(ProviderError::unavailable_because(
                    format!("capture of {key}: no answer"),
                    e,
                )))
            }
        };
        let status = response.status();
        // An answer lost on the way leaves the outcome unknown too.
        let body = bounded_body(response, key)
            .await
            .map_err(Attempt::Unknown)?;
        match status.as_u16() {
            200 | 201 | 402 => {
                let charge = parse_charge(&body, key).map_err(Attempt::Unknown)?;
                settled(&charge, request.amount).map_err(Attempt::Answered)
            }
            // Refused without charging: the request itself is wrong (a key
            // reused for another amount, a field out of bounds). Final.
            400 | 409 | 422 => Err(Attempt::Answered(ProviderError::Declined(format!(
                "the provider refused the capture of {key}: {}",
                refusal(&body)
            )))),
            // Not let in, or told to come back: nothing was charged.
            401 | 403 | 429 => Err(Attempt::Answered(ProviderError::unavailable(format!(
                "capture of {key}: {status} {}",
                refusal(&body)
            )))),
            // A server error may come after the charge was made.
            _ => Err(Attempt::Unknown(ProviderError::unavailable(format!(
                "capture of {key}: {status} {}",
                refusal(&body)
            )))),
        }
    }
}

/// How one charge call ended when it did not settle.
enum Attempt {
    /// The provider's answer, final or transient.
    Answered(ProviderError),
    /// No usable answer: the charge may have been made.
    Unknown(ProviderError),
}

#[async_trait::async_trait]
impl SettlementProvider for HttpProvider {
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        let key = &request.payment_id;
        let unknown = match self.charge(request).await {
            Ok(s) => return Ok(s),
            Err(Attempt::Answered(e)) => return Err(e),
            Err(Attempt::Unknown(e)) => e,
        };
        tracing::warn!(payment_id = %key, error = %unknown.report(), "capture outcome unknown; asking the provider by key");
        match self.record(key).await {
            Ok(Some(charge)) => settled(&charge, request.amount),
            Ok(None) => Err(ProviderError::unavailable(format!(
                "{}; the provider has no charge for the key",
                unknown.report()
            ))),
            Err(e) => Err(ProviderError::unavailable(format!(
                "{}; the lookup failed: {}",
                unknown.report(),
                e.report()
            ))),
        }
    }

    async fn lookup(&self, key: &str) -> Result<Option<Held>, ProviderError> {
        match self.record(key).await? {
            Some(charge) => held(&charge).map(Some),
            None => Ok(None),
        }
    }

    async fn close(&self, request: &CaptureRequest) -> Result<Held, ProviderError> {
        let charge = self.close_key(request).await?;
        // The record must be the one asked for: a key held for another
        // amount is a refusal (409), so a mismatch here is the provider's.
        settled_amount(&charge, request.amount)?;
        held(&charge)
    }
}

/// What a provider record holds, a charge with a usable settlement id.
fn held(charge: &Charge) -> Result<Held, ProviderError> {
    let key = &charge.key;
    Ok(match charge.status {
        ChargeStatus::Charged => match &charge.settlement_id {
            Some(id) if !id.is_empty() && id.len() <= 128 => Held::Charged(Settlement {
                settlement_id: id.clone(),
            }),
            _ => {
                return Err(ProviderError::unavailable(format!(
                    "the provider charged {key} without a usable settlement id"
                )))
            }
        },
        ChargeStatus::Declined => Held::Declined(reason_of(charge)),
        ChargeStatus::Voided => Held::Voided,
    })
}

/// The settlement a provider record stands for, checked against what was
/// asked: the same amount and currency, and a settlement id when charged.
fn settled(charge: &Charge, amount: Money) -> Result<Settlement, ProviderError> {
    settled_amount(charge, amount)?;
    match held(charge)? {
        Held::Charged(settlement) => Ok(settlement),
        Held::Declined(reason) => Err(ProviderError::Declined(reason)),
        Held::Voided => Err(ProviderError::Declined(format!(
            "the provider voided {}",
            charge.key
        ))),
    }
}

/// Refuses a record held for another amount or currency than asked.
fn settled_amount(charge: &Charge, amount: Money) -> Result<(), ProviderError> {
    if charge.amount_minor != amount.minor() || charge.currency != amount.currency().code() {
        return Err(ProviderError::Declined(format!(
            "the provider holds {} for {} {}, not {amount}",
            charge.key,
            charge.amount_minor,
            clip(&charge.currency)
        )));
    }
    Ok(())
}

fn parse_charge(body: &[u8], key: &str) -> Result<Charge, ProviderError> {
    let charge: Charge = serde_json::from_slice(body).map_err(|e| {
        ProviderError::unavailable_because(format!("the provider's answer for {key}"), e)
    })?;
    if charge.key != *key {
        return Err(ProviderError::unavailable(format!(
            "the provider answered for {:?}, asked for {key}",
            charge.key
        )));
    }
    Ok(charge)
}

/// A refusal's code and message, for errors and logs.
fn refusal(body: &[u8]) -> String {
    let r: Refusal = serde_json::from_slice(body).unwrap_or_default();
    clip(&match (r.error.is_empty(), r.message.is_empty()) {
        (true, _) => String::from_utf8_lossy(&body[..body.len().min(TEXT_MAX)]).into_owned(),
        (false, true) => r.error,
        (false, false) => format!("{}: {}", r.error, r.message),
    })
}

/// A decline's reason as the provider gave it, clipped.
fn reason_of(charge: &Charge) -> String {
    charge
        .reason
        .as_deref()
        .map_or_else(|| "declined".to_owned(), clip)
}

/// The body, read up to [`MAX_ANSWER_BYTES`].
async fn bounded_body(response: reqwest::Response, key: &str) -> Result<Vec<u8>, ProviderError> {
    endpoint::bounded_body(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| {
            ProviderError::unavailable_because(format!("the provider's answer for {key}"), e)
        })
}

/// `key` as one URL path segment: payment ids are `[A-Za-z0-9._:-]`, and
/// anything else is percent-encoded.
fn path_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: i64) -> Money {
        Money::from_minor(
            minor,
            falcon_schemas::Currency::from_code("USD").expect("USD"),
        )
    }

    fn charge(status: ChargeStatus, minor: i64) -> Charge {
        Charge {
            key: "p1".into(),
            status,
            amount_minor: minor,
            currency: "USD".into(),
            settlement_id: Some("prv-1".into()),
            reason: None,
        }
    }

    #[test]
    fn a_record_settles_only_for_what_was_asked() {
        let ok = settled(&charge(ChargeStatus::Charged, 100), usd(100)).expect("charged");
        assert_eq!(ok.settlement_id, "prv-1");
        for (record, why) in [
            (charge(ChargeStatus::Charged, 101), "another amount"),
            (charge(ChargeStatus::Declined, 100), "declined"),
            (charge(ChargeStatus::Voided, 100), "voided"),
        ] {
            let e = settled(&record, usd(100)).expect_err(why);
            assert!(!e.is_transient(), "{why}: {e}");
        }
        let mut no_id = charge(ChargeStatus::Charged, 100);
        no_id.settlement_id = None;
        assert!(settled(&no_id, usd(100)).expect_err("no id").is_transient());
    }

    #[test]
    fn answers_for_another_key_or_garbage_are_not_taken() {
        let other = br#"{"key":"p2","status":"charged","amount_minor":100,"currency":"USD","settlement_id":"x"}"#;
        assert!(parse_charge(other, "p1").is_err());
        assert!(parse_charge(b"\xff", "p1").is_err());
        assert!(parse_charge(
            br#"{"key":"p1","status":"maybe","amount_minor":1,"currency":"USD"}"#,
            "p1"
        )
        .is_err());
        assert_eq!(path_segment("pay-1_a.b"), "pay-1_a.b");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            refusal(br#"{"error":"key_reused","message":"m"}"#),
            "key_reused: m"
        );
    }

    /// The provider's words are quoted bounded and without control
    /// characters: a 64 KiB reason does not become a 64 KiB event.
    #[test]
    fn the_providers_text_is_clipped() {
        let long = format!(r#"{{"error":"x","message":"{}\u0007"}}"#, "é".repeat(300));
        let clipped = refusal(long.as_bytes());
        assert!(
            clipped.len() <= TEXT_MAX + '…'.len_utf8(),
            "{}",
            clipped.len()
        );
        assert!(!clipped.chars().any(char::is_control));
        let mut declined = charge(ChargeStatus::Declined, 100);
        declined.reason = Some(format!("{}\n", "r".repeat(10_000)));
        let e = settled(&declined, usd(100)).expect_err("declined");
        assert!(e.to_string().len() < 300, "{}", e.to_string().len());
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn only_http_urls_are_providers() {
        assert!(HttpProvider::new("ftp://x", None, Duration::from_secs(1)).is_err());
        assert!(HttpProvider::new("http://127.0.0.1:9", None, Duration::from_secs(1)).is_ok());
    }
}
