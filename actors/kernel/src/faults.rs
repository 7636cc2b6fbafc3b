//! Fault injection for tests and chaos tooling: an armed fault makes a
//! batch of an actor panic at a chosen point (after its commit, before its
//! acks), so that recovery from the worst moment can be shown.

use std::collections::HashMap;
use std::sync::Mutex;

use falcon_sagas::Actor as ActorName;

/// Where an injected fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// After a batch's transaction committed, before its messages are acked:
    /// the worst moment to die.
    AfterCommit,
}

/// How many more times a fault fires, and for which message only (if set).
type Armed = (u32, Option<String>);

/// Faults armed by tests and chaos tooling: a batch of the actor panics at
/// the point, `times` times, optionally only a batch holding a message whose
/// subject contains a given text.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<HashMap<(ActorName, FaultPoint), Armed>>,
}

impl Faults {
    /// The actor's next `times` batches panic at `point`.
    pub fn arm(&self, actor: ActorName, point: FaultPoint, times: u32) {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((actor, point), (times, None));
    }

    /// The actor's next `times` batches holding a message whose subject
    /// contains `subject` panic at `point`.
    pub fn arm_for(&self, actor: ActorName, point: FaultPoint, subject: &str, times: u32) {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((actor, point), (times, Some(subject.to_owned())));
    }

    /// Panics if a fault is armed here for this batch (that is the point).
    pub fn trip(&self, actor: ActorName, point: FaultPoint, batch: &[falcon_nats::Delivery]) {
        let fire = {
            let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
            match armed.get_mut(&(actor, point)) {
                Some((n, filter)) if *n > 0 => {
                    let hit = filter
                        .as_deref()
                        .is_none_or(|f| batch.iter().any(|d| d.subject.contains(f)));
                    if hit {
                        *n -= 1;
                    }
                    hit
                }
                _ => false,
            }
        };
        if fire {
            panic!("injected fault: {actor} at {point:?}");
        }
    }
}
