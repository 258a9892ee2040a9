//! One token per step: [`StepRequest`], the [`StepToken`] guard, and the
//! [`Job`] handle.

use crate::client::Client;
use crate::error::{Error, PendingApproval};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The longest a step waits for an approval, whatever the broker says
/// (no elevation's `max_wait` is longer than a day).
const MAX_WAIT_SECS: u64 = 24 * 3600;

/// What [`StepRequest::on_approval_pending`] is called with.
type PendingCallback = Arc<dyn Fn(&PendingApproval) + Send + Sync>;

/// A token request for one step, built up and then sent with
/// [`Self::request`].
#[must_use = "a StepRequest does nothing until .request() is awaited"]
pub struct StepRequest {
    client: Client,
    step: String,
    job: Option<String>,
    scopes: Vec<String>,
    audience: Option<String>,
    ttl: Option<Duration>,
    reason: Option<String>,
    elevation_duration: Option<Duration>,
    wait: bool,
    on_pending: Option<PendingCallback>,
    /// The [`Job`] handle this request came from, told when it mints.
    job_handle: Option<Arc<JobState>>,
}

impl fmt::Debug for StepRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepRequest")
            .field("step", &self.step)
            .field("job", &self.job)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .field("reason", &self.reason)
            .field("elevation_duration", &self.elevation_duration)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl StepRequest {
    pub(crate) fn new(client: Client, step: String) -> Self {
        Self {
            client,
            step,
            job: None,
            scopes: Vec::new(),
            audience: None,
            ttl: None,
            reason: None,
            elevation_duration: None,
            wait: true,
            on_pending: None,
            job_handle: None,
        }
    }

    /// Why the step needs what it asks for: shown to operators when some
    /// scopes need their approval (some elevations require it).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// How long an elevation should last, if one is needed (the broker caps
    /// it at the elevation's maximum; operators may grant less).
    pub fn elevation_duration(mut self, duration: Duration) -> Self {
        self.elevation_duration = Some(duration);
        self
    }

    /// Whether to wait when some scopes need an operator's approval
    /// (default: yes). Waiting polls at the broker's interval, slowing
    /// down when told to, until the approval comes ([`Self::request`]
    /// returns the token), is denied (`access_denied`) or expires
    /// (`expired_token`). Without waiting, the first answer is returned as
    /// [`Error::ApprovalPending`].
    pub fn wait_for_approval(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// Called when an approval request is made, and again whenever it
    /// changes (another operator approved) while waiting: say what the
    /// operators must do. Without it, the SDK logs it (`tracing`, info).
    pub fn on_approval_pending(
        mut self,
        callback: impl Fn(&PendingApproval) + Send + Sync + 'static,
    ) -> Self {
        self.on_pending = Some(Arc::new(callback));
        self
    }

    /// The job this step belongs to. Without one, the broker makes up a job
    /// id for this token alone.
    pub fn job(mut self, job: impl Into<String>) -> Self {
        self.job = Some(job.into());
        self
    }

    /// Ask for one scope, e.g. `deploy:k8s/staging/web`. Call it once per
    /// scope; the token gets all of them or the request is refused.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Ask for several scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// The system the token is for: its `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long the token should live, rounded down to whole seconds. The
    /// broker caps it at the step's maximum; without it, the step's default
    /// applies.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Send the request. The returned guard revokes the token when the step
    /// ends: see [`StepToken`]. If some scopes need an operator's approval,
    /// this waits for it (see [`Self::wait_for_approval`]).
    pub async fn request(self) -> Result<StepToken, Error> {
        let scope = self.scopes.join(" ");
        let ttl = self.ttl.map(|ttl| ttl.as_secs().to_string());
        if ttl.as_deref() == Some("0") {
            return Err(Error::Config("the TTL must be at least one second".into()));
        }
        let duration = self.elevation_duration.map(|d| format!("{}s", d.as_secs()));
        if duration.as_deref() == Some("0s") {
            return Err(Error::Config(
                "the elevation duration must be at least one second".into(),
            ));
        }
        let mut job = self.job.clone();
        let mut approval_id: Option<String> = None;
        let mut last_seen: Option<(String, usize)> = None;
        let mut deadline: Option<Instant> = None;
        let mut retry_after = Duration::from_secs(5);
        let mut requested_at;
        let response = loop {
            let mut form = vec![
                ("grant_type", stint_proto::GRANT_CLIENT_CREDENTIALS),
                ("step", self.step.as_str()),
            ];
            if !scope.is_empty() {
                form.push(("scope", &scope));
            }
            if let Some(job) = &job {
                form.push(("job", job));
            }
            if let Some(audience) = &self.audience {
                form.push(("audience", audience));
            }
            if let Some(ttl) = &ttl {
                form.push(("ttl", ttl));
            }
            if let Some(reason) = &self.reason {
                form.push(("reason", reason));
            }
            if let Some(duration) = &duration {
                form.push(("duration", duration));
            }
            if let Some(id) = &approval_id {
                form.push(("approval_id", id));
            }
            requested_at = SystemTime::now();
            let pending = match self.client.request_token(&form).await {
                Ok(response) => break response,
                Err(Error::ApprovalPending(pending)) => pending,
                // Once waiting, a broker that is briefly unreachable or
                // busy is waited out too, until the deadline.
                Err(error)
                    if error.is_unavailable()
                        && approval_id.is_some()
                        && deadline.is_some_and(|limit| Instant::now() + retry_after < limit) =>
                {
                    tracing::debug!(%error, "broker unavailable while waiting for an approval; retrying");
                    tokio::time::sleep(retry_after).await;
                    continue;
                }
                Err(other) => return Err(other),
            };
            retry_after = Duration::from_secs(pending.interval);
            let approvals = pending.approval.as_ref().map_or(0, |a| a.approvals.len());
            if last_seen.as_ref() != Some(&(pending.approval_id.clone(), approvals)) {
                last_seen = Some((pending.approval_id.clone(), approvals));
                match &self.on_pending {
                    Some(callback) => callback(&pending),
                    None => tracing::info!(
                        approval = %pending.approval_id,
                        job = %pending.job,
                        "{}",
                        pending.description
                    ),
                }
            }
            if !self.wait {
                return Err(Error::ApprovalPending(pending));
            }
            // The broker answers expired_token once the wait is over; this
            // deadline only guards against a broker that never does.
            let limit = *deadline.get_or_insert_with(|| {
                // At most a day and a minute: no elevation waits longer.
                let wait = pending.expires_in.min(MAX_WAIT_SECS).saturating_add(60);
                Instant::now() + Duration::from_secs(wait)
            });
            let interval = Duration::from_secs(pending.interval);
            if Instant::now() + interval > limit {
                return Err(Error::ApprovalPending(pending));
            }
            job = Some(pending.job.clone());
            approval_id = Some(pending.approval_id.clone());
            tokio::time::sleep(interval).await;
        };
        if let Some(job) = &self.job_handle {
            job.minted.store(true, Ordering::Relaxed);
        }
        Ok(StepToken {
            expires_in: response.expires_in,
            expires_at: requested_at + Duration::from_secs(response.expires_in),
            client: self.client,
            token: Some(response.access_token),
            scope: response.scope,
            job: response.job,
            step: response.step,
        })
    }
}

/// A token for one step, revoked when the step ends.
///
/// # What is guaranteed
///
/// - [`finish`](Self::finish) revokes the token and returns only once the
///   broker acknowledged, retrying with backoff (about 6 s of waiting in
///   all, each attempt with a 10 s timeout) on connection errors, 408, 429
///   and 5xx answers. After `Ok(())` the token is inactive everywhere the
///   broker is asked. If `finish` fails, or its future is dropped before it
///   completes, the guard revokes it as below.
/// - A guard dropped without `finish` (the step returned early, failed with
///   `?`, or panicked and unwound) revokes the token the moment it drops:
///   - inside a Tokio runtime, as a task on that runtime, so the drop does
///     not block. If the runtime ends before the task is done (`main`
///     returned: `#[tokio::main]` drops its runtime; `#[tokio::test]`
///     ends; a `Runtime` is dropped), the end of the runtime waits for the
///     revocation: the shutdown drops the task, and the task's drop sends
///     the revocations still in flight again on a thread of their own and
///     waits for the broker's answer. Guards still held by tasks when the
///     runtime ends are dropped by the shutdown and revoked the same way.
///     So a program that returns from `main` needs no
///     [`Client::flush`]; a program that keeps running calls it to know
///     the background revocations are done;
///   - outside any runtime, synchronously: the drop returns once the
///     broker answered.
///
///   The waiting at a runtime's end or outside one is bounded by
///   [`EXIT_REVOCATION_TIMEOUT`](crate::EXIT_REVOCATION_TIMEOUT) (5 s) in
///   all, not per token: the revocations in flight are sent at once, and
///   once a broker has let that deadline pass, the ones that follow in the
///   same shutdown are not waited for.
/// - What cannot be guaranteed, because no destructor runs or no runtime
///   ends: [`std::process::exit`], an abort (`panic = "abort"`, a panic
///   while panicking), a signal that ends the process without unwinding
///   (`SIGKILL`, and `SIGTERM` or `SIGINT` unless the program handles them
///   and returns from `main`), a runtime that is never dropped (in a
///   `static`, or leaked), `Runtime::shutdown_background` (and
///   `shutdown_timeout` shorter than the revocation), a guard in a thread
///   still running when the process exits, or leaked (`mem::forget`), and
///   a broker that does not answer in time. Then the token stays valid
///   until its `exp`: that is why tokens live minutes; expiry is the
///   backstop, revocation the norm.
///
/// The token text is never printed by `Debug`.
#[must_use = "a StepToken is revoked when dropped; keep it for the step's duration"]
pub struct StepToken {
    client: Client,
    /// `None` once revocation has started.
    token: Option<String>,
    expires_in: u64,
    expires_at: SystemTime,
    scope: String,
    job: String,
    step: String,
}

impl StepToken {
    /// A guard for `token` from `client` (a test's stand-in broker), as
    /// if minted. Detach it to keep its drop from revoking.
    #[cfg(test)]
    pub(crate) fn for_tests(client: Client, token: &str) -> Self {
        Self {
            client,
            token: Some(token.to_owned()),
            expires_in: 300,
            expires_at: SystemTime::UNIX_EPOCH,
            scope: String::new(),
            job: "job".to_owned(),
            step: "step".to_owned(),
        }
    }

    /// The client the token was minted by.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The access token, to send as `Authorization: Bearer ...`.
    pub fn token(&self) -> &str {
        self.token.as_deref().unwrap_or_default()
    }

    /// When the token expires (computed from `expires_in` when it was
    /// requested).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The lifetime the broker granted, in seconds (`expires_in`).
    pub fn expires_in(&self) -> u64 {
        self.expires_in
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// The job the token belongs to (the broker's choice if none was given).
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The step.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// Give up the guard and keep the token: it is no longer revoked when
    /// this value drops. Revoke it yourself with [`Client::revoke`], or let
    /// it expire. For handing a token to something that outlives this
    /// process, like `stint token` printing it.
    pub fn detach(mut self) -> String {
        self.token.take().unwrap_or_default()
    }

    /// The step is done: revoke the token and wait for the broker's
    /// acknowledgement. If this future is dropped before it completes (a
    /// `select!`, a timeout), or the revocation fails after its retries, the
    /// guard still drops with the token and revokes it in the background.
    pub async fn finish(mut self) -> Result<(), Error> {
        let Some(token) = self.token.as_deref() else {
            return Ok(());
        };
        let result = self.client.revoke(token).await;
        if result.is_ok() {
            self.token = None;
        }
        result
    }
}

impl Drop for StepToken {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            tracing::debug!(
                job = %self.job,
                step = %self.step,
                "step token dropped without finish(): revoking it in the background"
            );
            self.client
                .revoke_in_background(crate::client::Revocation::StepToken(token));
        }
    }
}

