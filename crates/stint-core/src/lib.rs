//! Stint's pure core.
//!
//! Everything a decision needs and nothing that touches the outside world:
//! no sockets, no files, no database, no global clock. Time comes in through
//! [`Clock`], randomness through `ring::rand::SecureRandom`, and text through
//! `&str`. The daemon, the SDK and the command line all build on this crate,
//! so a scope means the same thing everywhere.
//!
//! The main path through it:
//!
//! 1. [`policy::Policy::parse`] turns a TOML policy into a validated model.
//! 2. [`decision::StepRequest::from_params`] turns untrusted request
//!    parameters into typed values.
//! 3. [`decision::decide`] turns a request into a [`decision::Grant`] or a
//!    [`decision::Denial`]; nothing else produces a `Grant`.
//! 4. [`claims::AccessTokenClaims::from_grant`] and
//!    [`jose::SigningKey::sign_jwt`] turn the grant into a token.

pub mod access_token;
pub mod approval;
pub mod audit;
pub mod claims;
pub mod clock;
pub mod decision;
pub mod federation;
pub mod feed_access;
pub mod form;
pub mod glob;
pub mod ids;
pub mod jose;
pub mod policy;
pub mod revocation;
pub mod scope;
pub mod seal;
pub mod secret;
pub mod status_list;
pub mod target;
pub mod target_credential;
pub mod ttl;
pub mod webhook;

pub use chrono;
pub use clock::{Clock, ManualClock, SystemClock};
