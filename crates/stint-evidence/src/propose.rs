//! The proposal as an edit of the policy file that keeps its comments and
//! layout, and as a unified diff.

use crate::report::{Report, Status, proposal_is_narrower};
use stint_core::policy::Policy;
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
}

/// `text` (the policy file) with every `unused` pattern removed and every
/// `narrow` one replaced by its concrete scopes; a step left with no
/// pattern is removed whole. The result is parsed as a policy before it is
/// returned. `source` names the file in errors.
pub fn propose(source: &str, text: &str, report: &Report) -> Result<String, ProposeError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ProposeError::Parse(e.to_string()))?;
    for step in &report.steps {
        let step_ref = format!("{}/{}", step.workflow, step.step);
        let changes: Vec<(&str, &[String])> = step
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
        let steps = doc
            .get_mut("workflows")
            .and_then(|w| w.get_mut(&step.workflow))
            .and_then(|w| w.get_mut("steps"))
            .ok_or_else(|| ProposeError::NoScopes(step_ref.clone()))?;
        let emptied = {
            let table = steps
                .get_mut(&step.step)
                .ok_or_else(|| ProposeError::NoScopes(step_ref.clone()))?;
            let scopes = table
                .get_mut("scopes")
                .and_then(Item::as_array_mut)
                .ok_or_else(|| ProposeError::NoScopes(step_ref.clone()))?;
            for (pattern, new) in &changes {
                replace(scopes, pattern, new);
            }
            let emptied = scopes.is_empty();
            // A pattern removed is no longer marked for removal either.
            if let Some(shadow) = table.get_mut("shadow").and_then(Item::as_array_mut) {
                for (pattern, _) in &changes {
                    replace(shadow, pattern, &[]);
                }
                if shadow.is_empty()
                    && let Some(table) = table.as_table_like_mut()
                {
                    table.remove("shadow");
                }
            }
            emptied
        };
        if emptied && let Some(table) = steps.as_table_like_mut() {
            table.remove(&step.step);
        }
    }
    let proposed = doc.to_string();
    // Removing every step of a workflow leaves a workflow the loader may
    // refuse; any such problem stops the proposal rather than ship it.
    Policy::parse(source, &proposed).map_err(|e| ProposeError::Invalid(e.to_string()))?;
    Ok(proposed)
}

/// Replace `pattern` in `scopes` by `new` (none: removed), in its place,
/// keeping the layout of the elements around it.
fn replace(scopes: &mut Array, pattern: &str, new: &[String]) {
    let Some(index) = scopes.iter().position(|v| v.as_str() == Some(pattern)) else {
        return;
    };
    let decor = scopes.get(index).map(|v| v.decor().clone());
    scopes.remove(index);
    let mut at = index;
    for scope in new {
        if scopes.iter().any(|v| v.as_str() == Some(scope.as_str())) {
            continue;
        }
        let mut value = Value::from(scope.as_str());
        if let Some(decor) = &decor {
            *value.decor_mut() = decor.clone();
        }
        scopes.insert_formatted(at, value);
        at += 1;
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
