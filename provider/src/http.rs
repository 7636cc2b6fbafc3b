//! The HTTP/JSON API: routes, the gate every `/v1/...` request passes
//! (auth, outage, latency), the handlers, and the one shape of every
//! refusal, `{"error": "<code>", "message": "<text>"}`.
//!
//! # The API
//!
//! Bodies are JSON objects of at most [`BODY_BYTES_MAX`] bytes; unknown
//! and duplicate fields are refused. A refusal of input is 400
//! `bad_request` and its message starts with the field at fault
//! (`body` for the body as a whole, `query` for the query string).
//!
//! | request | answers |
//! | --- | --- |
//! | `POST /v1/charges` `{"key", "amount_minor", "currency"}` | new key: 201 charged record, or 402 declined record; known key, same amount and currency: the record again with the status of the first answer (200 charged or voided, 402 declined) and `Idempotent-Replayed: true`; known key, another amount or currency: 409 `key_reused` |
//! | `GET /v1/charges/{key}` | 200 record; 404 `unknown_key` |
//! | `POST /v1/charges/{key}/void` (no body) | 200 voided record: the charge is undone (`Idempotent-Replayed: true` if it was already voided or closed); 409 `not_charged` for a decline; 404 `unknown_key` |
//! | `POST /v1/charges/{key}/close` `{"key", "amount_minor", "currency"}` | settles the key for good without charging: a key never seen is closed, 200 a voided record without a `settlement_id` (reason `voided before any charge`), and a charge for it is then answered with that record, charging nothing; a key already settled, 200 its record as it stands (a charge stays charged) with `Idempotent-Replayed: true`; 409 `key_reused` when the amount or currency is not the key's |
//! | `GET /v1/charges?after=<rev>&limit=<n>` | 200 `{"charges": [records with rev > after, in rev order], "next": <last rev of the page> or null when the page is empty}`: every record written or changed since the change `after`, each at its latest state (a charge voided later shows again, voided, at its new rev); `after` ≥ 0, default 0; `limit` 1..=1000, default 100 |
//! | `GET /v1/totals` | 200 `{"charged": [{"currency", "count", "amount_minor"}], "voided": [..] (charges undone), "declined_count", "closed_count" (keys closed before they charged)}` |
//! | `GET /admin/faults` | 200 the faults in force |
//! | `GET /admin/stats` | 200 `{"requests": {route: n}, "refused_in_outage": {route: n}}`, routes `charge`, `lookup`, `void`, `close`, `list`, `totals`: what was asked since start, and what the outage refused |
//! | `PUT /admin/faults` any subset of the faults' fields | 200 the faults now in force; 400 if out of range |
//! | `GET /health` | 200 `{"status": "ok"}` |
//!
//! A record is `{"seq", "rev", "key", "status": "charged" | "declined" |
//! "voided", "amount_minor", "currency", "settlement_id": "prv-<seq>" |
//! null, "reason": string | null, "created_at": RFC 3339, "voided_at": RFC
//! 3339 | null}` ([`Record`]). `seq` is the record's place in the ledger,
//! fixed at its insert. `rev` is the ledger's change sequence: every write
//! of a record (a charge, a decline, a close, a void) gives it the next
//! rev, strictly increasing over the whole ledger, so a record's `rev` is
//! that of its latest change, and a replay, which writes nothing, keeps
//! it. A reader that pages by `after=<last rev>` (the `next` of its last
//! page) sees every record written or changed since, each at its latest
//! state, and never misses a change: revs are committed in order. A ledger
//! from before `rev` gives its records `rev = seq` when migrated (a charge
//! voided there keeps the rev of its insert).
//!
//! Every `/v1/...` request passes, in order: the API key (401
//! `unauthenticated` without `Authorization: Bearer <api_key>` when one is
//! set), the outage (503 `unavailable`, nothing read or written), the
//! latency. `/admin/...` needs the admin key when one is set; `/health` is
//! open. Unknown routes are 404 `not_found`, wrong methods 405
//! `method_not_allowed`, ledger failures 500 `internal` (retry with the
//! same key: the key makes the retry safe).
//!
//! After a new charge is committed, with probability
//! `hang_after_charge_bps / 10000` the answer waits `hang_ms`: a timeout
//! after charging. Latency and hangs end early when the server shuts down.
//!
//! Handlers take bodies as bytes and queries as raw pairs and type them in
//! [`crate::request`], so that no extractor answers in a shape of its own:
//! every refusal, even of a body over the limit or a malformed path, is the
//! JSON above.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SubsecRound, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tracing::Span;

