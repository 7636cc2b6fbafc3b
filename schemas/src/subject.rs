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

/// The filter matching every event of one saga (or one wallet's events).
pub fn saga_filter(saga_id: &str) -> String {
    format!("{EVT_PREFIX}*.*.{saga_id}")
}
