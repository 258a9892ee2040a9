//! The proposal as an edit of the policy file that keeps its comments and
//! layout, and as a unified diff.

use crate::report::{Report, Status, proposal_is_narrower};
use stint_core::policy::Policy;
use stint_core::scope::{Scope, ScopePattern, covered};
use toml_edit::{Array, DocumentMut, Item, Value};

/// Why no proposal could be written.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("the policy file is not TOML that can be edited: {0}")]
    Parse(String),
    #[error(
        "the policy file has no scopes array for step {0} (is it written in a form this edit does not know?)"
    )]
    NoScopes(String),
    #[error("the proposed policy does not load, so none is proposed: {0}")]
    Invalid(String),
    #[error(
        "internal check failed: the proposal for {0} would grant something the policy does not"
    )]
    Wider(String),
    #[error("internal check failed, so no proposal is made: {0}")]
    Internal(String),
}

/// `text` (the policy file) with every `unused` pattern removed (and any
/// `keep` or `shadow` entry naming it) and every `narrow` one replaced by
/// its concrete scopes. Removals are made first, so a narrowed scope that
/// was also listed on its own survives its own removal. The result is
/// checked (every pattern left alone is still there, every narrowed scope
/// still covered, no step emptied) and parsed as a policy before it is
/// returned. `source` names the file in errors.
pub fn propose(source: &str, text: &str, report: &Report) -> Result<String, ProposeError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ProposeError::Parse(e.to_string()))?;
    for step in &report.steps {
        let step_ref = format!("{}/{}", step.workflow, step.step);
        let mut changes: Vec<(&str, &[String])> = step
            .patterns
            .iter()
            .filter(|p| matches!(p.status, Status::Unused | Status::Narrow))
            .filter_map(|p| p.proposal.as_deref().map(|new| (p.pattern.as_str(), new)))
            .collect();
        if changes.is_empty() {
            continue;
        }
        for (pattern, new) in &changes {
            if !proposal_is_narrower(pattern, new) {
                return Err(ProposeError::Wider(format!("{step_ref} {pattern}")));
            }
        }
        // Removals (no replacement) before replacements.
        changes.sort_by_key(|(_, new)| !new.is_empty());
        let table = doc
            .get_mut("workflows")
            .and_then(|w| w.get_mut(&step.workflow))
            .and_then(|w| w.get_mut("steps"))
            .and_then(|s| s.get_mut(&step.step))
            .ok_or_else(|| ProposeError::NoScopes(step_ref.clone()))?;
        let scopes = table
            .get_mut("scopes")
            .and_then(Item::as_array_mut)
            .ok_or_else(|| ProposeError::NoScopes(step_ref.clone()))?;
        for (pattern, new) in &changes {
            replace(scopes, pattern, new);
        }
        check_step(step, scopes, &step_ref)?;
        // A pattern removed is no longer kept or marked for removal.
        let removed: Vec<&str> = changes.iter().map(|(pattern, _)| *pattern).collect();
        forget(table, &removed);
    }
    let proposed = doc.to_string();
    Policy::parse(source, &proposed).map_err(|e| ProposeError::Invalid(e.to_string()))?;
    Ok(proposed)
}

/// After the edit of `step`'s `scopes`: it still has a pattern, every
/// pattern the report did not change is still listed, and every scope a
/// `narrow` proposal names is still covered.
fn check_step(
    step: &crate::report::StepFinding,
    scopes: &Array,
    step_ref: &str,
) -> Result<(), ProposeError> {
    let left: Vec<ScopePattern> = scopes
        .iter()
        .filter_map(|v| v.as_str().and_then(|t| ScopePattern::parse(t).ok()))
        .collect();
    let listed = |pattern: &str| scopes.iter().any(|v| v.as_str() == Some(pattern));
    if left.is_empty() {
        return Err(ProposeError::Internal(format!(
            "{step_ref} would be left with no scope"
        )));
    }
    for p in &step.patterns {
        let kept = match (p.status, &p.proposal) {
            (Status::Unused, Some(_)) => true,
            (Status::Narrow, Some(new)) => new
                .iter()
                .all(|scope| Scope::parse(scope).is_ok_and(|scope| covered(&left, &scope))),
            _ => listed(&p.pattern),
        };
        if !kept {
            return Err(ProposeError::Internal(format!(
                "{step_ref} would lose {} (status {})",
                p.pattern,
                p.status.as_str()
            )));
        }
    }
    Ok(())
}

