//! The pages, as maud templates: every interpolated value is escaped, so
//! a `<script>` in a reason, a comment or an audit record renders as text.
//! No inline script or style (the CSP allows neither); states are words,
//! never colour alone; every form control has a label.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use stint_server::operators::{ApprovalView, LiveCredential, LiveToken, Operator};

/// Which section a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Approvals,
    Live,
    Audit,
    Policy,
    None,
}

/// What every signed-in page shows around its body.
pub(crate) struct Frame<'a> {
    pub(crate) title: &'a str,
    pub(crate) nav: Nav,
    /// The operator and the session's CSRF token.
    pub(crate) signed_in: Option<(&'a str, &'a str)>,
    pub(crate) flash: Option<(&'a str, bool)>,
}

pub(crate) fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// `90` as `1m 30s`, `7200` as `2h`.
pub(crate) fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = Vec::new();
    if h > 0 {
        out.push(format!("{h}h"));
    }
    if m > 0 {
        out.push(format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push(format!("{s}s"));
    }
    out.join(" ")
}

/// `15m`, `1h30m`: a duration as the approve form takes it.
pub(crate) fn duration_param(secs: i64) -> String {
    let secs = secs.max(1);
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn until(at: i64, now: i64) -> String {
    if at > now {
        format!("{} (in {})", rfc3339(at), duration(at - now))
    } else {
        format!("{} ({} ago)", rfc3339(at), duration(now - at))
    }
}

fn nav_link(current: Nav, target: Nav, href: &str, label: &str) -> Markup {
    html! {
        @if current == target {
            a href=(href) aria-current="page" { (label) }
        } @else {
            a href=(href) { (label) }
        }
    }
}

pub(crate) fn page(frame: &Frame<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { "Stint · " (frame.title) }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header {
                    a.brand href="/approvals" { "Stint" }
                    @if let Some((operator, csrf)) = frame.signed_in {
                        nav aria-label="Sections" {
                            (nav_link(frame.nav, Nav::Approvals, "/approvals", "Approvals"))
                            (nav_link(frame.nav, Nav::Live, "/live", "Live"))
                            (nav_link(frame.nav, Nav::Audit, "/audit", "Audit"))
                            (nav_link(frame.nav, Nav::Policy, "/policy", "Policy"))
                        }
                        form.signout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            span { "Signed in as " strong { (operator) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if let Some((message, error)) = frame.flash {
                        @if error {
                            p.flash.error role="alert" { strong { "Refused: " } (message) }
                        } @else {
                            p.flash role="status" { (message) }
                        }
                    }
                    (body)
                }
            }
        }
    }
}

pub(crate) fn sign_in(issuer: &str, return_to: &str, note: Option<&str>) -> Markup {
    let start = format!(
        "/login/start?return_to={}",
        percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC)
    );
    let frame = Frame {
        title: "Sign in",
        nav: Nav::None,
        signed_in: None,
        flash: note.map(|n| (n, true)),
    };
    page(
        &frame,
        html! {
            h1 { "Sign in" }
            p { "Operators sign in with their identity provider, " strong { (issuer) } "." }
            p { a.button href=(start) { "Sign in with " (issuer) } }
        },
    )
}

/// Whether a page may be reached without a click from a navigation that
/// began on another site: only pages without a decision on them. A page
/// another site opened (a pop-up, a link) must not be one click (or a
/// double-click timed by that site) away from an approval or a stop.
pub(crate) fn continues_by_itself(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    matches!(path, "/approvals" | "/audit" | "/policy")
}

/// `Continue` to `path`: by itself if [`continues_by_itself`], else a link
/// to click (a navigation from this origin either way, so that the
/// `SameSite=Strict` session cookie goes with it).
fn go_on(path: &str, title: &str, message: Markup) -> Markup {
    let automatic = continues_by_itself(path);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if automatic {
                    meta http-equiv="refresh" content=(format!("0;url={path}"));
                }
                title { "Stint · " (title) }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                main {
                    p role="status" { (message) }
                    p { a.button #continue href=(path) { "Continue to " code { (path) } } }
                }
            }
        }
    }
}