use crate::faults::{self, Faults};
use crate::ledger::{self, Charged, Closed, Ledger, Record, Status, Voided};
use crate::request::{self, BadRequest};

/// The largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 4 * 1024;

/// The header on an answer that repeats an earlier one.
pub const REPLAYED: &str = "idempotent-replayed";

/// What every handler shares.
pub(crate) struct App {
    pub(crate) ledger: Ledger,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) api_key: Option<String>,
    pub(crate) admin_key: Option<String>,
    /// Turns true when the server begins to shut down: latency and hangs
    /// end early so in-flight requests drain.
    pub(crate) stopping: watch::Receiver<bool>,
    /// What was asked, by route, since start.
    pub(crate) stats: Stats,
}

/// The `/v1` routes, as counted.
const ROUTES: [&str; 6] = ["charge", "lookup", "void", "close", "list", "totals"];

/// Requests by route, and those the outage refused.
#[derive(Default)]
pub(crate) struct Stats {
    requests: [std::sync::atomic::AtomicU64; ROUTES.len()],
    refused: [std::sync::atomic::AtomicU64; ROUTES.len()],
}

impl Stats {
    /// The route of a `/v1` request, by method and path.
    fn route(method: &axum::http::Method, path: &str) -> Option<usize> {
        let rest = path.strip_prefix("/v1/")?;
        let name = match (method.as_str(), rest) {
            ("POST", "charges") => "charge",
            ("GET", "charges") => "list",
            ("GET", "totals") => "totals",
            ("POST", r) if r.starts_with("charges/") && r.ends_with("/void") => "void",
            ("POST", r) if r.starts_with("charges/") && r.ends_with("/close") => "close",
            ("GET", r) if r.starts_with("charges/") => "lookup",
            _ => return None,
        };
        ROUTES.iter().position(|r| *r == name)
    }

    fn snapshot(
        counts: &[std::sync::atomic::AtomicU64],
    ) -> serde_json::Map<String, serde_json::Value> {
        ROUTES
            .iter()
            .zip(counts)
            .map(|(r, n)| {
                (
                    (*r).to_owned(),
                    n.load(std::sync::atomic::Ordering::Relaxed).into(),
                )
            })
            .collect()
    }
}

impl App {
    fn faults(&self) -> Faults {
        // Faults is plain data, whole after any panic: a poisoned lock
        // still holds a valid value.
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_faults(
        &self,
        f: impl FnOnce(Faults) -> Result<Faults, faults::Invalid>,
    ) -> Result<Faults, faults::Invalid> {
        let mut guard = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let next = f(*guard)?;
        *guard = next;
        Ok(next)
    }

    /// Waits `ms`, or less if the server is shutting down.
    async fn pause(&self, ms: u64) {
        if ms == 0 {
            return;
        }
        let mut stopping = self.stopping.clone();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
}

type Shared = Arc<App>;

/// A refusal: status, machine code and human text.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct RefusalBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 409 `key_reused`: the key is held for another amount or currency.
    fn key_reused(record: &Record, asked: &request::Charge) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "key_reused",
            format!(
                "the key {:?} was used for {} {} (seq {}), not {} {}",
                record.key,
                record.amount_minor,
                record.currency,
                record.seq,
                asked.amount_minor,
                asked.currency
            ),
        )
    }

    fn unknown_key(key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_key",
            format!("no charge has the key {key:?}"),
        )
    }
}

impl From<BadRequest> for Refusal {
    fn from(e: BadRequest) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
    }
}

impl From<faults::Invalid> for Refusal {
    fn from(e: faults::Invalid) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
    }
}