/// Drop the `keep` and `shadow` entries of `table` that name a pattern of
/// `removed` (empty lists go too).
fn forget(table: &mut Item, removed: &[&str]) {
    let Some(table) = table.as_table_like_mut() else {
        return;
    };
    if let Some(shadow) = table.get_mut("shadow").and_then(Item::as_array_mut) {
        for pattern in removed {
            replace(shadow, pattern, &[]);
        }
        if shadow.is_empty() {
            table.remove("shadow");
        }
    }
    let names = |scope: Option<&Item>| {
        scope
            .and_then(Item::as_str)
            .is_some_and(|s| removed.contains(&s))
    };
    match table.get_mut("keep") {
        Some(Item::Value(Value::Array(keep))) => {
            keep.retain(|entry| {
                !entry
                    .as_inline_table()
                    .and_then(|t| t.get("scope"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| removed.contains(&s))
            });
            if keep.is_empty() {
                table.remove("keep");
            }
        }
        Some(Item::ArrayOfTables(keep)) => {
            keep.retain(|entry| !names(entry.get("scope")));
            if keep.is_empty() {
                table.remove("keep");
            }
        }
        _ => {}
    }
}

/// Replace `pattern` in `scopes` by `new` (none: removed), in its place,
/// keeping the comments of the elements around it with them.
///
/// In an array laid out one element a line, the comment after an element
/// is the first line of the next element's prefix (or of the array's
/// trailing text, after the last): the removed element's own comment goes
/// with it, and the comment of the element before it stays.
fn replace(scopes: &mut Array, pattern: &str, new: &[String]) {
    let Some(index) = scopes.iter().position(|v| v.as_str() == Some(pattern)) else {
        return;
    };
    let prefix = raw(scopes.get(index).and_then(|v| v.decor().prefix()));
    scopes.remove(index);
    let fresh: Vec<&String> = new
        .iter()
        .filter(|scope| !scopes.iter().any(|v| v.as_str() == Some(scope.as_str())))
        .collect();
    if fresh.is_empty() {
        // What followed the removed element now follows the one before.
        let (before, _) = first_line(&prefix);
        if prefix.contains('\n') {
            if let Some(next) = scopes.get_mut(index) {
                let old = raw(next.decor().prefix());
                let (_, rest) = first_line(&old);
                next.decor_mut().set_prefix(format!("{before}{rest}"));
            } else {
                let old = raw(Some(scopes.trailing()));
                let (_, rest) = first_line(&old);
                let trailing = format!("{before}{rest}");
                scopes.set_trailing(trailing);
            }
        } else if let Some(next) = scopes.get_mut(index) {
            next.decor_mut().set_prefix(prefix);
        }
        return;
    }
    let indent = match prefix.rfind('\n') {
        Some(at) => format!("\n{}", &prefix[at + 1..]),
        None => " ".to_owned(),
    };
    for (offset, scope) in fresh.into_iter().enumerate() {
        let mut value = Value::from(scope.as_str());
        value.decor_mut().set_prefix(if offset == 0 {
            prefix.clone()
        } else {
            indent.clone()
        });
        value.decor_mut().set_suffix("");
        scopes.insert_formatted(index + offset, value);
    }
}

fn raw(text: Option<&toml_edit::RawString>) -> String {
    text.and_then(toml_edit::RawString::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `text` split after its first newline (all of it is the rest if there
/// is none).
fn first_line(text: &str) -> (&str, &str) {
    match text.find('\n') {
        Some(at) => text.split_at(at + 1),
        None => ("", text),
    }
}

/// A unified diff from `old` to `new`, both named `path`.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(text: &str, pattern: &str, new: &[&str]) -> String {
        let mut doc: DocumentMut = text.parse().unwrap();
        let scopes = doc["scopes"].as_array_mut().unwrap();
        let new: Vec<String> = new.iter().map(|s| (*s).to_owned()).collect();
        replace(scopes, pattern, &new);
        doc.to_string()
    }

    const LISTED: &str =
        "scopes = [\n    \"a\",  # first\n    \"b\",  # second\n    \"c\",  # third\n]\n";

    #[test]
    fn a_removed_element_takes_its_comment_and_leaves_the_others_theirs() {
        assert_eq!(
            edit(LISTED, "c", &[]),
            "scopes = [\n    \"a\",  # first\n    \"b\",  # second\n]\n"
        );
        assert_eq!(
            edit(LISTED, "b", &[]),
            "scopes = [\n    \"a\",  # first\n    \"c\",  # third\n]\n"
        );
        assert_eq!(
            edit(LISTED, "a", &[]),
            "scopes = [\n    \"b\",  # second\n    \"c\",  # third\n]\n"
        );
        assert_eq!(
            edit("scopes = [\"a\", \"b\"]\n", "a", &[]),
            "scopes = [\"b\"]\n"
        );
        assert_eq!(
            edit("scopes = [\"a\", \"b\"]\n", "b", &[]),
            "scopes = [\"a\"]\n"
        );
        assert_eq!(edit(LISTED, "z", &[]), LISTED, "not there: unchanged");
    }

    #[test]
    fn a_narrowed_element_is_replaced_in_place_one_a_line() {
        assert_eq!(
            edit(LISTED, "b", &["b/1", "b/2"]),
            "scopes = [\n    \"a\",  # first\n    \"b/1\",\n    \"b/2\",  # second\n    \"c\",  # third\n]\n"
        );
        assert_eq!(
            edit("scopes = [\"a\", \"b\"]\n", "a", &["a/1", "a/2"]),
            "scopes = [\"a/1\", \"a/2\", \"b\"]\n"
        );
        // A scope already listed is not listed twice.
        assert_eq!(
            edit(LISTED, "b", &["c"]),
            "scopes = [\n    \"a\",  # first\n    \"c\",  # third\n]\n"
        );
    }
}
