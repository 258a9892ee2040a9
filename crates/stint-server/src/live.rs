//! The tokens this broker minted that are still live, for operators to see
//! and revoke (the console's Live page). Kept only when asked for
//! ([`crate::Config::live_tokens`]): the mint path then pays one map insert.
//!
//! Bounded: at most [`MAX_LIVE`] tokens are kept; past that, new mints are
//! counted but not kept (the page says how many) until the purge (every
//! minute) drops the expired ones. Only this broker's mints are here: with
//! several brokers on one store, each lists its own.

use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use stint_core::claims::AccessTokenClaims;

/// The most tokens kept.
pub(crate) const MAX_LIVE: usize = 100_000;

/// The live tokens, by `jti`.
#[derive(Debug, Default)]
pub(crate) struct LiveTokens {
    tokens: DashMap<String, Arc<AccessTokenClaims>>,
    /// Mints not kept because the map was full.
    untracked: AtomicU64,
}

impl LiveTokens {
    /// Keep a token just minted (and audited).
    pub(crate) fn insert(&self, claims: AccessTokenClaims) {
        if self.tokens.len() >= MAX_LIVE {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.tokens.insert(claims.jti.clone(), Arc::new(claims));
    }

    /// Drop the tokens that expired before `before` (the purge's cut-off,
    /// which leaves verifiers' leeway).
    pub(crate) fn purge(&self, before: i64) {
        self.tokens.retain(|_, c| c.exp > before);
    }

    /// The token `jti`, if kept and not expired at `now`.
    pub(crate) fn get(&self, jti: &str, now: i64) -> Option<Arc<AccessTokenClaims>> {
        self.tokens
            .get(jti)
            .map(|c| Arc::clone(c.value()))
            .filter(|c| c.exp > now)
    }

    /// Every kept token not expired at `now` for which `keep` holds.
    pub(crate) fn list(
        &self,
        now: i64,
        mut keep: impl FnMut(&AccessTokenClaims) -> bool,
    ) -> Vec<Arc<AccessTokenClaims>> {
        self.tokens
            .iter()
            .map(|c| Arc::clone(c.value()))
            .filter(|c| c.exp > now && keep(c))
            .collect()
    }

    /// Mints not kept because the map was full.
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(jti: &str, exp: i64) -> AccessTokenClaims {
        let mut claims: AccessTokenClaims = serde_json::from_value(serde_json::json!({
            "iss": "https://stint.test", "sub": "w", "aud": "a", "client_id": "w",
            "job": "j", "step": "s", "workflow": "f", "scope": "read:x",
            "iat": 0, "nbf": 0, "exp": exp, "jti": jti
        }))
        .expect("claims");
        claims.exp = exp;
        claims
    }

    #[test]
    fn expired_tokens_are_not_listed_or_found() {
        let live = LiveTokens::default();
        live.insert(claims("a", 100));
        live.insert(claims("b", 200));
        assert!(live.get("a", 99).is_some());
        assert!(live.get("a", 100).is_none());
        let listed = live.list(150, |_| true);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].jti, "b");
        assert!(live.list(150, |c| c.jti != "b").is_empty());
        live.purge(150);
        assert!(live.get("a", 0).is_none(), "purged");
        assert!(live.get("b", 0).is_some());
    }
}
