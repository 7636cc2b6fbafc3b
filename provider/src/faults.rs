//! The faults an operator switches on to test FalconPay against a provider
//! that misbehaves: latency, declines, outages and "a timeout after
//! charging". Pure data and pure decisions; the HTTP layer applies them.

use serde::{Deserialize, Serialize};

/// One in ten thousand: the unit of every probability here.
pub const BPS_MAX: u32 = 10_000;

/// The longest latency an operator may set, in milliseconds (10 minutes).
pub const LATENCY_MS_MAX: u64 = 600_000;

/// The longest hang after a charge an operator may set, in milliseconds
/// (10 minutes).
pub const HANG_MS_MAX: u64 = 600_000;

/// The faults in force. Changed at run time through `PUT /admin/faults`;
/// every change applies to the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Delay before every `/v1/...` request is handled, in milliseconds.
    /// Default 0, at most [`LATENCY_MS_MAX`].
    pub latency_ms: u64,
    /// Share of never-seen keys declined, in basis points (0..=10000).
    /// Which keys decline is decided by the key alone ([`declines`]), so a
    /// test can pick keys that do. Default 0.
    pub decline_bps: u32,
    /// Share of new charges after which the answer is held back for
    /// `hang_ms`, in basis points (0..=10000): the charge is committed, the
    /// client times out. Default 0.
    pub hang_after_charge_bps: u32,
    /// How long a hang after a charge lasts, in milliseconds. Default
    /// 30000, at most [`HANG_MS_MAX`].
    pub hang_ms: u64,
    /// Every `/v1/...` request is refused with 503 and nothing is recorded.
    /// Default false.
    pub outage: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            decline_bps: 0,
            hang_after_charge_bps: 0,
            hang_ms: 30_000,
            outage: false,
        }
    }
}

/// Faults out of range: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The offending field's name, as in JSON.
    pub field: &'static str,
    /// What the field must be.
    pub reason: String,
}

impl Faults {
    /// Checks every field is within its limit.
    pub fn validate(&self) -> Result<(), Invalid> {
        bps("decline_bps", self.decline_bps)?;
        bps("hang_after_charge_bps", self.hang_after_charge_bps)?;
        millis("latency_ms", self.latency_ms, LATENCY_MS_MAX)?;
        millis("hang_ms", self.hang_ms, HANG_MS_MAX)?;
        Ok(())
    }
}

fn bps(field: &'static str, value: u32) -> Result<(), Invalid> {
    if value > BPS_MAX {
        return Err(Invalid {
            field,
            reason: format!("{value} basis points is over {BPS_MAX}"),
        });
    }
    Ok(())
}

fn millis(field: &'static str, value: u64, max: u64) -> Result<(), Invalid> {
    if value > max {
        return Err(Invalid {
            field,
            reason: format!("{value} ms is over the limit of {max} ms"),
        });
    }
    Ok(())
}

/// A change to some of the faults (`PUT /admin/faults`): each field given
/// replaces the one in force, the others stay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Patch {
    pub latency_ms: Option<u64>,
    pub decline_bps: Option<u32>,
    pub hang_after_charge_bps: Option<u32>,
    pub hang_ms: Option<u64>,
    pub outage: Option<bool>,
}

impl Patch {
    /// The faults after this change, validated; `current` is not touched.
    pub fn apply(&self, current: Faults) -> Result<Faults, Invalid> {
        let next = Faults {
            latency_ms: self.latency_ms.unwrap_or(current.latency_ms),
            decline_bps: self.decline_bps.unwrap_or(current.decline_bps),
            hang_after_charge_bps: self
                .hang_after_charge_bps
                .unwrap_or(current.hang_after_charge_bps),
            hang_ms: self.hang_ms.unwrap_or(current.hang_ms),
            outage: self.outage.unwrap_or(current.outage),
        };
        next.validate()?;
        Ok(next)
    }
}

/// FNV-1a, 64 bits, over `bytes`: the hash that decides declines.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Whether a never-seen `key` is declined when `decline_bps` are:
/// `fnv1a64(key) % 10000 < decline_bps`. The same key always gets the same
/// answer, on any provider with the same setting.
pub fn declines(key: &str, decline_bps: u32) -> bool {
    fnv1a64(key.as_bytes()) % u64::from(BPS_MAX) < u64::from(decline_bps)
}

/// Whether a draw of `bps` basis points comes up: true with probability
/// `bps / 10000`.
pub fn chance(bps: u32) -> bool {
    bps > 0 && rand::random_range(0..BPS_MAX) < bps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn declines_at_the_edges() {
        assert!(!declines("any", 0));
        assert!(declines("any", BPS_MAX));
        let draw = u32::try_from(fnv1a64(b"k-1") % 10_000).expect("under 10000");
        assert!(!declines("k-1", draw));
        assert!(declines("k-1", draw + 1));
    }

    #[test]
    fn chance_at_the_edges() {
        assert!((0..100).all(|_| !chance(0)));
        assert!((0..100).all(|_| chance(BPS_MAX)));
    }

    #[test]
    fn patch_replaces_only_what_it_names_and_validates() {
        let current = Faults::default();
        let next = Patch {
            decline_bps: Some(500),
            ..Patch::default()
        }
        .apply(current)
        .expect("in range");
        assert_eq!(
            next,
            Faults {
                decline_bps: 500,
                ..current
            }
        );
        let err = Patch {
            hang_after_charge_bps: Some(10_001),
            ..Patch::default()
        }
        .apply(current)
        .expect_err("over 10000");
        assert_eq!(err.field, "hang_after_charge_bps");
        assert!(Patch {
            hang_ms: Some(HANG_MS_MAX + 1),
            ..Patch::default()
        }
        .apply(current)
        .is_err());
    }
}
