//! Signed events: every event carries an HMAC-SHA256 made with the key of
//! the actor that owns its type, and every consumer checks it before any
//! step sees the event (docs/DESIGN.md, "Signed events").
//!
//! The signature is the envelope's last member,
//! `,"falconsig":"hmac-sha256:<64 hex>"}`, over
//! `falcon-evt-v1\n<subject>\n<body without that member>\n`. It covers the
//! exact bytes that were published, so nothing is canonicalised and no
//! field can be added, dropped or reordered; and it covers the subject, so a
//! genuine event replayed onto another subject fails. Which key must have
//! signed comes from the subject's aggregate (`falcon.evt.wallet.…` →
//! wallet), never from the message.
//!
//! Why HMAC and not ed25519: a saga is about 7 events and 13 deliveries;
//! at 22 µs to sign and 49 µs to verify, ed25519 costs about 0.4 ms of CPU
//! per saga, half of today's whole budget, while HMAC costs about 0.9 µs a
//! message. The price is that a key that verifies can also sign: an actor
//! holding the ring could forge another actor's event, which the broker's
//! permissions stop (it may publish only its own subjects). Each check
//! alone stops a client; both together stop a client and a compromised
//! actor that has only its own NATS identity.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use falcon_sagas::Actor;
use falcon_schemas::subject::{EVT_PREFIX, SIGNATURE_MEMBER};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The scheme tag in the signature value.
const SCHEME: &str = "hmac-sha256:";
/// The domain separator of the signed bytes (a version of this format).
const DOMAIN: &[u8] = b"falcon-evt-v1\n";
/// Bytes of a signature's hex digits.
const SIG_HEX: usize = 64;
/// Shortest key accepted, in bytes.
pub const KEY_MIN: usize = 32;

/// `,"falconsig":"hmac-sha256:`
fn prefix() -> String {
    format!(",\"{SIGNATURE_MEMBER}\":\"{SCHEME}")
}

/// Length of the appended member: prefix, 64 hex digits, `"}`.
fn suffix_len() -> usize {
    prefix().len() + SIG_HEX + 2
}

/// Why an event was refused: it is dead-lettered with reason
/// `unauthenticated_event` and this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthenticated(pub String);

impl fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unauthenticated_event: {}", self.0)
    }
}

impl std::error::Error for Unauthenticated {}

/// The signing keys of every actor, as this process knows them.
#[derive(Clone, Default)]
pub struct KeyRing {
    /// Per actor: the key it signs with first, then older keys still
    /// accepted (rotation).
    keys: HashMap<Actor, Vec<HmacSha256>>,
    /// When true, an event without a valid signature is refused.
    required: bool,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut actors: Vec<&str> = self.keys.keys().map(Actor::as_str).collect();
        actors.sort_unstable();
        f.debug_struct("KeyRing")
            .field("actors", &actors)
            .field("required", &self.required)
            .finish()
    }
}

impl KeyRing {
    /// No keys: events are published unsigned and accepted unchecked
    /// (`security.mode = "open"`).
    pub fn open() -> KeyRing {
        KeyRing::default()
    }

    /// Whether signatures are required.
    pub fn required(&self) -> bool {
        self.required
    }

    /// A ring from keys given as bytes; signatures are required.
    pub fn from_keys(
        keys: impl IntoIterator<Item = (Actor, Vec<Vec<u8>>)>,
    ) -> Result<KeyRing, String> {
        let mut ring = KeyRing {
            keys: HashMap::new(),
            required: true,
        };
        for (actor, list) in keys {
            if list.is_empty() {
                return Err(format!("{actor}: no signing key"));
            }
            let macs = list
                .iter()
                .map(|k| mac(actor, k))
                .collect::<Result<Vec<_>, _>>()?;
            ring.keys.insert(actor, macs);
        }
        Ok(ring)
    }

