//! The life of a target credential, as plain data: which revocations reach
//! it, and when a failed upstream revocation is tried again.
//!
//! A target credential (a PostgreSQL login, say) is bound to the step token
//! it was exchanged from: its `jti`, and through the token's claims its
//! workload, job, step and approval. Every revocation that reaches the step
//! token reaches the credential ([`TargetCredential::covered_by`]), and so
//! does the token's expiry. Its states:
//!
//! ```text
//! Minting --(created upstream, answer sent)--> Live --(covered, expired)--> Revoking
//!    |                                                                       |  ^
//!    +--(creation failed, or the broker died: maybe made)--> Revoking        |  | (attempt failed:
//!                                                                            v  |  retry with backoff)
//!                                        Revoked <--(destroyed, or already gone)
//!                                        Irrevocable <--(the last attempt failed)
//! ```
//!
//! `Minting` is stored *before* the upstream call, so a broker killed
//! between the call and its answer finds, at its next start, a credential
//! it may have made and never handed out, and destroys it.

use crate::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};
use std::fmt;
use std::str::FromStr;

/// Where a target credential is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialState {
    /// Recorded before the upstream call: it may or may not exist upstream.
    Minting,
    /// Made upstream and handed to the step.
    Live,
    /// To be destroyed upstream (queued; retried until it is).
    Revoking,
    /// Destroyed upstream (or found already gone).
    Revoked,
    /// Every attempt to destroy it failed: an operator must.
    Irrevocable,
}

impl CredentialState {
    /// Its name in the store and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minting => "minting",
            Self::Live => "live",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
            Self::Irrevocable => "irrevocable",
        }
    }

    /// Whether the credential may still exist upstream and Stint still
    /// means to destroy it.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Minting | Self::Live | Self::Revoking)
    }
}

impl fmt::Display for CredentialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "minting" => Self::Minting,
            "live" => Self::Live,
            "revoking" => Self::Revoking,
            "revoked" => Self::Revoked,
            "irrevocable" => Self::Irrevocable,
            other => return Err(format!("unknown credential state {other:?}")),
        })
    }
}

/// What set off a credential's revocation (the audit's `target.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Its step token was revoked by `jti`.
    Token,
    /// Its job was revoked (completed).
    Job,
    /// Its step was revoked.
    Step,
    /// Its workload was stopped.
    Workload,
    /// The approval its step token was minted under was revoked.
    Approval,
    /// Its step token expired: expiry is a revocation, not something left
    /// to the upstream's own expiry.
    Expired,
    /// It was revoked alone (`DELETE /v1/target-credentials/{id}`).
    Credential,
    /// The broker stopped between recording it and answering: it may have
    /// been made and was never handed out.
    InterruptedMint,
    /// Its creation failed or its answer could not be completed: whatever
    /// part of it exists is destroyed.
    FailedMint,
    /// The reconciler found it upstream with no live step token behind it.
    Reconciler,
}

