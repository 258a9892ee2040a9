//! The Stint SDK: short-lived tokens for automation, one per step.
//!
//! A job asks the broker for a token that carries exactly the scopes one
//! step needs, uses it, and revokes it when the step ends. The
//! [`StepToken`] guard makes the last part automatic: [`StepToken::finish`]
//! revokes and waits for the broker's acknowledgement, and a guard dropped
//! on an early return, an error or a panic revokes in the background; a
//! program that returns from `main` at once still has its tokens revoked
//! before it exits, as the end of its Tokio runtime waits for those
//! revocations (bounded by [`EXIT_REVOCATION_TIMEOUT`]; what exactly holds
//! is on [`StepToken`]). A [`Job`] revokes every token of a job at once
//! when it completes (dropping one does not: see [`Job`]).
//!
//! A step that reaches a system Stint makes native credentials for (a
//! PostgreSQL login today) exchanges its step token for one with
//! [`StepToken::target_credential`]: a [`TargetCredential`] guard, revoked
//! the same way (an example is on [`TargetCredential`]).
//!
//! The services those tokens are for check them offline with a
//! [`Verifier`]: the broker's keys, fetched once and refreshed when a token
//! names a new one, and the broker's own scope matcher behind
//! [`VerifiedToken::allows`].
//!
//! ```
//! # use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let broker = stint_server::start(stint_server::Config::dev(
//! #     dir.path().to_owned(), "127.0.0.1:0".parse()?)).await?;
//! # let issuer = broker.issuer().to_owned();
//! # let dev: stint_proto::DevClient =
//! #     serde_json::from_slice(&std::fs::read(broker.dev_client_path().unwrap())?)?;
//! # let (client_id, client_secret) = (dev.client_id, dev.client_secret);
//! use stint_client::{Client, Credentials, Verifier};
//!
//! // The job's side: a client for the broker, and a job of two steps.
//! let client = Client::builder(&issuer)
//!     .credentials(Credentials::new(client_id, client_secret))
//!     .build()
//!     .await?;
//! let job = client.job("build-1042");
//! let read = job
//!     .step("read")
//!     .scope("read:demo/reports")
//!     .audience("demo-api")
//!     .ttl(Duration::from_secs(120))
//!     .request()
//!     .await?;
//!
//! // The service's side: verify offline, then check the scope.
//! let verifier = Verifier::builder(&issuer).audience("demo-api").build().await?;
//! let verified = verifier.verify(read.token()).await?;
//! assert!(verified.allows("read", "demo/reports"));
//! assert!(!verified.allows("write", "demo/reports"));
//!
//! // The step is done: the token is revoked before `finish` returns.
//! let token = read.token().to_owned();
//! read.finish().await?;
//! assert!(!client.introspect(&token).await?.active);
//!
//! // The job is done: anything it still holds is revoked.
//! job.complete().await?;
//! # broker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Errors are one type, [`Error`]: the broker's OAuth `error` and
//! `error_description` when it refused, and distinct variants for an
//! unreachable broker and each reason a token is rejected ([`TokenError`]).

#![deny(missing_docs)]

mod client;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod revocations;
mod step;
mod target;
mod verifier;

pub use client::{
    Client, ClientBuilder, Credentials, EXIT_REVOCATION_TIMEOUT, MAX_RESPONSE_LEN, SubjectToken,
};
pub use error::{Error, PendingApproval, TokenError};
pub use step::{Job, StepRequest, StepToken};
pub use target::{
    GIT_USERNAME, KIND_GITHUB, KIND_POSTGRES, MAX_TARGET_NAME_LEN, TargetCredential,
    check_target_name,
};
// What the SDK's functions return (and the types of their public fields),
// so that no user has to depend on stint-proto or stint-core to name them.
pub use stint_core::claims::AccessTokenClaims;
pub use stint_core::status_list::{StatusClaim, StatusReference};
pub use stint_proto::{
    ApprovalView, ApprovalVote, Confirmation, GithubToken, IntrospectionResponse,
    JobRevocationResponse, KeyRotationResponse, PostgresLogin, StepRevocationResponse,
    WorkloadState,
};
pub use verifier::{
    DEFAULT_INTROSPECTION_CACHE, DEFAULT_LEEWAY, DEFAULT_MAX_KEY_AGE, DEFAULT_MIN_REFRESH_INTERVAL,
    VerifiedToken, Verifier, VerifierBuilder,
};