/// The answer to a callback: signed in, go on.
pub(crate) fn signed_in(operator: &str, return_to: &str) -> Markup {
    go_on(
        return_to,
        "Signed in",
        html! { "Signed in as " strong { (operator) } "." },
    )
}

/// A link followed from elsewhere (a webhook's message) arrives without
/// the `SameSite=Strict` session cookie; going on from here, a navigation
/// from this origin, carries it.
pub(crate) fn reload(path: &str) -> Markup {
    go_on(path, "Continue", html! { "Opened from another site." })
}

pub(crate) fn error_page(frame: &Frame<'_>, heading: &str, message: &str) -> Markup {
    page(
        frame,
        html! {
            h1 { (heading) }
            p { (message) }
            p { a href="/approvals" { "Back to approvals" } }
        },
    )
}

/// Whether `operator` may decide `view` as far as the console can tell
/// (the broker decides: these only choose which forms to show).
pub(crate) fn may_decide(operator: &Operator, view: &ApprovalView) -> Result<(), String> {
    if view.state != "pending" {
        return Err(format!("the request is {}", view.state));
    }
    if !view
        .approver_groups
        .iter()
        .any(|g| operator.groups.contains(g))
    {
        return Err(format!(
            "only members of {} decide it",
            view.approver_groups.join(", ")
        ));
    }
    if operator.owns.contains(&view.workload) {
        return Err(format!("you own workload {}", view.workload));
    }
    if view.approvals.iter().any(|v| v.operator == operator.name) {
        return Err("you have approved it already".to_owned());
    }
    Ok(())
}

fn state_word(state: &str) -> Markup {
    html! { span.state data-state=(state) { (state.to_uppercase()) } }
}

pub(crate) fn approvals(
    frame: &Frame<'_>,
    operator: &Operator,
    views: &[ApprovalView],
    now: i64,
) -> Markup {
    let (mine, others): (Vec<&ApprovalView>, Vec<&ApprovalView>) =
        views.iter().partition(|v| may_decide(operator, v).is_ok());
    page(
        frame,
        html! {
            h1 { "Approvals" }
            h2 { "Waiting for you" }
            @if mine.is_empty() {
                p { "Nothing waits for your decision." }
            } @else {
                (approval_table(&mine, now, "Requests you may decide"))
            }
            h2 { "Other requests" }
            @if others.is_empty() {
                p { "None kept (requests are kept for a day after they end)." }
            } @else {
                (approval_table(&others, now, "Other requests, newest first"))
            }
        },
    )
}

fn approval_table(views: &[&ApprovalView], now: i64, caption: &str) -> Markup {
    html! {
        div.scroll {
            table {
                caption { (caption) }
                thead { tr {
                    th scope="col" { "Request" }
                    th scope="col" { "State" }
                    th scope="col" { "Workload" }
                    th scope="col" { "Step" }
                    th scope="col" { "Scopes asked" }
                    th scope="col" { "Approvals" }
                    th scope="col" { "Requested" }
                } }
                tbody {
                    @for v in views {
                        tr {
                            td { a href=(format!("/approvals/{}", v.id)) { code { (v.id) } } }
                            td { (state_word(&v.state)) }
                            td { (v.workload) }
                            td { code { (v.step) } }
                            td { @for s in &v.scopes { code { (s) } " " } }
                            td { (v.approvals.len()) " of " (v.approvals_required) }
                            td { (duration(now - v.requested_at)) " ago" }
                        }
                    }
                }
            }
        }
    }
}

/// Everything the approval page needs beyond the request itself.
pub(crate) struct ApprovalContext {
    /// Operators who own the workload.
    pub(crate) owners: Vec<String>,
    /// The step's standing grant in the policy in force.
    pub(crate) standing: Vec<String>,
    /// The elevation's scope patterns.
    pub(crate) elevation: Vec<String>,
}

