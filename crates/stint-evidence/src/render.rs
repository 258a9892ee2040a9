//! The report for people.

use crate::report::{Report, Status};
use std::fmt::Write as _;

/// A warning when the log ends well before the report's time: what was
/// granted since is not in it.
pub(crate) fn stale_note(report: &Report) -> Option<String> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let ends = report.log_ends.as_deref().and_then(parse);
    let now = parse(&report.now)?;
    match ends {
        None => Some("the log holds no record in the window or before it".to_owned()),
        Some(ends) if (now - ends).num_days() >= 7 => Some(format!(
            "the log ends at {}, {} days before the report's time: grants since are not in it (a stale copy?)",
            ends.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (now - ends).num_days()
        )),
        Some(_) => None,
    }
}

/// Text from a log, made safe to print on a terminal: control characters
/// (escape sequences) and bidirectional overrides become `?`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if (c.is_control() && c != '\n') || is_format_override(c) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Unicode characters that reorder or hide text (bidi controls, zero-width
/// marks).
pub(crate) fn is_format_override(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// The report as text: one block per step, one line per pattern, safe to
/// print on a terminal whatever the log held.
pub fn table(report: &Report) -> String {
    printable(&table_text(report))
}

fn table_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy suggest as of {} over {} days (from {}): {} records{}",
        report.now,
        report.window_days,
        report.window_start,
        report.records,
        if report.records_after_now > 0 {
            format!(", {} after that time ignored", report.records_after_now)
        } else {
            String::new()
        }
    );
    if !report.policy_loaded {
        let _ = writeln!(
            out,
            "note: this policy file is not the one the broker loaded last in this log"
        );
    }
    let _ = writeln!(out, "note: {}", report.evidence);
    if let Some(verification) = &report.verification {
        let _ = writeln!(out, "log: {}", verification.describe());
    }
    if let Some(stale) = stale_note(report) {
        let _ = writeln!(out, "warning: {stale}");
    }
    for step in &report.steps {
        let _ = writeln!(out, "\n{}/{}: {} jobs", step.workflow, step.step, step.jobs);
        let width = step
            .patterns
            .iter()
            .map(|p| p.pattern.len())
            .max()
            .unwrap_or(0);
        for p in &step.patterns {
            let _ = write!(
                out,
                "  {:<width$}  {:<12} {:>6} mints  {:>3} scopes  last {}",
                p.pattern,
                p.status.as_str(),
                p.mints,
                p.scopes.len(),
                p.last_use.as_deref().unwrap_or("never"),
            );
            match (&p.status, &p.proposal) {
                (Status::Unused, Some(_)) => {
                    let _ = write!(out, "  -> remove");
                }
                (Status::Narrow, Some(new)) => {
                    let _ = write!(out, "  -> {}", new.join(", "));
                }
                _ => {}
            }
            if !p.note.is_empty() {
                let _ = write!(out, "  ({})", p.note);
            }
            out.push('\n');
        }
        for c in &step.promotion_candidates {
            let _ = writeln!(
                out,
                "  elevated {} in {} approvals: a candidate for the step's own scopes (information only)",
                c.scope, c.approvals
            );
        }
    }
    if !report.needs.is_empty() {
        let _ = writeln!(out, "\nrefused as outside their step (information only):");
        for need in &report.needs {
            let _ = writeln!(
                out,
                "  {} {}: {} denials",
                need.step, need.scope, need.denials
            );
        }
    }
    if !report.drift.is_empty() {
        let _ = writeln!(out, "\npolicy changes that widened a step:");
        for drift in &report.drift {
            let review = match drift.review_by_moved {
                Some(true) => "review_by moved",
                Some(false) => "review_by NOT moved",
                None => "review_by not recorded",
            };
            let _ = write!(
                out,
                "  {} {}: added {} ({review})",
                drift.time,
                drift.step,
                drift.added.join(", ")
            );
            if !drift.new_scopes.is_empty() {
                let _ = write!(
                    out,
                    "; first granted since: {}",
                    drift.new_scopes.join(", ")
                );
            }
            out.push('\n');
        }
    }
    for overdue in &report.overdue {
        let _ = writeln!(
            out,
            "\nworkflow {} is past its review_by ({})",
            overdue.workflow, overdue.review_by
        );
    }
    out
}