impl fmt::Debug for StepToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepToken")
            .field("job", &self.job)
            .field("step", &self.step)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A job: mint its steps' tokens with [`Job::step`], and revoke every one of
/// them with [`Job::complete`].
///
/// # Dropping a job
///
/// A `Job` is a handle, not a guard: dropping it revokes nothing, and its
/// clones are the same job. Completing a job is final (the broker refuses
/// it new tokens for an hour), so it is never done implicitly: not on an
/// early return, not on a temporary (`client.job(id).step(..)`), not in one
/// of the several processes a job's steps may run in. What a dropped job
/// leaves alive is what its steps did not revoke themselves: each
/// [`StepToken`] is a guard that revokes its own token, so that is only
/// tokens [detached](StepToken::detach) from their guards; and the job
/// stays open, so more tokens may be minted for it.
///
/// It is not silent: when the last handle of a job through which a token
/// was minted drops without [`complete`](Self::complete) or
/// [`leave_open`](Self::leave_open), the SDK logs a warning (`tracing`,
/// target `stint_client`) naming the job.
#[derive(Debug, Clone)]
pub struct Job {
    client: Client,
    id: String,
    state: Arc<JobState>,
}

/// What the handles of one [`Job`] share.
#[derive(Debug)]
struct JobState {
    id: String,
    /// A token was minted through one of the handles.
    minted: AtomicBool,
    /// [`Job::complete`] or [`Job::leave_open`] was called.
    settled: AtomicBool,
}

