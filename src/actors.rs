//! The actors as the registry names them (`falcon_runtime::registry`): the
//! default and the validation of `falcon run --actors` and `falcon replay
//! --actor`, their help lines, and the list that the verbs touching every
//! actor (`doctor`, `verify`, `bench`) iterate. No verb names an actor.

use anyhow::{anyhow, bail, Result};
use falcon_runtime::registry::{self, REGISTRY};
use falcon_sagas::Actor;

/// Every registered actor, in registry order.
pub fn all() -> Vec<Actor> {
    REGISTRY.iter().map(|r| r.actor()).collect()
}

/// The registered actors' names, in registry order: the default of
/// `--actors`.
pub fn names() -> Vec<String> {
    registry::names().into_iter().map(str::to_owned).collect()
}

/// The names as a sentence: `payment, risk or wallet`.
pub fn one_of() -> String {
    let names = registry::names();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The registered actor named `name` (surrounding blanks ignored); the
/// error lists the registry's names.
pub fn by_name(name: &str) -> Result<Actor> {
    registry::by_name(name.trim())
        .map(|r| r.actor())
        // The registry's own error says "configuration: …", which is not
        // what went wrong here: a flag names no actor.
        .map_err(|_| anyhow!("unknown actor {name:?} ({})", registry::names().join(", ")))
}

/// The registered actors `names` name, each once, in the order given.
pub fn parse(names: &[String]) -> Result<Vec<Actor>> {
    let mut actors = Vec::new();
    for n in names {
        let a = by_name(n)?;
        if !actors.contains(&a) {
            actors.push(a);
        }
    }
    if actors.is_empty() {
        bail!("--actors names no actor");
    }
    Ok(actors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn every_registered_name_parses_to_its_actor() {
        assert_eq!(parse(&names()).expect("the registry's names parse"), all());
        for entry in REGISTRY {
            let name = entry.actor().as_str();
            assert_eq!(by_name(name).expect("registered"), entry.actor());
            assert_eq!(
                by_name(&format!(" {name} ")).expect("trimmed"),
                entry.actor()
            );
        }
    }

    #[test]
    fn duplicates_are_dropped_in_order() {
        let first = registry::names()[0];
        let last = *registry::names().last().expect("the registry is not empty");
        let parsed = parse(&strings(&[last, first, last])).expect("registered names");
        assert_eq!(
            parsed.iter().map(Actor::as_str).collect::<Vec<_>>(),
            if first == last {
                vec![first]
            } else {
                vec![last, first]
            }
        );
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_registry_names() {
        let e = parse(&strings(&["ledger"])).expect_err("not registered");
        assert_eq!(
            e.to_string(),
            format!(
                "unknown actor \"ledger\" ({})",
                registry::names().join(", ")
            )
        );
        assert!(parse(&[]).is_err(), "an empty list names no actor");
        assert!(by_name("").is_err());
    }

    #[test]
    fn one_of_lists_every_name_once() {
        let sentence = one_of();
        for name in registry::names() {
            assert_eq!(sentence.matches(name).count(), 1, "{sentence}");
        }
    }
}