impl Trigger {
    /// Its name in the audit log and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Job => "job",
            Self::Step => "step",
            Self::Workload => "workload",
            Self::Approval => "approval",
            Self::Expired => "expired",
            Self::Credential => "credential",
            Self::InterruptedMint => "interrupted_mint",
            Self::FailedMint => "failed_mint",
            Self::Reconciler => "reconciler",
        }
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "token" => Self::Token,
            "job" => Self::Job,
            "step" => Self::Step,
            "workload" => Self::Workload,
            "approval" => Self::Approval,
            "expired" => Self::Expired,
            "credential" => Self::Credential,
            "interrupted_mint" => Self::InterruptedMint,
            "failed_mint" => Self::FailedMint,
            "reconciler" => Self::Reconciler,
            other => return Err(format!("unknown revocation trigger {other:?}")),
        })
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revocation, as far as target credentials care.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// One token.
    Token(&'a TokenRevocation),
    /// Every token of a job.
    Job(&'a JobRevocation),
    /// Every token of one step of a job.
    Step(&'a StepRevocation),
    /// Every token a workload got before it was stopped.
    Workload(&'a WorkloadStop),
    /// Every token minted under an approval.
    Approval(&'a str),
}

impl Cause<'_> {
    /// The trigger a credential it reaches records.
    pub fn trigger(&self) -> Trigger {
        match self {
            Self::Token(_) => Trigger::Token,
            Self::Job(_) => Trigger::Job,
            Self::Step(_) => Trigger::Step,
            Self::Workload(_) => Trigger::Workload,
            Self::Approval(_) => Trigger::Approval,
        }
    }
}

/// One target credential as Stint keeps it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCredential {
    /// Its id at Stint (`tc-...`), not a secret.
    pub id: String,
    /// The step token it is bound to.
    pub jti: String,
    /// The step token's workload (`sub`).
    pub sub: String,
    /// The connector (`client_id`).
    pub client_id: String,
    /// The step token's job.
    pub job: String,
    /// The step token's step.
    pub step: String,
    /// The approval the step token was minted under, if any.
    pub approval: Option<String>,
    /// The step token's `iat`.
    pub issued_at: i64,
    /// The step token's `exp`: the credential never outlives it.
    pub expires_at: i64,
    /// The target's name in the policy.
    pub target: String,
    /// The target's kind (`postgres`).
    pub kind: String,
    /// The upstream identifier (the PostgreSQL role).
    pub upstream_id: String,
    /// The upstream server (`host:port`).
    pub server: String,
    /// The database, for PostgreSQL.
    pub database: Option<String>,
    /// The effective privileges, as scopes.
    pub effective: Vec<String>,
    /// Where it is in its life.
    pub state: CredentialState,
    /// What set off its revocation, once one has.
    pub trigger: Option<Trigger>,
    /// Revocation attempts made.
    pub attempts: u32,
    /// When the next revocation attempt is due (seconds since the epoch).
    pub next_attempt_at: i64,
    /// The last attempt's error (never a secret).
    pub last_error: Option<String>,
    /// When it was recorded.
    pub created_at: i64,
    /// When it was destroyed or given up on.
    pub finished_at: Option<i64>,
    /// When its revocation began (the step's end, or its expiry): the
    /// exposure window of a credential that outlives its step upstream is
    /// `finished_at` minus this.
    pub revoke_requested_at: Option<i64>,
    /// What destroying it needs, sealed (AEAD) by its target's client: a
    /// GitHub installation token, which only the token itself can revoke.
    /// Kept only until the credential is revoked or expires.
    pub sealed: Option<Vec<u8>>,
    /// What the upstream granted, as it said (a GitHub installation, its
    /// repositories and permissions, the token's hashes).
    pub grant: Option<UpstreamGrant>,
}

impl TargetCredential {
    /// Whether `cause` reaches this credential's step token.
    pub fn covered_by(&self, cause: &Cause<'_>) -> bool {
        match cause {
            Cause::Token(token) => token.jti == self.jti,
            Cause::Job(job) => job.sub == self.sub && job.job == self.job,
            Cause::Step(step) => {
                step.sub == self.sub && step.job == self.job && step.step == self.step
            }
            Cause::Workload(stop) => stop.workload == self.sub && self.issued_at <= stop.stopped_at,
            Cause::Approval(id) => self.approval.as_deref() == Some(*id),
        }
    }

    /// Queue it for destruction now, for `trigger`, unless it already is
    /// (the first trigger is the one recorded). Returns whether it changed.
    pub fn begin_revocation(&mut self, trigger: Trigger, now: i64) -> bool {
        match self.state {
            CredentialState::Minting | CredentialState::Live => {
                self.state = CredentialState::Revoking;
                self.trigger = Some(trigger);
                self.next_attempt_at = now;
                // An expired token's step ended when it expired, whenever
                // the queue noticed.
                self.revoke_requested_at = Some(if trigger == Trigger::Expired {
                    now.min(self.expires_at)
                } else {
                    now
                });
                true
            }
            CredentialState::Revoking | CredentialState::Revoked | CredentialState::Irrevocable => {
                false
            }
        }
    }
}

/// What an upstream granted a credential, as it answered: kept with the
/// record for the audit of its revocation. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct UpstreamGrant {
    /// The GitHub installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<u64>,
    /// The repositories (`owner/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// Permission to level.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub permissions: std::collections::BTreeMap<String, String>,
    /// The token's SHA-256 in base64, as GitHub's audit log shows it
    /// (`hashed_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_token: Option<String>,
    /// The same hash in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// When the upstream says the credential stops working by itself,
    /// seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_expires_at: Option<i64>,
    /// The upstream's id of the request that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// When a failed revocation is tried again: exponential backoff with
/// jitter, up to a number of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure, seconds.
    pub first_secs: i64,
    /// The longest delay, seconds.
    pub max_secs: i64,
    /// After this many failed attempts the credential is irrevocable.
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// 1 s, doubling to at most 5 minutes, 20 attempts: about an hour of
    /// trying, longer than any step token lives.
    fn default() -> Self {
        Self {
            first_secs: 1,
            max_secs: 300,
            max_attempts: 20,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempts` (1 for the first),
    /// in seconds: `first * 2^(attempts-1)`, at most `max`, then jittered
    /// down by up to half (`jitter` is any random number) so that many
    /// credentials that failed together do not retry together.
    pub fn delay(&self, attempts: u32, jitter: u32) -> i64 {
        let exponent = attempts.saturating_sub(1).min(32);
        let full = self
            .first_secs
            .max(1)
            .saturating_mul(1i64 << exponent)
            .min(self.max_secs.max(1));
        let spread = full / 2;
        if spread == 0 {
            return full;
        }
        full - i64::from(jitter) % (spread + 1)
    }

    /// Whether `attempts` failed attempts are the last allowed.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> TargetCredential {
        TargetCredential {
            id: "tc-1".into(),
            jti: "jti-1".into(),
            sub: "etl".into(),
            client_id: "etl".into(),
            job: "job-1".into(),
            step: "load".into(),
            approval: Some("apr-1".into()),
            issued_at: 100,
            expires_at: 400,
            target: "warehouse".into(),
            kind: "postgres".into(),
            upstream_id: "stint_aaaa".into(),
            server: "127.0.0.1:5432".into(),
            database: Some("analytics".into()),
            effective: vec!["select:warehouse/crm/accounts".into()],
            state: CredentialState::Live,
            trigger: None,
            attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            created_at: 100,
            finished_at: None,
            revoke_requested_at: None,
            sealed: None,
            grant: None,
        }
    }

    #[test]
    fn every_revocation_of_the_step_token_reaches_it_and_no_other() {
        let c = credential();
        let token = |jti: &str| TokenRevocation {
            jti: jti.into(),
            sub: "etl".into(),
            job: "job-1".into(),
            expires_at: 400,
            revoked_at: 200,
        };
        assert!(c.covered_by(&Cause::Token(&token("jti-1"))));
        assert!(!c.covered_by(&Cause::Token(&token("jti-2"))));
        let job = |sub: &str, job: &str| JobRevocation {
            sub: sub.into(),
            job: job.into(),
            revoked_at: 200,
            until: 400,
        };
        assert!(c.covered_by(&Cause::Job(&job("etl", "job-1"))));
        assert!(!c.covered_by(&Cause::Job(&job("etl", "job-2"))));
        assert!(!c.covered_by(&Cause::Job(&job("other", "job-1"))));
        let step = |name: &str| StepRevocation {
            sub: "etl".into(),
            job: "job-1".into(),
            step: name.into(),
            revoked_at: 200,
            until: 400,
        };
        assert!(c.covered_by(&Cause::Step(&step("load"))));
        assert!(!c.covered_by(&Cause::Step(&step("extract"))));
        let stop = |workload: &str, at: i64| WorkloadStop {
            workload: workload.into(),
            stopped_at: at,
            stopped_by: "op".into(),
            enabled_at: None,
        };
        assert!(c.covered_by(&Cause::Workload(&stop("etl", 100))));
        assert!(c.covered_by(&Cause::Workload(&stop("etl", 300))));
        // A token issued after the stop is not the stop's.
        assert!(!c.covered_by(&Cause::Workload(&stop("etl", 99))));
        assert!(!c.covered_by(&Cause::Workload(&stop("other", 300))));
        assert!(c.covered_by(&Cause::Approval("apr-1")));
        assert!(!c.covered_by(&Cause::Approval("apr-2")));
        let mut unapproved = credential();
        unapproved.approval = None;
        assert!(!unapproved.covered_by(&Cause::Approval("apr-1")));
    }

    #[test]
    fn the_first_trigger_is_the_one_kept() {
        let mut c = credential();
        assert!(c.begin_revocation(Trigger::Job, 250));
        assert_eq!(c.state, CredentialState::Revoking);
        assert_eq!(c.next_attempt_at, 250);
        assert!(!c.begin_revocation(Trigger::Expired, 400));
        assert_eq!(c.trigger, Some(Trigger::Job));
        c.state = CredentialState::Revoked;
        assert!(!c.begin_revocation(Trigger::Token, 500));
        assert_eq!(c.state, CredentialState::Revoked);
    }

    #[test]
    fn backoff_doubles_is_bounded_and_jittered_down_by_at_most_half() {
        let backoff = Backoff {
            first_secs: 1,
            max_secs: 300,
            max_attempts: 20,
        };
        for jitter in [0u32, 1, 7, 1000, u32::MAX] {
            for attempts in 1..=40 {
                let full = (1i64 << (attempts - 1).min(32)).min(300);
                let delay = backoff.delay(attempts, jitter);
                assert!(delay <= full, "attempt {attempts}: {delay} > {full}");
                assert!(delay >= full - full / 2, "attempt {attempts}: {delay}");
                assert!(delay >= 1);
            }
        }
        assert_eq!(backoff.delay(1, 0), 1);
        assert_eq!(backoff.delay(4, 0), 8);
        assert_eq!(backoff.delay(30, 0), 300);
        assert!(!backoff.exhausted(19));
        assert!(backoff.exhausted(20));
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            CredentialState::Minting,
            CredentialState::Live,
            CredentialState::Revoking,
            CredentialState::Revoked,
            CredentialState::Irrevocable,
        ] {
            assert_eq!(state.as_str().parse::<CredentialState>(), Ok(state));
        }
        assert!("gone".parse::<CredentialState>().is_err());
    }
}