    /// Reads `<dir>/<actor>.key` for every actor: one key per line as hex
    /// (at least 32 bytes), the first signs, every line verifies. Blank
    /// lines and `#` comments are skipped. Every actor's file must exist: a
    /// consumer checks events of every type it is given.
    pub fn load(dir: &Path) -> Result<KeyRing, String> {
        let mut keys = Vec::new();
        for actor in Actor::ALL {
            let path = dir.join(format!("{}.key", actor.as_str()));
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "signing key of {actor}: cannot read {}: {e} (run `falcon auth init`)",
                    path.display()
                )
            })?;
            let list = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| {
                    hex::decode(l).map_err(|e| {
                        format!("signing key of {actor} in {}: not hex: {e}", path.display())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            keys.push((actor, list));
        }
        KeyRing::from_keys(keys)
    }

    /// `body` (an encoded envelope, a JSON object) with `actor`'s signature
    /// appended as its last member. Unchanged when the ring has no key for
    /// `actor` and signatures are not required.
    pub fn sign(&self, actor: Actor, subject: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let Some(key) = self.keys.get(&actor).and_then(|k| k.first()) else {
            if self.required {
                return Err(format!("no signing key for {actor}"));
            }
            return Ok(body.to_vec());
        };
        let Some(open) = body.strip_suffix(b"}").filter(|o| o.len() > 1) else {
            return Err("an event body must be a non-empty JSON object".into());
        };
        let tag = tag(key, subject, body);
        let mut out = Vec::with_capacity(body.len() + suffix_len());
        out.extend_from_slice(open);
        out.extend_from_slice(prefix().as_bytes());
        out.extend_from_slice(hex::encode(tag).as_bytes());
        out.extend_from_slice(b"\"}");
        Ok(out)
    }

    /// Checks the signature of an event delivered on `subject`: the key is
    /// that of the actor owning the subject's aggregate. Passes anything
    /// when signatures are not required.
    pub fn check(&self, subject: &str, payload: &[u8]) -> Result<(), Unauthenticated> {
        if !self.required {
            return Ok(());
        }
        let refuse = |why: String| Err(Unauthenticated(why));
        let Some(actor) = emitter(subject) else {
            return refuse(format!(
                "{} is not an event subject of any actor",
                shown(subject)
            ));
        };
        let Some(keys) = self.keys.get(&actor) else {
            return refuse(format!("no key of {actor} to check it with"));
        };
        let Some((unsigned, sig)) = split(payload) else {
            return refuse(format!(
                "no {SIGNATURE_MEMBER} signature at the end of the envelope"
            ));
        };
        let Ok(sig) = hex::decode(sig) else {
            return refuse("the signature is not hex".into());
        };
        let ok = keys.iter().any(|key| {
            let mut m = key.clone();
            feed(&mut m, subject, &unsigned);
            m.verify_slice(&sig).is_ok()
        });
        if ok {
            Ok(())
        } else {
            refuse(format!(
                "the signature is not {actor}'s for this subject and body"
            ))
        }
    }
}

fn mac(actor: Actor, key: &[u8]) -> Result<HmacSha256, String> {
    if key.len() < KEY_MIN {
        return Err(format!(
            "signing key of {actor}: {} bytes, at least {KEY_MIN} needed",
            key.len()
        ));
    }
    HmacSha256::new_from_slice(key).map_err(|e| format!("signing key of {actor}: {e}"))
}

fn feed(m: &mut HmacSha256, subject: &str, unsigned: &[u8]) {
    m.update(DOMAIN);
    m.update(subject.as_bytes());
    m.update(b"\n");
    m.update(unsigned);
    m.update(b"\n");
}

fn tag(key: &HmacSha256, subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = key.clone();
    feed(&mut m, subject, body);
    m.finalize().into_bytes().to_vec()
}

/// The body as signed (the signature member removed, `}` put back) and the
/// signature's hex digits; `None` when the payload does not end with a
/// well-formed signature member.
fn split(payload: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let n = payload.len().checked_sub(suffix_len())?;
    let (body, suffix) = payload.split_at(n);
    let rest = suffix.strip_prefix(prefix().as_bytes())?;
    let sig = rest.strip_suffix(b"\"}")?;
    if sig.len() != SIG_HEX
        || !sig
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    if body.len() < 2 {
        return None;
    }
    let mut unsigned = Vec::with_capacity(n + 1);
    unsigned.extend_from_slice(body);
    unsigned.push(b'}');
    Some((unsigned, sig))
}

/// The actor that owns events on `subject`
/// (`falcon.evt.<aggregate>.<event>.<key>`).
pub fn emitter(subject: &str) -> Option<Actor> {
    let aggregate = subject.strip_prefix(EVT_PREFIX)?.split('.').next()?;
    Actor::of_aggregate(aggregate)
}

