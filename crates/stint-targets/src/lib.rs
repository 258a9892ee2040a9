//! Stint's target-credential I/O: the clients that create and destroy, on
//! the target system, the native credentials that stint-core's pure
//! planners describe. The first kind is PostgreSQL logins
//! ([`PostgresUpstream`]).
//!
//! Nothing here decides what a credential may do: the planner does; this
//! crate runs its statements, bounded in time, and reports what the server
//! said.

pub mod postgres;

pub use postgres::{
    Password, PostgresSettings, PostgresUpstream, RevokeReport, TlsMode, UpstreamError,
    is_stint_role_name,
};
