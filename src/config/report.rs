//! Finding every mistake in one pass, and the file line of each.
//!
//! serde stops at the first error of a table; [`deserialize_all`] records
//! it, prunes the offending key and deserializes again, so a typo does not
//! hide the mistakes after it. [`Lines`] maps a reported key path back to
//! the line it is on, so every error and warning (whoever added it) gets one.

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The most mistakes looked for in one table (as many as are listed, `super::MAX_LISTED_ERRORS`).
const MAX_ROUNDS: usize = 50;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `base` followed by `steps`, written as in error reports: `pools[0].endpoints[1].http`.
fn joined(base: &str, steps: &[Step]) -> String {
    let mut path = base.to_owned();
    for step in steps {
        match step {
            Step::Key(key) if path.is_empty() => path.push_str(key),
            Step::Key(key) => {
                path.push('.');
                path.push_str(key);
            }
            Step::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

/// The steps of serde's error path, up to the first it cannot name.
fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    let mut steps = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => steps.push(Step::Key(key.clone())),
            Segment::Seq { index } => steps.push(Step::Index(*index)),
            Segment::Enum { .. } => {}
            Segment::Unknown => break,
        }
    }
    steps
}

/// The field named by a serde message like ``missing field `pool` ``.
fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(field, _)| field)
}

fn value_at<'v>(value: &'v toml::Value, steps: &[Step]) -> Option<&'v toml::Value> {
    steps.iter().try_fold(value, |value, step| match step {
        Step::Key(key) => value.as_table()?.get(key),
        Step::Index(i) => value.as_array()?.get(*i),
    })
}

/// Removes the value at `steps` from `value`. An array element is not removed
/// alone (the indices after it would move, and their errors be misplaced): its
/// whole array goes. Returns the steps of what was removed, or `None` when
/// there is nothing there to remove.
fn prune(value: &mut toml::Value, steps: &[Step]) -> Option<Vec<Step>> {
    let keyed = steps.iter().rposition(|s| matches!(s, Step::Key(_)))?;
    let Step::Key(key) = &steps[keyed] else {
        return None;
    };
    let parent = steps[..keyed]
        .iter()
        .try_fold(value, |value, step| match step {
            Step::Key(key) => value.as_table_mut()?.get_mut(key),
            Step::Index(i) => value.as_array_mut()?.get_mut(*i),
        })?;
    parent.as_table_mut()?.remove(key)?;
    Some(steps[..=keyed].to_vec())
}

/// Deserializes `value`, recording every mistake in it through `report`
/// (key path, message), not only the first: each offending key is pruned and
/// the rest deserialized again. Returns what remains once nothing more is wrong,
/// or `None` when the table as a whole is wrong (a required key is missing or
/// was pruned). A required key missing because it was pruned is a consequence,
/// not reported again. Each round prunes a key, so there are at most as many
/// as keys, and at most [`MAX_ROUNDS`]: each reads the table again, and a
/// table of thousands of mistakes would otherwise take quadratic time.
pub(super) fn deserialize_all<T: DeserializeOwned>(
    base: &str,
    mut value: toml::Value,
    mut report: impl FnMut(String, String),
) -> Option<T> {
    let mut pruned: Vec<Vec<Step>> = Vec::new();
    loop {
        if pruned.len() == MAX_ROUNDS {
            let whole = if base.is_empty() { "the file" } else { base };
            report(
                base.to_owned(),
                format!("more than {MAX_ROUNDS} mistakes in {whole}: the rest is not checked"),
            );
            return None;
        }
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => return Some(parsed),
            Err(error) => error,
        };
        let mut at = steps(error.path());
        let message = error.into_inner().message().trim_end().to_owned();
        if let Some(field) = quoted_field(&message, "missing field ") {
            let mut missing = at.clone();
            missing.push(Step::Key(field.to_owned()));
            if !pruned.contains(&missing) {
                report(joined(base, &missing), message);
            }
            // A table without a required key cannot be read: it goes, and a
            // table requiring it reports that in turn (or nothing, as a consequence).
            match prune(&mut value, &at) {
                Some(removed) => pruned.push(removed),
                None => return None,
            }
            continue;
        }
        // Inside an internally tagged enum (`[filters.*]`) serde's path stops
        // at the enum: the key is the one the message names, or the one
        // without which this error is gone.
        if let Some(key) = culprit::<T>(&value, &at, &message) {
            at.push(Step::Key(key));
        }
        report(joined(base, &at), message);
        match prune(&mut value, &at) {
            Some(removed) => pruned.push(removed),
            None => return None,
        }
    }
}

/// The key of the table at `at` that the error `message`, reported on the
/// table as a whole, is about; `None` when it is about the table itself (a
/// wrong `kind`, a table where a string belongs).
fn culprit<T: DeserializeOwned>(value: &toml::Value, at: &[Step], message: &str) -> Option<String> {
    let table = value_at(value, at)?.as_table()?;
    if let Some(field) = quoted_field(message, "unknown field ") {
        return table.contains_key(field).then(|| field.to_owned());
    }
    table.keys().find_map(|key| {
        let mut without = value.clone();
        let mut steps = at.to_vec();
        steps.push(Step::Key(key.clone()));
        prune(&mut without, &steps)?;
        let gone = match serde_path_to_error::deserialize::<_, T>(without) {
            Ok(_) => true,
            Err(e) => {
                let other = e.into_inner().message().trim_end().to_owned();
                other != message && quoted_field(&other, "missing field ").is_none()
            }
        };
        gone.then(|| key.clone())
    })
}

/// Where each key of a config file is, to give errors their line.
pub(super) struct Lines<'t> {
    text: &'t str,
    root: Option<Spanned<DeTable<'t>>>,
}

impl<'t> Lines<'t> {
    pub fn new(text: &'t str) -> Self {
        Lines {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line of the deepest key on `path` that the file has
    /// (`pools[1].endpoints[0].htp` → the line of `htp`, or of `endpoints`
    /// when the endpoint is inline), or `None` for the whole file.
    pub fn of(&self, path: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut table: Option<&DeTable> = Some(root.get_ref());
        let mut array: Option<&[Spanned<DeValue>]> = None;
        let mut start = None;
        for step in parse_path(path) {
            let found = match step {
                Step::Key(key) => table
                    .and_then(|t| t.get_key_value(key.as_str()))
                    .map(|(name, value)| (name.span().start, value)),
                Step::Index(i) => array
                    .and_then(|a| a.get(i))
                    .map(|value| (value.span().start, value)),
            };
            let Some((at, value)) = found else { break };
            start = Some(at);
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        start.map(|at| super::line_at(self.text, at))
    }
}

/// The steps of a reported key path (`a.b[2].c`).
fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        for index in indices.split('[') {
            match index.trim_end_matches(']').parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => break,
            }
        }
    }
    steps
}