/// A subject as shown in an error: bounded, control characters escaped.
fn shown(subject: &str) -> String {
    let mut s: String = subject
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect();
    if subject.len() > 200 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "falcon.evt.wallet.funds_reserved.p1";

    fn ring() -> KeyRing {
        KeyRing::from_keys(Actor::ALL.map(|a| (a, vec![vec![a as u8 + 1; 32]])))
            .expect("valid keys")
    }

    fn body() -> Vec<u8> {
        br#"{"id":"e1","type":"falcon.wallet.funds_reserved.v1","data":{"amount":"5.00"}}"#.to_vec()
    }

    #[test]
    fn a_signed_event_checks_and_stays_json() {
        let r = ring();
        let signed = r.sign(Actor::Wallet, SUBJECT, &body()).expect("signs");
        assert_eq!(r.check(SUBJECT, &signed), Ok(()));
        let v: serde_json::Value = serde_json::from_slice(&signed).expect("still JSON");
        assert!(v[SIGNATURE_MEMBER]
            .as_str()
            .is_some_and(|s| s.starts_with(SCHEME)));
        assert_eq!(v["data"]["amount"], "5.00");
    }

    #[test]
    fn any_change_to_body_subject_or_signer_is_refused() {
        let r = ring();
        let signed = r.sign(Actor::Wallet, SUBJECT, &body()).expect("signs");
        // Every single-byte change anywhere in the message.
        for i in 0..signed.len() {
            let mut m = signed.clone();
            m[i] ^= 0x01;
            assert!(
                r.check(SUBJECT, &m).is_err(),
                "byte {i} changed and still accepted"
            );
        }
        // Another subject, even of the same actor.
        assert!(r
            .check("falcon.evt.wallet.funds_reserved.p2", &signed)
            .is_err());
        // Signed by another actor, on the wallet's subject.
        let by_payment = r.sign(Actor::Payment, SUBJECT, &body()).expect("signs");
        assert!(r.check(SUBJECT, &by_payment).is_err());
        // Unsigned, or signed with a key nobody has.
        assert!(r.check(SUBJECT, &body()).is_err());
        let other = KeyRing::from_keys([(Actor::Wallet, vec![vec![9; 32]])]).expect("valid");
        let forged = other.sign(Actor::Wallet, SUBJECT, &body()).expect("signs");
        assert!(r.check(SUBJECT, &forged).is_err());
        // Not an event subject.
        assert!(r.check("falcon.cmd.wallet.deposit.x", &signed).is_err());
    }

    #[test]
    fn an_old_key_still_verifies_during_rotation() {
        let old = KeyRing::from_keys([(Actor::Wallet, vec![vec![1; 32]])]).expect("valid");
        let signed = old.sign(Actor::Wallet, SUBJECT, &body()).expect("signs");
        let rotated =
            KeyRing::from_keys([(Actor::Wallet, vec![vec![2; 32], vec![1; 32]])]).expect("valid");
        assert_eq!(rotated.check(SUBJECT, &signed), Ok(()));
    }

    #[test]
    fn short_keys_and_bad_bodies_are_refused() {
        assert!(KeyRing::from_keys([(Actor::Wallet, vec![vec![1; 31]])]).is_err());
        let r = ring();
        assert!(r.sign(Actor::Wallet, SUBJECT, b"{}").is_err());
        assert!(r.sign(Actor::Wallet, SUBJECT, b"[1]").is_err());
        for junk in [&b""[..], b"}", b"{\"falconsig\":\"x\"}", &[0xff; 200]] {
            assert!(r.check(SUBJECT, junk).is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            // 2,000 in the suite; PROPTEST_CASES for a long run.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
            ..Default::default()
        })]

        /// Whatever arrives, the check answers and never panics; only the
        /// signer's exact bytes on the exact subject pass.
        #[test]
        fn arbitrary_messages_never_pass(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            subject in "[ -~]{0,60}",
            flip in 0usize..400,
        ) {
            let r = ring();
            proptest::prop_assert!(r.check(&subject, &payload).is_err());
            let mut body = b"{\"a\":".to_vec();
            body.extend(payload.iter().map(|b| b % 10 + b'0'));
            body.push(b'}');
            let signed = r.sign(Actor::Wallet, SUBJECT, &body).expect("signs");
            proptest::prop_assert_eq!(r.check(SUBJECT, &signed), Ok(()));
            let mut m = signed.clone();
            let i = flip % m.len();
            m[i] = m[i].wrapping_add(1);
            proptest::prop_assert!(r.check(SUBJECT, &m).is_err());
        }
    }

    #[test]
    fn an_open_ring_neither_signs_nor_checks() {
        let r = KeyRing::open();
        assert_eq!(r.sign(Actor::Wallet, SUBJECT, &body()), Ok(body()));
        assert_eq!(r.check(SUBJECT, &body()), Ok(()));
    }
}