impl From<ledger::Error> for Refusal {
    fn from(e: ledger::Error) -> Self {
        // Logged here, where it is handled; the client learns only that it
        // is our fault and may retry.
        tracing::error!(error = %crate::report(&e), "ledger failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the ledger failed; retry with the same key",
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(RefusalBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn bad_body(e: &BytesRejection) -> Refusal {
    BadRequest {
        field: "body",
        reason: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("is over {BODY_BYTES_MAX} bytes")
        } else {
            e.body_text()
        },
    }
    .into()
}

/// The key of a `/v1/charges/{key}...` path, checked, and recorded on the
/// request's span.
fn path_key(key: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    let Path(key) = key.map_err(|e| bad_path(&e))?;
    request::key(&key)?;
    Span::current().record("key", key.as_str());
    Ok(key)
}

fn bad_path(e: &PathRejection) -> Refusal {
    BadRequest {
        field: "key",
        reason: e.body_text(),
    }
    .into()
}

/// A record answer, marked as a replay or not.
fn answer(status: StatusCode, record: Record, replayed: bool) -> Response {
    let mut response = (status, Json(record)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The status a record is answered with, first time and every replay.
fn status_of(record: &Record) -> StatusCode {
    match record.status {
        Status::Declined => StatusCode::PAYMENT_REQUIRED,
        Status::Charged | Status::Voided => StatusCode::OK,
    }
}

/// The router, every route in place.
pub(crate) fn router(app: Shared) -> Router {
    let v1 = Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{key}", get(get_charge))
        .route("/v1/charges/{key}/void", post(void_charge))
        .route("/v1/charges/{key}/close", post(close_charge))
        .route("/v1/totals", get(totals))
        .route_layer(middleware::from_fn_with_state(app.clone(), gate_v1));
    let admin = Router::new()
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(app.clone(), gate_admin));
    Router::new()
        .merge(v1)
        .merge(admin)
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(app)
}

/// Equal in time whatever the contents, so that timing leaks no prefix of
/// the key (the length may show).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(expected: Option<&str>, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the bearer token is not valid here",
        )),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "an Authorization: Bearer <key> header is required",
        )),
    }
}