pub(crate) fn approval(
    frame: &Frame<'_>,
    operator: &Operator,
    view: &ApprovalView,
    context: &ApprovalContext,
    csrf: &str,
    now: i64,
) -> Markup {
    let decidable = may_decide(operator, view);
    let may_revoke = matches!(view.state.as_str(), "pending" | "approved")
        && view
            .approver_groups
            .iter()
            .any(|g| operator.groups.contains(g));
    let (workflow, step) = view
        .step
        .split_once('/')
        .unwrap_or(("", view.step.as_str()));
    page(
        frame,
        html! {
            h1 { "Approval request " code { (view.id) } }
            p.ask {
                strong { (view.workload) } " (job " code { (view.job) } ", step " code { (view.step) } ") asks for "
                @for s in &view.scopes { strong { code { (s) } } " " }
                "on " code { (view.audience) } " for " (duration(view.duration_asked))
                @match &view.reason { Some(r) => { ", because " q { (r) } "." }, None => { ", giving no reason." } }
            }
            p.summary { (state_word(&view.state)) " · "
                (view.approvals.len()) " of " (view.approvals_required) " approvals"
                @if view.state == "pending" { " · expires " (until(view.expires_at, now)) }
                @if let Some(end) = view.approved_until { " · approved until " (until(end, now)) }
            }
            dl.facts {
                dt { "Workload" } dd { (view.workload) }
                dt { "Its owners" } dd {
                    @if context.owners.is_empty() { "none in the policy" }
                    @else { (context.owners.join(", ")) }
                }
                dt { "Connector" } dd { code { (view.client_id) } }
                dt { "Workflow" } dd { code { (workflow) } }
                dt { "Step" } dd { code { (step) } }
                dt { "Job" } dd { code { (view.job) }
                    @if let Some(run) = &view.run_url { " · " a href=(run) rel="noreferrer noopener" { "its CI run" } } }
                dt { "Audience" } dd { code { (view.audience) } }
                dt { "Reason" } dd {
                    @match &view.reason { Some(r) => { q { (r) } }, None => { "none given" } }
                }
                dt { "Duration asked" } dd { (duration(view.duration_asked)) " (at most " (duration(view.max_duration)) ")" }
                dt { "Requested" } dd { (until(view.requested_at, now)) }
                dt { "Who decides" } dd { "members of " (view.approver_groups.join(", ")) "; " (view.approvals_required) " distinct approvals" }
            }
            h2 { "Scopes" }
            div.scroll { table {
                caption { "What the job asks for, against the step's standing grant" }
                thead { tr { th scope="col" { "Scope" } th scope="col" { "Granted by" } } }
                tbody {
                    @for s in &view.scopes {
                        tr { td { code { (s) } } td { strong { "this approval" } " (elevation allows " (context.elevation.join(", ")) ")" } }
                    }
                    @for s in &context.standing {
                        tr { td { code { (s) } } td { "the standing grant (no approval needed)" } }
                    }
                }
            } }
            h2 { "Decisions so far" }
            @if view.approvals.is_empty() && view.decided_by.is_none() {
                p { "No one has decided yet." }
            } @else {
                div.scroll { table {
                    caption { "Approvals and denials" }
                    thead { tr { th scope="col" { "Operator" } th scope="col" { "Decision" } th scope="col" { "When" } th scope="col" { "Duration" } th scope="col" { "Comment" } } }
                    tbody {
                        @for v in &view.approvals {
                            tr { td { (v.operator) } td { "approved" } td { (until(v.at, now)) } td { (duration(v.duration)) }
                                 td { @if let Some(c) = &v.comment { (c) } } }
                        }
                        @if let Some(by) = &view.decided_by {
                            tr { td { (by) } td { (view.state) } td { } td { } td { @if let Some(c) = &view.comment { (c) } } }
                        }
                    }
                } }
            }
            @match &decidable {
                Ok(()) => {
                    section aria-labelledby="decide" {
                        h2 #decide { "Decide" }
                        form.decision method="post" action=(format!("/approvals/{}/approve", view.id)) {
                            input type="hidden" name="csrf" value=(csrf);
                            label for="duration" { "Approve for (at most " (duration(view.max_duration)) ")" }
                            input #duration type="text" name="duration" required inputmode="text"
                                pattern="[0-9]+[smh]" value=(duration_param(view.duration_asked));
                            label for="approve-comment" { "Comment (optional)" }
                            input #approve-comment type="text" name="comment" maxlength="1024";
                            button type="submit" name="decision" value="approve" { "Approve" }
                        }
                        form.decision method="post" action=(format!("/approvals/{}/deny", view.id)) {
                            input type="hidden" name="csrf" value=(csrf);
                            label for="deny-comment" { "Why deny (required)" }
                            input #deny-comment type="text" name="comment" required maxlength="1024";
                            button type="submit" name="decision" value="deny" { "Deny" }
                        }
                    }
                }
                Err(why) => {
                    p.note { "You cannot decide this request: " (why) "." }
                }
            }
            @if may_revoke {
                form.decision method="post" action=(format!("/approvals/{}/revoke", view.id)) {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="revoke-comment" { "Revoke: every token minted under it stops working (comment optional)" }
                    input #revoke-comment type="text" name="comment" maxlength="1024";
                    button type="submit" { "Revoke" }
                }
            }
        },
    )
}

