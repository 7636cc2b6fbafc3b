//! A refused payment command: the `payment.rejected` event that says why.
//! Shared by the command steps (`create`, `refund`).

use falcon_kernel::store::Outbox;
use falcon_schemas::command::CommandKind;
use falcon_schemas::event::RejectedData;
use falcon_schemas::{EventData, Reason};

/// Publishes the refusal of `command` (a [`CommandKind`]) under `key`.
pub(crate) fn reject(
    out: &mut Outbox,
    command: CommandKind,
    key: &str,
    reason: Reason,
    message: String,
) {
    out.push(EventData::PaymentRejected(RejectedData {
        command: command.as_str().to_owned(),
        key: key.to_owned(),
        reason,
        message,
        field: None,
    }));
}
