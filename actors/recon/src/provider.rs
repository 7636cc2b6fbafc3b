//! The provider as the reconciliation actor reads it: its list of charges
//! from a change sequence on (`GET /v1/charges?after=<rev>&limit=<n>`),
//! and the void of a standing charge (`POST /v1/charges/{key}/void`).
//! Answers are bounded and checked record by record; a record that does
//! not hold together stops the run (the checkpoint stays where it was).

use std::time::Duration;

use falcon_kernel::endpoint::{self, clip, BodyError, Endpoint};
use serde::Deserialize;

/// A page is at most 1000 records of a few hundred bytes.
const PAGE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// A provider's key, as long as it may be.
const KEY_BYTES_MAX: usize = 256;

/// A provider record, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: i64,
    /// Its place in the provider's change sequence.
    pub rev: i64,
    pub key: String,
    /// `charged`, `declined` or `voided`.
    pub status: &'static str,
    pub amount_minor: i64,
    pub currency: String,
}

/// One page: its records in change order, and where the next starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// The last rev of the page; `None` when it was empty.
    pub next: Option<i64>,
}

#[derive(Deserialize)]
struct RawPage {
    charges: Vec<RawRecord>,
    next: Option<i64>,
}

#[derive(Deserialize)]
struct RawRecord {
    seq: i64,
    rev: i64,
    key: String,
    status: String,
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("the provider did not answer: {0}")]
    Unavailable(String),
    #[error("the provider's answer does not hold together: {0}")]
    Invalid(String),
    #[error("the provider refused: {0}")]
    Refused(String),
}

/// The provider's client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub fn new(base: &str, api_key: Option<String>, timeout: Duration) -> Result<Client, String> {
        Ok(Client {
            endpoint: Endpoint::new("provider.url", base, api_key, timeout)?,
        })
    }

    /// Up to `limit` records changed after `after`, in change order.
    pub async fn page(&self, after: i64, limit: u32) -> Result<Page, Error> {
        let response = self
            .endpoint
            .get(&format!("/v1/charges?after={after}&limit={limit}"))
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("listing charges: {e}")))?;
        let status = response.status();
        let body = bounded(response).await?;
        if !status.is_success() {
            return Err(Error::Unavailable(format!(
                "listing charges: {status} {}",
                clip(&String::from_utf8_lossy(&body))
            )));
        }
        let raw: RawPage = serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("the list of charges: {e}")))?;
        if raw.charges.len() > limit as usize {
            return Err(Error::Invalid(format!(
                "{} records asked {limit}",
                raw.charges.len()
            )));
        }
        let mut last = after;
        let mut records = Vec::with_capacity(raw.charges.len());
        for r in raw.charges {
            let record = checked(r)?;
            if record.rev <= last {
                return Err(Error::Invalid(format!(
                    "rev {} after rev {last}: the list is not in change order",
                    record.rev
                )));
            }
            last = record.rev;
            records.push(record);
        }
        let next = records.last().map(|r| r.rev);
        if raw.next.is_some() && raw.next != next {
            return Err(Error::Invalid(format!(
                "next {:?}, but the page ends at {next:?}",
                raw.next
            )));
        }
        Ok(Page { records, next })
    }

    /// Voids the standing charge of `key` (a payment id).
    pub async fn void(&self, key: &str) -> Result<(), Error> {
        if !falcon_schemas::ids::is_valid_id(key) {
            return Err(Error::Invalid(format!("{key:?} is no payment id")));
        }
        let response = self
            .endpoint
            .post(&format!("/v1/charges/{key}/void"))
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("voiding {key}: {e}")))?;
        let status = response.status();
        let body = bounded(response).await?;
        match status.as_u16() {
            200 => Ok(()),
            400 | 404 | 409 => Err(Error::Refused(format!(
                "void of {key}: {status} {}",
                clip(&String::from_utf8_lossy(&body))
            ))),
            _ => Err(Error::Unavailable(format!(
                "voiding {key}: {status} {}",
                clip(&String::from_utf8_lossy(&body))
            ))),
        }
    }
}

fn checked(r: RawRecord) -> Result<Record, Error> {
    let at = |what: &str| Error::Invalid(format!("record seq {}: {what}", r.seq));
    if r.seq < 1 || r.rev < 1 {
        return Err(at("seq and rev must be positive"));
    }
    if r.key.is_empty() || r.key.len() > KEY_BYTES_MAX || r.key.chars().any(char::is_control) {
        return Err(at("a key of 1 to 256 bytes without control characters"));
    }
    let status = match r.status.as_str() {
        "charged" => "charged",
        "declined" => "declined",
        "voided" => "voided",
        _ => return Err(at("status is not charged, declined or voided")),
    };
    if r.amount_minor < 0 {
        return Err(at("a negative amount"));
    }
    if r.currency.len() > 8 || !r.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(at("a currency of at most 8 capital letters"));
    }
    Ok(Record {
        seq: r.seq,
        rev: r.rev,
        key: r.key,
        status,
        amount_minor: r.amount_minor,
        currency: r.currency,
    })
}

async fn bounded(response: reqwest::Response) -> Result<Vec<u8>, Error> {
    endpoint::bounded_body(response, PAGE_BYTES_MAX)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => Error::Invalid(e.to_string()),
            BodyError::Read(r) => Error::Unavailable(format!("reading the answer: {r}")),
        })
}
