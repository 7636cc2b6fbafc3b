//! Stream names, subjects and header names of the contract.

/// Commands from clients (`falcon.cmd.>`).
pub const STREAM_CMD: &str = "FALCON_CMD";
/// Domain events, the sagas' source of truth (`falcon.evt.>`).
pub const STREAM_EVT: &str = "FALCON_EVT";
/// Messages an actor could not process, with why (`falcon.dlq.>`).
pub const STREAM_DLQ: &str = "FALCON_DLQ";

pub const CMD_PREFIX: &str = "falcon.cmd.";
pub const EVT_PREFIX: &str = "falcon.evt.";
pub const DLQ_PREFIX: &str = "falcon.dlq.";

/// The principal a command subject names: its last token, after
/// `falcon.cmd.<aggregate>.<verb>.`. The broker's permissions pin that
/// token to the connected identity (see docs/DESIGN.md, "Who may pay"), so
/// it is the command's authenticated sender. `None` when the subject has no
/// fifth token or it is not a valid id.
pub fn command_principal(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(CMD_PREFIX)?;
    let mut tokens = rest.split('.');
    let (_aggregate, _verb, principal) = (tokens.next()?, tokens.next()?, tokens.next()?);
    (tokens.next().is_none() && crate::ids::is_valid_id(principal)).then_some(principal)
}

/// JetStream's de-duplication header; FalconPay sets it to the event id.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, also carried in the envelope's `traceparent`.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// Headers on a dead letter in FALCON_DLQ.
pub mod dlq {
    /// Why the message could not be processed (one line).
    pub const ERROR: &str = "Falcon-Dlq-Error";
    /// The subject the message was published on.
    pub const ORIGINAL_SUBJECT: &str = "Falcon-Original-Subject";
    /// The stream it was stored in.
    pub const ORIGINAL_STREAM: &str = "Falcon-Original-Stream";
    /// Its sequence in that stream.
    pub const ORIGINAL_SEQ: &str = "Falcon-Original-Seq";
    /// The durable consumer that gave up on it.
    pub const CONSUMER: &str = "Falcon-Consumer";
    /// How many times it had been delivered.
    pub const DELIVERY_COUNT: &str = "Falcon-Delivery-Count";
    /// The original's `Nats-Msg-Id`, when it had one (the inbox key a
    /// replay must reuse).
    pub const ORIGINAL_MSG_ID: &str = "Falcon-Original-Msg-Id";
}

/// The envelope member that carries an event's signature; always the last
/// member of the JSON object (see `falcon_kernel::signing`).
pub const SIGNATURE_MEMBER: &str = "falconsig";

/// The dead-letter subject for a message that `consumer` gave up on:
/// `falcon.dlq.<consumer>.<original subject>`.
pub fn dlq_subject(consumer: &str, original_subject: &str) -> String {
    format!("{DLQ_PREFIX}{consumer}.{original_subject}")
}

/// The filter matching every event of one saga (or one wallet's events),
/// on subjects as published (see [`stored_filters`] to read a stream).
pub fn saga_filter(saga_id: &str) -> String {
    format!("{EVT_PREFIX}*.*.{saga_id}")
}

/// Filters on published subjects as filters on a partitioned stream's
/// stored ones (see [`logical`]): each filter as it is (it matches what was
/// stored before partitioning, and a `>` matches the partition token too)
/// and, unless it ends in `>`, with any partition (`<filter>.*`).
pub fn stored_filters(filters: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(filters.len() * 2);
    for f in filters {
        out.push(f.clone());
        if !f.ends_with('>') {
            out.push(format!("{f}.*"));
        }
    }
    out
}

/// A subject as published from a subject as stored, and its partition.
///
/// FALCON_CMD and FALCON_EVT partition their messages with a subject
/// transform: `falcon.cmd.<aggregate>.<verb>.<principal>` and
/// `falcon.evt.<aggregate>.<event>.<key>` are stored with one more token,
/// the partition (`partition(N, 3)` of the third token after the prefix).
/// This gives back the published subject (what events are signed over and
/// decoded against) and the partition; a subject of any other shape comes
/// back as it is, with no partition.
pub fn logical(stored: &str) -> (&str, Option<u32>) {
    let Some(rest) = stored
        .strip_prefix(CMD_PREFIX)
        .or_else(|| stored.strip_prefix(EVT_PREFIX))
    else {
        return (stored, None);
    };
    if rest.split('.').count() != 4 {
        return (stored, None);
    }
    let Some((published, partition)) = stored.rsplit_once('.') else {
        return (stored, None);
    };
    match partition.parse::<u32>() {
        Ok(p) if partition.bytes().all(|b| b.is_ascii_digit()) => (published, Some(p)),
        _ => (stored, None),
    }
}

/// The partition JetStream's `partition(n, …)` transform gives `key`:
/// FNV-1a (32 bits) of its bytes, modulo `n` (`n` ≥ 1).
pub fn partition_of(key: &str, n: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % n.max(1)
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    #[test]
    fn logical_strips_only_a_partition_token() {
        assert_eq!(
            logical("falcon.evt.payment.requested.p1.2"),
            ("falcon.evt.payment.requested.p1", Some(2))
        );
        assert_eq!(
            logical("falcon.cmd.payment.create.alice.0"),
            ("falcon.cmd.payment.create.alice", Some(0))
        );
        for same in [
            "falcon.evt.payment.requested.p1",
            "falcon.evt.payment.requested.p1.x",
            "falcon.evt.payment.requested.p1.-1",
            "falcon.evt.payment.requested.p1.+1",
            "falcon.evt.payment.requested.p1.2.3",
            "falcon.dlq.c.falcon.evt.a.b.c",
            "falcon.evt.a.b.c.99999999999",
        ] {
            assert_eq!(logical(same), (same, None), "{same}");
        }
    }

    #[test]
    fn stored_filters_match_both_forms() {
        assert_eq!(
            stored_filters(&["falcon.evt.*.*.p1".into(), "falcon.evt.payment.>".into()]),
            [
                "falcon.evt.*.*.p1",
                "falcon.evt.*.*.p1.*",
                "falcon.evt.payment.>"
            ]
        );
    }

    /// The values nats-server 2.15 gave for `partition(4, 3)`.
    #[test]
    fn partition_of_is_the_servers() {
        assert_eq!(partition_of("p1", 4), 2);
        assert_eq!(partition_of("p2", 4), 3);
        assert_eq!(partition_of("p3", 4), 0);
        assert_eq!(partition_of("abc", 4), 3);
        assert_eq!(partition_of("anything", 1), 0);
    }
}