impl Drop for JobState {
    fn drop(&mut self) {
        if *self.minted.get_mut() && !*self.settled.get_mut() {
            tracing::warn!(
                job = %self.id,
                "job dropped without complete() or leave_open(): it stays open (its step tokens are revoked by their own guards, but detached ones stay valid until they expire, and new tokens may still be minted for it)"
            );
        }
    }
}

impl Job {
    pub(crate) fn new(client: Client, id: String) -> Self {
        let state = Arc::new(JobState {
            id: id.clone(),
            minted: AtomicBool::new(false),
            settled: AtomicBool::new(false),
        });
        Self { client, id, state }
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A token request for `step` of this job.
    pub fn step(&self, step: impl Into<String>) -> StepRequest {
        let mut request = self.client.step(step).job(self.id.clone());
        request.job_handle = Some(Arc::clone(&self.state));
        request
    }

    /// The job is done: revoke every token it was given and refuse new ones
    /// (`POST /v1/jobs/{job}/revoke`). Returns once the broker
    /// acknowledged, retrying on connection errors and 5xx.
    pub async fn complete(self) -> Result<(), Error> {
        // Whatever the outcome, the caller has been told it.
        self.state.settled.store(true, Ordering::Relaxed);
        self.client.revoke_job(&self.id).await.map(|_| ())
    }

    /// This process is done with the job, but the job is not (another
    /// process runs its next steps, or completes it): leave it open, and do
    /// not warn when the handle drops.
    pub fn leave_open(self) {
        self.state.settled.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    /// The warnings logged while it is the subscriber, as text.
    #[derive(Default, Clone)]
    struct Warnings(Arc<Mutex<Vec<String>>>);

    struct Text(String);

    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl Subscriber for Warnings {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() <= Level::WARN
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn warnings_while(f: impl FnOnce()) -> Vec<String> {
        let warnings = Warnings::default();
        tracing::subscriber::with_default(warnings.clone(), f);
        warnings.0.lock().unwrap().clone()
    }

    #[test]
    fn a_job_that_minted_warns_when_its_last_handle_drops_unsettled() {
        let client = Client::offline_for_tests();
        let minted = |id: &str| {
            let job = client.job(id);
            job.state.minted.store(true, Ordering::Relaxed);
            job
        };
        let logged = warnings_while(|| {
            let job = minted("build-7");
            let clone = job.clone();
            drop(job);
            assert!(
                !clone.state.settled.load(Ordering::Relaxed),
                "a clone keeps it"
            );
            drop(clone);
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].contains("build-7"), "{logged:?}");
        assert!(logged[0].contains("complete()"), "{logged:?}");

        // Left open on purpose, or never used to mint: nothing to say.
        let logged = warnings_while(|| {
            minted("build-8").leave_open();
            drop(client.job("build-9"));
        });
        assert!(logged.is_empty(), "{logged:?}");
    }
}