/// The most rows a table of the Live page shows.
const MAX_ROWS: usize = 500;

/// A recent operator action, for the Live page.
pub(crate) struct Action {
    pub(crate) time: String,
    pub(crate) event: String,
    pub(crate) operator: String,
    pub(crate) via: Option<String>,
    pub(crate) what: String,
    pub(crate) comment: Option<String>,
}

pub(crate) struct WorkloadRow {
    pub(crate) name: String,
    pub(crate) stopped: bool,
    pub(crate) tokens: usize,
}

pub(crate) fn live(
    frame: &Frame<'_>,
    csrf: &str,
    tokens: Option<(&[LiveToken], u64)>,
    workloads: &[WorkloadRow],
    credentials: Result<&[LiveCredential], &str>,
    actions: &[Action],
    now: i64,
) -> Markup {
    // Grouped by workload and job in one pass (the list may be long).
    let mut jobs: Vec<(&str, &str, usize, Vec<&str>)> = Vec::new();
    if let Some((list, _)) = tokens {
        let mut at: std::collections::HashMap<(&str, &str), usize> =
            std::collections::HashMap::new();
        for t in list {
            let key = (t.workload.as_str(), t.job.as_str());
            let index = *at.entry(key).or_insert_with(|| {
                jobs.push((key.0, key.1, 0, Vec::new()));
                jobs.len() - 1
            });
            let (_, _, n, steps) = &mut jobs[index];
            *n += 1;
            if steps.len() < 16 && !steps.contains(&t.step.as_str()) {
                steps.push(&t.step);
            }
        }
    }
    page(
        frame,
        html! {
            h1 { "Live" }
            h2 { "Tokens" }
            @match tokens {
                None => { p { "This broker does not keep its live tokens." } }
                Some((list, untracked)) => {
                    @if untracked > 0 {
                        p.note role="status" { (untracked) " tokens minted while the list was full are not shown." }
                    }
                    @if list.len() > MAX_ROWS {
                        p.note role="status" { "The newest " (MAX_ROWS) " of " (list.len()) " live tokens are shown." }
                    }
                    @if list.is_empty() {
                        p { "No live token was minted by this broker." }
                    } @else {
                        div.scroll { table {
                            caption { "Live tokens minted by this broker, newest first" }
                            thead { tr {
                                th scope="col" { "Token (jti)" } th scope="col" { "Workload" } th scope="col" { "Job" }
                                th scope="col" { "Step" } th scope="col" { "Scopes" } th scope="col" { "Audience" }
                                th scope="col" { "Expires" } th scope="col" { "Revoke" }
                            } }
                            tbody { @for t in list.iter().take(MAX_ROWS) {
                                tr {
                                    td { code { (t.jti) } @if let Some(a) = &t.approval { br; "elevated: " a href=(format!("/approvals/{a}")) { code { (a) } } } }
                                    td { (t.workload) } td { code { (t.job) } }
                                    td { code { (t.workflow) "/" (t.step) } }
                                    td { @for s in &t.scopes { code { (s) } " " } }
                                    td { code { (t.audience) } }
                                    td { (until(t.expires_at, now)) }
                                    td { form method="post" action=(format!("/live/tokens/{}/revoke", t.jti)) {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" aria-label=(format!("Revoke token {}", t.jti)) { "Revoke" }
                                    } }
                                }
                            } }
                        } }
                    }
                }
            }
            h2 { "Jobs" }
            @if jobs.is_empty() {
                p { "No job holds a live token here." }
            } @else {
                div.scroll { table {
                    caption { "Jobs with live tokens" }
                    thead { tr { th scope="col" { "Workload" } th scope="col" { "Job" } th scope="col" { "Steps" } th scope="col" { "Tokens" } th scope="col" { "Revoke" } } }
                    tbody { @for (workload, job, n, steps) in jobs.iter().take(MAX_ROWS) {
                        tr {
                            td { (workload) } td { code { (job) } } td { (steps.join(", ")) } td { (n) }
                            td { form method="post" action="/live/jobs/revoke" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="workload" value=(workload);
                                input type="hidden" name="job" value=(job);
                                button type="submit" aria-label=(format!("Revoke job {job}")) { "Revoke job" }
                            } }
                        }
                    } }
                } }
            }
            h2 { "Workloads" }
            div.scroll { table {
                caption { "Workloads in the policy" }
                thead { tr { th scope="col" { "Workload" } th scope="col" { "State" } th scope="col" { "Live tokens" } th scope="col" { "Action" } } }
                tbody { @for w in workloads {
                    tr {
                        td { (w.name) }
                        td { @if w.stopped { strong { "STOPPED" } } @else { "minting" } }
                        td { (w.tokens) }
                        td {
                            @if w.stopped {
                                form method="post" action=(format!("/live/workloads/{}/enable", w.name)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" aria-label=(format!("Enable workload {}", w.name)) { "Enable" }
                                }
                            } @else {
                                form method="post" action=(format!("/live/workloads/{}/stop", w.name)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    label for=(format!("stop-{}", w.name)) { "Why stop (optional)" }
                                    input id=(format!("stop-{}", w.name)) type="text" name="comment" maxlength="1024";
                                    button type="submit" aria-label=(format!("Emergency stop of workload {}", w.name)) { "Emergency stop" }
                                }
                            }
                        }
                    }
                } }
            } }
            h2 { "Target credentials" }
            @match credentials {
                Err(why) => { p role="alert" { (why) } }
                Ok([]) => { p { "No target credential is live." } }
                Ok(list) => {
                    div.scroll { table {
                        caption { "Credentials made on targets, not yet destroyed" }
                        thead { tr { th scope="col" { "Id" } th scope="col" { "Target" } th scope="col" { "Upstream" } th scope="col" { "Workload / job / step" } th scope="col" { "Privileges" } th scope="col" { "State" } th scope="col" { "Expires" } } }
                        tbody { @for c in list {
                            tr {
                                td { code { (c.id) } } td { (c.target) " (" (c.kind) ")" } td { code { (c.upstream_id) } }
                                td { (c.workload) " / " code { (c.job) } " / " (c.step) }
                                td { @for s in &c.effective { code { (s) } " " } }
                                td { (c.state) @if let Some(e) = &c.last_error { br; "last error: " (e) } }
                                td { (until(c.expires_at, now)) }
                            }
                        } }
                    } }
                }
            }
            h2 { "Who did what" }
            @if actions.is_empty() {
                p { "No operator action in the recent audit records." }
            } @else {
                div.scroll { table {
                    caption { "Operators' recent actions, from the audit log" }
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "Operator" } th scope="col" { "Via" } th scope="col" { "On" } th scope="col" { "Comment" } } }
                    tbody { @for a in actions {
                        tr { td { (a.time) } td { code { (a.event) } } td { (a.operator) } td { (a.via.as_deref().unwrap_or("api")) } td { (a.what) } td { @if let Some(c) = &a.comment { (c) } } }
                    } }
                } }
            }
        },
    )
}

