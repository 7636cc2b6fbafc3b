//! One owner per consumer loop, spread over the processes that run an
//! actor (docs/DESIGN.md, "One owner per partition").
//!
//! Two mechanisms, with separate jobs:
//!
//! - **Exclusion is the broker's.** Every durable is read through the
//!   `pinned_client` priority group [`falcon_nats::topology::OWNER_GROUP`]:
//!   the server delivers a consumer's messages to one pull client at a time
//!   and moves the pin only when that client has not pulled for the owner
//!   timeout, or is unpinned. Nothing here can make two processes handle
//!   one partition's messages at once.
//! - **Balance is this module's.** Each process of an actor says it is
//!   alive on `falcon.member.<actor>` every [`BEAT`] ([`Owners::run`]), and
//!   all of them compute the same assignment of the actor's loops to the
//!   live members ([`assign`]). A process pulls only the loops assigned to
//!   it and releases the others, so the pins follow the assignment. A
//!   member not heard for [`EXPIRE_BEATS`] beats is dead: its loops are
//!   assigned to the survivors, whose pulls are pinned once the dead
//!   owner's pins time out. Views that disagree for a moment (a member just
//!   joined) cost a pull on standby, never a double delivery.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use falcon_sagas::Actor;
use falcon_schemas::subject::partition_of;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How often a process says it is alive.
pub const BEAT: Duration = Duration::from_secs(1);
/// A member not heard for this many beats is taken for dead.
pub const EXPIRE_BEATS: u32 = 3;
/// A beat is a few dozen bytes; anything longer is not one.
const MAX_BEAT_BYTES: usize = 512;
/// Instance names are `<node>-<8 hex>`; nodes are short.
const MAX_INSTANCE_BYTES: usize = 160;
/// Members of one actor, at most; a beat from one more is ignored.
pub const MAX_MEMBERS: usize = 256;
/// How long a starting process listens before it owns anything: members
/// answer a newcomer's first beat at once, so this is a round trip with
/// margin, not a beat.
pub const SETTLE: Duration = Duration::from_millis(250);

/// The subject the processes of `actor` beat on.
pub fn subject(actor: Actor) -> String {
    format!("falcon.member.{}", actor.as_str())
}

/// One beat: "`instance` runs this actor" (or, `leaving`, "no longer").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beat {
    pub instance: String,
    #[serde(default)]
    pub leaving: bool,
}

impl Beat {
    /// A beat from the wire, or why it is not one.
    pub fn parse(payload: &[u8]) -> Result<Beat, String> {
        if payload.len() > MAX_BEAT_BYTES {
            return Err(format!("{} bytes, over {MAX_BEAT_BYTES}", payload.len()));
        }
        let beat: Beat = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let name = &beat.instance;
        if name.is_empty()
            || name.len() > MAX_INSTANCE_BYTES
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!("instance {name:?} is not an instance name"));
        }
        Ok(beat)
    }
}

/// Which member owns each of `units`: every member gets
/// ⌈units / members⌉ at most, and each unit goes to the member that ranks
/// it highest (a hash of member and unit) among those with room. Every
/// process computing it from the same members gets the same answer, and a
/// member joining or leaving moves few units. No members, no owners.
pub fn assign(units: &[String], members: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    if members.is_empty() {
        return owners;
    }
    let mut units: Vec<&String> = units.iter().collect();
    units.sort();
    units.dedup();
    let cap = units.len().div_ceil(members.len());
    let mut load: HashMap<&str, usize> = HashMap::new();
    for unit in units {
        let mut ranked: Vec<(u32, &String)> = members
            .iter()
            .map(|m| (partition_of(&format!("{m}\u{1f}{unit}"), u32::MAX), m))
            .collect();
        ranked.sort_by(|a, b| b.cmp(a));
        if let Some((_, m)) = ranked
            .into_iter()
            .find(|(_, m)| load.get(m.as_str()).copied().unwrap_or(0) < cap)
        {
            *load.entry(m.as_str()).or_default() += 1;
            owners.insert(unit.clone(), m.clone());
        }
    }
    owners
}

/// This process's view of one actor's members, and the loops it owns.
pub struct Owners {
    actor: Actor,
    me: String,
    state: Mutex<View>,
    owned: watch::Sender<BTreeSet<String>>,
}

#[derive(Default)]
struct View {
    /// Whether it has listened for [`SETTLE`]: until then it owns nothing,
    /// so a starting process does not take over loops that live members
    /// own.
    settled: bool,
    units: Vec<String>,
    /// Other members, with when each was last heard.
    others: HashMap<String, Instant>,
}

