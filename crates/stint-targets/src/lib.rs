//! Stint's target-credential I/O: the clients that create and destroy, on
//! the target system, the native credentials that stint-core's pure
//! planners describe. The first kind is PostgreSQL logins
//! ([`PostgresUpstream`]).
//!
//! Nothing here decides what a credential may do: the planner does; this
//! crate runs its statements, bounded in time, and reports what the server
//! said. It also holds the broker's side of target credentials whatever
//! their kind ([`queue`]): the mint's order, the durable revocation queue,
//! expiry, and the reconciler, as domain code over a [`queue::Host`].

pub mod clients;
pub mod github;
pub mod postgres;
pub mod queue;

pub use postgres::{
    Password, PostgresSettings, PostgresUpstream, RevokeReport, TlsMode, UpstreamError,
    is_stint_role_name,
};