/// The Audit page's filters, as given.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditFilter {
    pub(crate) workload: String,
    pub(crate) job: String,
    pub(crate) event: String,
}

pub(crate) fn audit(
    frame: &Frame<'_>,
    status: &crate::audit_tail::Status,
    filter: &AuditFilter,
    events: &[&str],
    records: &[crate::audit_tail::Record],
) -> Markup {
    page(
        frame,
        html! {
            h1 { "Audit" }
            section.status aria-labelledby="chain" {
                h2 #chain { "The chain" }
                @match &status.error {
                    Some(error) => { p.flash.error role="alert" { strong { "BROKEN: " } (error) } }
                    None => { p role="status" { strong { "VERIFIED" } ": every link of the " (status.records) " records read from " (status.source) " checks out." } }
                }
                @if let Some(failed) = &status.transient {
                    p.flash.error role="alert" { strong { "NOT READ: " } (failed) " (tried again on the next page)" }
                }
                @if let Some(notice) = &status.notice {
                    p.note { (notice) }
                }
                dl.facts {
                    dt { "Head" } dd { code.hash { (status.head) } }
                    dt { "Checkpoints" } dd {
                        (status.verified_checkpoints) " signed by a published key"
                        @if status.unverified_checkpoints > 0 { ", " (status.unverified_checkpoints) " by an older key (not checked here)" }
                        "; " (status.unsigned) " records after the last verified one"
                    }
                    @if let Some(previous) = &status.continues {
                        dt { "Starts" } dd { "continuing " code { (previous) } " (not read here; " code { "stintd verify-audit" } " checks every file)" }
                    }
                }
            }
            h2 { "Recent records" }
            form.filters method="get" action="/audit" {
                label for="f-workload" { "Workload" }
                input #f-workload type="text" name="workload" value=(filter.workload) maxlength="128";
                label for="f-job" { "Job" }
                input #f-job type="text" name="job" value=(filter.job) maxlength="128";
                label for="f-event" { "Event" }
                select #f-event name="event" {
                    option value="" selected[filter.event.is_empty()] { "any" }
                    @for e in events {
                        option value=(e) selected[filter.event == *e] { (e) }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if records.is_empty() {
                p { "No record matches." }
            } @else {
                div.scroll { table {
                    caption { "Newest first (the last " (crate::audit_tail::KEPT) " records read)" }
                    thead { tr { th scope="col" { "Seq" } th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "Decision" } th scope="col" { "Workload" } th scope="col" { "Job" } th scope="col" { "Step" } th scope="col" { "Operator" } th scope="col" { "Detail" } } }
                    tbody { @for r in records {
                        tr {
                            td { (r.seq) } td { (r.entry.time) } td { code { (event_name(&r.entry)) } }
                            td { (format!("{:?}", r.entry.decision).to_lowercase()) }
                            td { (r.entry.sub.as_deref().unwrap_or("")) }
                            td { code { (r.entry.job.as_deref().unwrap_or("")) } }
                            td { (r.entry.step.as_deref().unwrap_or("")) }
                            td { (r.entry.operator.as_deref().unwrap_or(""))
                                 @if let Some(via) = &r.entry.via { " via " (via) } }
                            td {
                                @if let Some(reason) = &r.entry.reason { code { (reason) } " " }
                                @if let Some(detail) = &r.entry.detail { (detail) " " }
                                @if let Some(j) = &r.entry.justification { "reason: " q { (j) } " " }
                                @if let Some(c) = &r.entry.comment { "comment: " q { (c) } }
                            }
                        }
                    } }
                } }
            }
        },
    )
}

pub(crate) fn event_name(entry: &stint_core::audit::AuditEntry) -> String {
    serde_json::to_value(entry.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) struct WorkflowRow {
    pub(crate) name: String,
    pub(crate) review_by: String,
    pub(crate) days_left: i64,
    pub(crate) on_overdue: &'static str,
    pub(crate) steps: Vec<(String, Vec<String>, Option<String>)>,
}

pub(crate) fn policy(
    frame: &Frame<'_>,
    sha256: Option<&str>,
    workflows: &[WorkflowRow],
    report: Result<&crate::report::Computed, &String>,
) -> Markup {
    page(
        frame,
        html! {
            h1 { "Policy" }
            @if let Some(sha) = sha256 { p { "In force: SHA-256 " code.hash { (sha) } } }
            h2 { "Reviews" }
            div.scroll { table {
                caption { "Each workflow's review date" }
                thead { tr { th scope="col" { "Workflow" } th scope="col" { "Review by" } th scope="col" { "Status" } th scope="col" { "When overdue" } th scope="col" { "Steps and their standing grants" } } }
                tbody { @for w in workflows {
                    tr {
                        td { code { (w.name) } }
                        td { (w.review_by) }
                        td { @if w.days_left < 0 { strong { "OVERDUE" } " by " (-w.days_left) " days" }
                             @else if w.days_left <= 14 { strong { "DUE SOON" } ": in " (w.days_left) " days" }
                             @else { "in " (w.days_left) " days" } }
                        td { code { (w.on_overdue) } }
                        td { ul { @for (step, scopes, elevation) in &w.steps {
                            li { code { (step) } ": " @for s in scopes { code { (s) } " " }
                                 @if let Some(e) = elevation { br; "elevation: " (e) } }
                        } } }
                    }
                } }
            } }
            h2 { "Least privilege" }
            @match report {
                Err(why) => { p role="alert" { "The report could not be made: " (why) } }
                Ok(computed) => { (least_privilege(computed)) }
            }
        },
    )
}

fn least_privilege(computed: &crate::report::Computed) -> Markup {
    let report = &computed.report;
    html! {
        p { "What each step was granted in the last " (report.window_days) " days against what it allows, from "
            (computed.verified) " records of " code { (computed.source) } " (every link checked), as of " (report.now)
            ". The report is made again at most every " (crate::report::MAX_AGE.as_secs() / 60) " minutes; "
            code { "stint policy suggest" } " turns it into a policy change (see " code { "docs/least-privilege.md" } ")." }
        p.note { "Note: " (report.evidence) "." }
        @if let Some(stopped) = &computed.stopped {
            p.flash.error role="alert" { strong { "Read up to a break: " } (stopped) }
        }
        @if !report.policy_loaded {
            p.note { "The policy in force is not the last one the log shows loaded: the report describes the log's." }
        }
        div.scroll { table {
            caption { "Each step's scope patterns" }
            thead { tr { th scope="col" { "Step" } th scope="col" { "Jobs" } th scope="col" { "Pattern" } th scope="col" { "Status" }
                th scope="col" { "Mints" } th scope="col" { "Scopes it matched" } th scope="col" { "Proposal" } th scope="col" { "Why" } } }
            tbody { @for step in &report.steps { @for p in &step.patterns {
                tr {
                    td { code { (step.workflow) "/" (step.step) } }
                    td { (step.jobs) }
                    td { code { (p.pattern) } }
                    td { strong { (p.status.as_str().to_uppercase()) } }
                    td { (p.mints) }
                    td { @for s in p.scopes.iter().take(8) { code { (s) } " " }
                         @if p.scopes.len() > 8 { "and " (p.scopes.len() - 8) " more" } }
                    td { @match &p.proposal {
                        Some(list) if list.is_empty() => { "remove it" },
                        Some(list) => { @for s in list { code { (s) } " " } },
                        None => { },
                    } }
                    td { (p.note) }
                }
            } } }
        } }
        @if !report.needs.is_empty() {
            div.scroll { table {
                caption { "Scopes refused as outside their step (observed needs)" }
                thead { tr { th scope="col" { "Step" } th scope="col" { "Scope" } th scope="col" { "Refusals" } } }
                tbody { @for n in &report.needs { tr { td { code { (n.step) } } td { code { (n.scope) } } td { (n.denials) } } } }
            } }
        }
        @if !report.drift.is_empty() {
            div.scroll { table {
                caption { "Steps that widened in the window" }
                thead { tr { th scope="col" { "When" } th scope="col" { "Step" } th scope="col" { "Patterns added" } th scope="col" { "review_by moved" } } }
                tbody { @for d in &report.drift { tr { td { (d.time) } td { code { (d.step) } }
                    td { @for a in &d.added { code { (a) } " " } }
                    td { @match d.review_by_moved { Some(true) => { "yes" }, Some(false) => { strong { "NO" } }, None => { "unknown" } } } } } }
            } }
        }
    }
}

/// The stylesheet, served as `/static/console.css`.
pub(crate) const STYLESHEET: &str = include_str!("../assets/console.css");

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn view() -> ApprovalView {
        ApprovalView {
            id: "apr-1".into(),
            state: "pending".into(),
            workload: "ci".into(),
            client_id: "ci".into(),
            job: "j1".into(),
            step: "deploy/prod".into(),
            audience: "k8s".into(),
            scopes: vec!["deploy:k8s/prod/web".into()],
            reason: Some("<b>now</b>".into()),
            run_url: Some("https://gitlab.example.com/a/b/-/pipelines/1\"onclick=\"x".into()),
            duration_asked: 900,
            max_duration: 1800,
            requested_at: 1000,
            expires_at: 1900,
            approver_groups: vec!["sre".into()],
            approvals_required: 2,
            approvals: Vec::new(),
            approved_until: None,
            decided_by: None,
            comment: None,
        }
    }

    fn operator(name: &str, owns: &[&str]) -> Operator {
        Operator {
            name: name.into(),
            groups: BTreeSet::from(["sre".to_owned()]),
            owns: owns.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_request_page_escapes_and_links_the_run() {
        let frame = Frame {
            title: "t",
            nav: Nav::Approvals,
            signed_in: Some(("alice", "csrf-token")),
            flash: None,
        };
        let context = ApprovalContext {
            owners: vec!["carol".into()],
            standing: vec!["deploy:k8s/staging/*".into()],
            elevation: vec!["deploy:k8s/prod/*".into()],
        };
        let html = approval(
            &frame,
            &operator("alice", &[]),
            &view(),
            &context,
            "csrf-token",
            1000,
        )
        .into_string();
        assert!(
            html.contains(
                r#"href="https://gitlab.example.com/a/b/-/pipelines/1&quot;onclick=&quot;x""#
            ),
            "{html}"
        );
        assert!(html.contains(r#"rel="noreferrer noopener""#));
        assert!(html.contains("&lt;b&gt;now&lt;/b&gt;"));
        assert!(!html.contains("<b>now"));
        assert!(html.contains(r#"name="csrf" value="csrf-token""#));
        assert!(html.contains("/approvals/apr-1/approve"));
        // An owner sees why, and no approve form.
        let html = approval(
            &frame,
            &operator("carol", &["ci"]),
            &view(),
            &context,
            "c",
            1000,
        )
        .into_string();
        assert!(html.contains("you own workload ci"));
        assert!(!html.contains("/approvals/apr-1/approve"));
    }

    #[test]
    fn durations_read_and_round_trip() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(90), "1m 30s");
        assert_eq!(duration(7200), "2h");
        assert_eq!(duration_param(900), "15m");
        assert_eq!(duration_param(3600), "1h");
        assert_eq!(duration_param(61), "61s");
    }
}