/// Before every `/v1/...` handler: the API key, then the outage, then the
/// latency.
async fn gate_v1(State(app): State<Shared>, request: Request, next: Next) -> Response {
    if let Err(refusal) = authorize(app.api_key.as_deref(), request.headers()) {
        return refusal.into_response();
    }
    let route = Stats::route(request.method(), request.uri().path());
    let count = |counts: &[std::sync::atomic::AtomicU64]| {
        if let Some(n) = route.and_then(|i| counts.get(i)) {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    count(&app.stats.requests);
    let faults = app.faults();
    if faults.outage {
        count(&app.stats.refused);
        return Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the provider is down (simulated outage)",
        )
        .into_response();
    }
    app.pause(faults.latency_ms).await;
    next.run(request).await
}

async fn gate_admin(State(app): State<Shared>, request: Request, next: Next) -> Response {
    match authorize(app.admin_key.as_deref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

#[tracing::instrument(skip_all, fields(key, amount_minor, currency, status, replayed))]
async fn create_charge(
    State(app): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let body = body.map_err(|e| bad_body(&e))?;
    let charge = request::charge(&body)?;
    let span = Span::current();
    span.record("key", charge.key.as_str());
    span.record("amount_minor", charge.amount_minor);
    span.record("currency", charge.currency.as_str());
    let decline = faults::declines(&charge.key, app.faults().decline_bps);
    let now = Utc::now().trunc_subsecs(6);
    match app.ledger.charge(&charge, decline, now).await? {
        Charged::New(record) => {
            span.record("status", record.status.as_str());
            span.record("replayed", false);
            tracing::info!(seq = record.seq, rev = record.rev, "new record");
            if record.status == Status::Declined {
                return Ok(answer(StatusCode::PAYMENT_REQUIRED, record, false));
            }
            // The charge is committed; now, maybe, the answer is lost in
            // time: the client times out and must find out by key.
            let faults = app.faults();
            if faults::chance(faults.hang_after_charge_bps) {
                tracing::info!(hang_ms = faults.hang_ms, "hanging after the charge");
                app.pause(faults.hang_ms).await;
            }
            Ok(answer(StatusCode::CREATED, record, false))
        }
        Charged::Existing(record) if record.same_request(&charge) => {
            span.record("status", record.status.as_str());
            span.record("replayed", true);
            Ok(answer(status_of(&record), record, true))
        }
        Charged::Existing(record) => Err(Refusal::key_reused(&record, &charge)),
    }
}

#[tracing::instrument(skip_all, fields(key))]
async fn get_charge(
    State(app): State<Shared>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, Refusal> {
    let key = path_key(key)?;
    match app.ledger.get(&key).await? {
        Some(record) => Ok(answer(StatusCode::OK, record, false)),
        None => Err(Refusal::unknown_key(&key)),
    }
}

#[tracing::instrument(skip_all, fields(key))]
async fn void_charge(
    State(app): State<Shared>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let key = path_key(key)?;
    let body = body.map_err(|e| bad_body(&e))?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::from(BadRequest {
            field: "body",
            reason: format!(
                "a void takes no body; a key never charged is closed with POST /v1/charges/{key}/close"
            ),
        }));
    }
    let now = Utc::now().trunc_subsecs(6);
    match app.ledger.void(&key, now).await? {
        Voided::Now(record) => {
            tracing::info!(seq = record.seq, rev = record.rev, "voided");
            Ok(answer(StatusCode::OK, record, false))
        }
        Voided::Already(record) => Ok(answer(StatusCode::OK, record, true)),
        Voided::NotCharged(record) => Err(Refusal::new(
            StatusCode::CONFLICT,
            "not_charged",
            format!(
                "the key {:?} was declined (seq {}): there is no charge to void",
                record.key, record.seq
            ),
        )),
        Voided::Unknown => Err(Refusal::unknown_key(&key)),
    }
}

/// Settles a key for good without charging: closes a key never seen, and
/// answers a settled key with its record as it stands (a charge stays a
/// charge), so that whoever gives up on a capture learns what the key
/// holds in the same step that stops a charge still on its way.
#[tracing::instrument(skip_all, fields(key))]
async fn close_charge(
    State(app): State<Shared>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let key = path_key(key)?;
    let charge = request::charge(&body.map_err(|e| bad_body(&e))?)?;
    if charge.key != key {
        return Err(Refusal::from(BadRequest {
            field: "key",
            reason: format!("must be the key of the path, {key:?}"),
        }));
    }
    let now = Utc::now().trunc_subsecs(6);
    match app.ledger.close_key(&charge, now).await? {
        Closed::New(record) => {
            tracing::info!(
                seq = record.seq,
                rev = record.rev,
                "key closed before any charge"
            );
            Ok(answer(StatusCode::OK, record, false))
        }
        Closed::Existing(record) => Ok(answer(StatusCode::OK, record, true)),
        Closed::Reused(record) => Err(Refusal::key_reused(&record, &charge)),
    }
}

#[derive(Serialize)]
struct PageBody {
    charges: Vec<Record>,
    next: Option<i64>,
}

async fn list_charges(
    State(app): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Refusal> {
    let Query(pairs) = query.map_err(|e| {
        Refusal::from(BadRequest {
            field: "query",
            reason: e.body_text(),
        })
    })?;
    let page = request::page(&pairs)?;
    let charges = app.ledger.page(page.after, page.limit).await?;
    let next = charges.last().map(|r| r.rev);
    Ok(Json(PageBody { charges, next }).into_response())
}

async fn totals(State(app): State<Shared>) -> Result<Response, Refusal> {
    Ok(Json(app.ledger.totals().await?).into_response())
}

async fn get_faults(State(app): State<Shared>) -> Json<Faults> {
    Json(app.faults())
}

async fn put_faults(
    State(app): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Faults>, Refusal> {
    let body = body.map_err(|e| bad_body(&e))?;
    let patch = request::faults_patch(&body)?;
    let next = app.set_faults(|current| patch.apply(current))?;
    tracing::info!(faults = ?next, "faults changed");
    Ok(Json(next))
}

async fn stats(State(app): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": Stats::snapshot(&app.stats.requests),
        "refused_in_outage": Stats::snapshot(&app.stats.refused),
    }))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found() -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> Refusal {
    Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn bearer_tokens() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("ascii"),
            );
            h
        };
        assert!(authorize(None, &HeaderMap::new()).is_ok());
        assert!(authorize(Some("k"), &HeaderMap::new()).is_err());
        assert!(authorize(Some("k"), &with("Bearer k")).is_ok());
        assert!(authorize(Some("k"), &with("bearer k")).is_ok());
        assert!(authorize(Some("k"), &with("Basic k")).is_err());
        assert!(authorize(Some("k"), &with("Bearer j")).is_err());
        assert!(authorize(Some("k"), &with("Bearer")).is_err());
    }
}
