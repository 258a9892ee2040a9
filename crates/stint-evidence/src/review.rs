//! `stint policy review`: one workflow's evidence as a Markdown block for
//! the pull request that moves its `review_by` forward.

use crate::observe::Observations;
use crate::report::{Report, Status};
use chrono::{DateTime, NaiveDate, SecondsFormat};
use std::fmt::Write as _;
use stint_core::policy::Workflow;

/// Text from a log or a policy, safe in a Markdown table cell: no pipe, no
/// backtick, no line break, no HTML.
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '|' | '`' | '<' | '>' => '?',
            c if c.is_control() => ' ',
            c if crate::render::is_format_override(c) => '?',
            c => c,
        })
        .collect()
}

/// Log text as a code span: no Markdown inside it is rendered.
fn code(text: &str) -> String {
    format!("`{}`", cell(text))
}

fn time(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The review status of `workflow` on `today`.
fn review_status(workflow: &Workflow, today: NaiveDate) -> String {
    let days = (workflow.review_by() - today).num_days();
    match days {
        d if d < 0 => format!(
            "**overdue**: `review_by` was {} ({} days ago)",
            workflow.review_by(),
            -d
        ),
        0 => format!("due today ({})", workflow.review_by()),
        d => format!("{} ({d} days left)", workflow.review_by()),
    }
}

/// The Markdown evidence block for `workflow` (one of `report`'s policy).
pub fn review_markdown(
    workflow: &Workflow,
    report: &Report,
    observations: &Observations,
    today: NaiveDate,
) -> String {
    let name = workflow.name();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Recertification evidence: workflow `{}`\n",
        cell(name)
    );
    let _ = writeln!(out, "- `review_by`: {}", review_status(workflow, today));
    let _ = writeln!(
        out,
        "- evidence: the audit log from {} to {} ({} records); {}",
        report.window_start, report.now, report.records, report.evidence
    );
    if let Some(verification) = &report.verification {
        let _ = writeln!(out, "- log: {}", verification.describe());
    }
    if let Some(stale) = crate::render::stale_note(report) {
        let _ = writeln!(out, "- **warning**: {stale}");
    }
    if !report.policy_loaded {
        let _ = writeln!(
            out,
            "- note: the policy file reviewed is not the one the broker loaded last in this log"
        );
    }
    let _ = writeln!(
        out,
        "\n| step | pattern | status | mints | scopes | last use | proposal |\n| --- | --- | --- | ---: | ---: | --- | --- |"
    );
    for step in report.steps.iter().filter(|s| s.workflow == name) {
        for p in &step.patterns {
            let proposal = match (p.status, &p.proposal) {
                (Status::Unused, Some(_)) => "remove".to_owned(),
                (Status::Narrow, Some(new)) => {
                    new.iter().map(|s| code(s)).collect::<Vec<_>>().join(", ")
                }
                _ => String::new(),
            };
            let status = if p.note.is_empty() {
                p.status.as_str().to_owned()
            } else {
                format!("{} ({})", p.status.as_str(), cell(&p.note))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                code(&step.step),
                code(&p.pattern),
                status,
                p.mints,
                p.scopes.len(),
                p.last_use.as_deref().unwrap_or("never"),
                proposal
            );
        }
    }
    let prefix = format!("{name}/");
    let approvals: Vec<_> = observations
        .approvals
        .iter()
        .filter(|a| a.step.starts_with(&prefix))
        .collect();
    let _ = writeln!(out, "\nElevations approved in the window:\n");
    if approvals.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(
            out,
            "| time | step | scopes | approved by | approval |\n| --- | --- | --- | --- | --- |"
        );
        for a in approvals {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                time(a.time),
                code(&a.step),
                a.scopes
                    .iter()
                    .map(|s| code(s))
                    .collect::<Vec<_>>()
                    .join(" "),
                code(&a.operator),
                code(&a.approval_id)
            );
        }
    }
    if observations.approvals_not_kept > 0 {
        let _ = writeln!(
            out,
            "\n({} further approvals in the window, of every workflow, are not listed.)",
            observations.approvals_not_kept
        );
    }
    let drift: Vec<_> = report
        .drift
        .iter()
        .filter(|d| d.step.starts_with(&prefix))
        .collect();
    if !drift.is_empty() {
        let _ = writeln!(out, "\nPolicy changes that widened a step:\n");
        for d in drift {
            let moved = match d.review_by_moved {
                Some(true) => "review_by moved",
                Some(false) => "**review_by not moved**",
                None => "review_by not recorded",
            };
            let _ = writeln!(
                out,
                "- {} `{}`: added {} ({moved})",
                d.time,
                cell(&d.step),
                d.added
                    .iter()
                    .map(|s| code(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    out
}
