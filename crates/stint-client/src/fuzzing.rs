//! Entry points into the SDK's parsers of what a broker (or whatever
//! answers in its place) sends, for the fuzz targets in `fuzz/` only.
//!
//! Compiled only with the `fuzzing` feature, which nothing but the fuzz
//! crate turns on. Each function is a thin wrapper that calls the code the
//! SDK runs; none is an API, and none may be relied on elsewhere.

use stint_core::jose::KeySet;
use stint_core::status_list::{ListTokenError, StatusList};

/// The `(event, data)` blocks that the revocation feed's reader makes of a
/// stream delivered in `chunks`, or `None` once a block grows past
/// `max_block_len` bytes.
pub fn sse_blocks(chunks: &[&[u8]], max_block_len: usize) -> Option<Vec<(Option<String>, String)>> {
    let mut parser = crate::revocations::SseParser::new(max_block_len);
    let mut blocks = Vec::new();
    for chunk in chunks {
        let more = parser.push(chunk).ok()?;
        blocks.extend(more.into_iter().map(|block| (block.event, block.data)));
    }
    Some(blocks)
}

/// A status list response as the verifier's poller reads it.
#[derive(Debug)]
pub struct PolledList {
    /// The statuses.
    pub list: StatusList,
    /// The token's `iat`.
    pub iat: i64,
    /// The token's `exp`.
    pub exp: i64,
    /// The token's `ttl`, or the default.
    pub ttl: u64,
    /// Whether it is recent enough at `now` to vouch for its tokens.
    pub recent: bool,
}

/// What the status list poller makes of a response `body` for `uri`,
/// verified with `keys` at `now`.
pub fn poll_status_list(
    body: &[u8],
    keys: &KeySet,
    uri: &str,
    now: i64,
    leeway_secs: i64,
) -> Result<PolledList, ListTokenError> {
    let fetched = crate::revocations::read_list(body, keys, uri, now, leeway_secs)?;
    let recent = fetched.is_recent(now, leeway_secs);
    Ok(PolledList {
        list: fetched.list,
        iat: fetched.iat,
        exp: fetched.exp,
        ttl: fetched.ttl,
        recent,
    })
}

/// The SDK error a broker's non-success answer (`status`, `body`) becomes.
/// `status` outside 100..=999 is `None`.
pub fn error_body(status: u16, body: &[u8]) -> Option<crate::Error> {
    let status = reqwest::StatusCode::from_u16(status).ok()?;
    Some(crate::client::oauth_error(
        "https://stint.fuzz/oauth2/token",
        status,
        body,
    ))
}

/// How the SDK form-encodes one name or value of a request body.
pub fn form_encode(text: &str) -> String {
    crate::client::form_encode(text)
}