impl Owners {
    /// The view of `me` (this runtime's instance) before it has listened:
    /// it owns nothing until [`Owners::run`] has heard the others (or
    /// [`Owners::settle`] says there are none to hear).
    pub fn new(actor: Actor, me: &str) -> Arc<Owners> {
        Arc::new(Owners {
            actor,
            me: me.to_owned(),
            state: Mutex::new(View::default()),
            owned: watch::Sender::new(BTreeSet::new()),
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A view that owns every loop until it hears of another member: for a
    /// process that is the only one (a replay, a test).
    pub fn solo(actor: Actor, me: &str, units: Vec<String>) -> Arc<Owners> {
        let owners = Owners::new(actor, me);
        owners.view().units = units;
        owners.settle();
        owners
    }

    /// Ends listening: the view assigns loops from now on.
    pub fn settle(&self) {
        self.view().settled = true;
        self.recompute();
    }

    /// The actor's loops (`payment`, `payment-0`, …), the units assigned.
    pub fn set_units(&self, units: Vec<String>) {
        self.view().units = units;
        self.recompute();
    }

    /// Whether this process owns loop `unit` now.
    pub fn owns(&self, unit: &str) -> bool {
        self.owned.borrow().contains(unit)
    }

    /// The loops this process owns, as they change.
    pub fn watch(&self) -> watch::Receiver<BTreeSet<String>> {
        self.owned.subscribe()
    }

    /// The live members, this process first.
    pub fn members(&self) -> Vec<String> {
        let mut out = vec![self.me.clone()];
        let mut others: Vec<String> = self.view().others.keys().cloned().collect();
        others.sort();
        out.extend(others);
        out
    }

    /// Forgets members not heard for [`EXPIRE_BEATS`] beats, then assigns
    /// the units again.
    fn recompute(&self) {
        let owned = {
            let mut view = self.view();
            let deadline = BEAT * EXPIRE_BEATS;
            view.others.retain(|_, heard| heard.elapsed() < deadline);
            if !view.settled {
                return;
            }
            let mut members: BTreeSet<String> = view.others.keys().cloned().collect();
            members.insert(self.me.clone());
            assign(&view.units, &members)
                .into_iter()
                .filter(|(_, m)| *m == self.me)
                .map(|(unit, _)| unit)
                .collect::<BTreeSet<String>>()
        };
        self.owned.send_if_modified(|now| {
            if *now == owned {
                return false;
            }
            tracing::info!(actor = self.actor.as_str(), instance = %self.me, owned = ?owned, "loops owned");
            *now = owned;
            true
        });
    }

    /// Takes one beat heard on the subject; true when it is from a member
    /// this view did not know (which is answered at once, so a newcomer
    /// settles with the whole view).
    fn hear(&self, payload: &[u8]) -> bool {
        let beat = match Beat::parse(payload) {
            Ok(beat) => beat,
            Err(e) => {
                tracing::warn!(actor = self.actor.as_str(), error = %e, "ignoring a membership beat");
                return false;
            }
        };
        if beat.instance == self.me {
            return false;
        }
        let new = {
            let mut view = self.view();
            if beat.leaving {
                view.others.remove(&beat.instance);
                false
            } else if view.others.len() < MAX_MEMBERS || view.others.contains_key(&beat.instance) {
                view.others.insert(beat.instance, Instant::now()).is_none()
            } else {
                tracing::warn!(actor = self.actor.as_str(), instance = %beat.instance, "over {MAX_MEMBERS} members; ignoring one more");
                false
            }
        };
        self.recompute();
        new
    }

    fn beat(&self, leaving: bool) -> bytes::Bytes {
        let beat = Beat {
            instance: self.me.clone(),
            leaving,
        };
        serde_json::to_vec(&beat).unwrap_or_default().into()
    }

    /// Beats and listens until the task is aborted: the first beat at
    /// once, then [`SETTLE`] of listening before the view owns anything,
    /// then a beat every [`BEAT`]. A failed subscribe is retried each beat;
    /// meanwhile the view stays as it was (the broker still excludes double
    /// delivery).
    pub async fn run(self: Arc<Self>, client: async_nats::Client) {
        let subject = subject(self.actor);
        let settle_at = tokio::time::Instant::now() + SETTLE;
        let mut ticks = tokio::time::interval(BEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let publish = |leaving: bool| {
            let (client, subject, beat) = (client.clone(), subject.clone(), self.beat(leaving));
            async move {
                if let Err(e) = client.publish(subject, beat).await {
                    tracing::debug!(error = %e, "publishing a membership beat");
                }
            }
        };
        loop {
            let mut beats = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(actor = self.actor.as_str(), error = %e, "subscribing to membership beats");
                    ticks.tick().await;
                    continue;
                }
            };
            loop {
                let settling = !self.view().settled;
                tokio::select! {
                    _ = tokio::time::sleep_until(settle_at), if settling => self.settle(),
                    _ = ticks.tick() => {
                        publish(false).await;
                        self.recompute();
                    }
                    heard = beats.next() => match heard {
                        Some(m) => {
                            if self.hear(&m.payload) {
                                publish(false).await;
                            }
                        }
                        None => break,
                    },
                }
            }
        }
    }

    /// Tells the other members this process is leaving, so they take its
    /// loops at once instead of after [`EXPIRE_BEATS`] beats.
    pub async fn leave(&self, client: &async_nats::Client) {
        if let Err(e) = client.publish(subject(self.actor), self.beat(true)).await {
            tracing::debug!(actor = self.actor.as_str(), error = %e, "publishing a leaving beat");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: u32) -> Vec<String> {
        let mut u = vec!["payment".to_owned()];
        for p in 0..n {
            u.push(format!("payment-{p}"));
            u.push(format!("payment-view-{p}"));
        }
        u
    }

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_unit_has_one_owner_and_the_load_is_even() {
        let u = units(8);
        for m in 1..=7usize {
            let names: Vec<String> = (0..m).map(|i| format!("node{i}-a1b2c3d4")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let owners = assign(&u, &members(&refs));
            assert_eq!(owners.len(), u.len(), "{m} members");
            let cap = u.len().div_ceil(m);
            for name in &names {
                let load = owners.values().filter(|o| *o == name).count();
                assert!(load <= cap, "{name} owns {load} of {}", u.len());
            }
        }
        assert!(assign(&u, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn every_process_computes_the_same_assignment() {
        let u = units(4);
        let a = assign(&u, &members(&["x-1", "y-2", "z-3"]));
        let mut shuffled = u.clone();
        shuffled.reverse();
        shuffled.push("payment-0".into());
        assert_eq!(a, assign(&shuffled, &members(&["z-3", "x-1", "y-2"])));
    }

    #[test]
    fn a_member_leaving_moves_only_its_units_and_a_few_more() {
        let u = units(16);
        let before = assign(&u, &members(&["a", "b", "c", "d"]));
        let after = assign(&u, &members(&["a", "b", "c"]));
        let moved = u.iter().filter(|x| before[*x] != after[*x]).count();
        let lost = before.values().filter(|m| *m == "d").count();
        assert!(moved >= lost);
        assert!(moved <= lost + u.len() / 4, "moved {moved} of {}", u.len());
    }

    #[test]
    fn beats_from_the_wire_are_bounded_and_checked() {
        let ok = Beat::parse(br#"{"instance":"n1-0a1b2c3d"}"#).expect("a beat");
        assert_eq!(ok.instance, "n1-0a1b2c3d");
        assert!(!ok.leaving);
        for bad in [
            &b""[..],
            b"null",
            b"{}",
            br#"{"instance":""}"#,
            br#"{"instance":"a b"}"#,
            br#"{"instance":"a\u0000"}"#,
            br#"{"instance":"n1","leaving":"yes"}"#,
            br#"{"instance":"n1","extra":1}"#,
        ] {
            assert!(
                Beat::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"instance":"{}"}}"#, "x".repeat(MAX_INSTANCE_BYTES + 1));
        assert!(Beat::parse(long.as_bytes()).is_err());
        let huge = vec![b' '; MAX_BEAT_BYTES + 1];
        assert!(Beat::parse(&huge).is_err());
    }

    #[test]
    fn a_view_owns_everything_alone_and_shares_once_it_hears_others() {
        let o = Owners::new(Actor::Payment, "me-1");
        o.set_units(units(4));
        assert!(!units(4).iter().any(|u| o.owns(u)), "owns before settling");
        assert!(o.hear(br#"{"instance":"other-2"}"#));
        assert!(!o.hear(br#"{"instance":"other-2"}"#), "known already");
        o.settle();
        let mine = units(4).iter().filter(|u| o.owns(u)).count();
        assert!(mine > 0 && mine < units(4).len(), "owns {mine}");
        assert_eq!(o.members(), ["me-1", "other-2"]);
        o.hear(br#"{"instance":"other-2","leaving":true}"#);
        assert!(units(4).iter().all(|u| o.owns(u)));
        // Its own beat, and garbage, change nothing.
        o.hear(br#"{"instance":"me-1","leaving":true}"#);
        o.hear(b"\xff\xfe");
        assert!(units(4).iter().all(|u| o.owns(u)));
    }
}
