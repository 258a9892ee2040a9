//! Signing keys: created on first start, kept in the store, published as a
//! JWK set.
//!
//! One key signs at a time. A key that stops signing (because the broker was
//! restarted with another `--signing-alg`) is retired: it stays in the JWK
//! set, and keeps verifying at introspection, until every token it could
//! have signed has expired.

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ring::rand::SecureRandom;
use std::sync::Arc;
use stint_core::access_token::{self, Expectations, TokenError};
use stint_core::claims::AccessTokenClaims;
use stint_core::jose::{Algorithm, KeySet, SigningKey};
use stint_core::ttl::MAX_TOKEN_TTL;
use stint_proto::JwkSet;
use stint_store::{Store, StoredKey};

/// The published side of the keys, swapped as one.
#[derive(Debug)]
struct Published {
    verify: KeySet,
    jwks: Bytes,
}

/// The current signing key and the published verification keys.
#[derive(Debug)]
pub struct KeyRing {
    signing: ArcSwap<SigningKey>,
    published: ArcSwap<Published>,
}

impl KeyRing {
    /// Load the keys from `store`, creating a key for `alg` if none signs
    /// with it yet, and retiring any other key that was signing.
    pub async fn load_or_create(
        store: &dyn Store,
        alg: Algorithm,
        now: DateTime<Utc>,
        rng: &dyn SecureRandom,
    ) -> Result<Self, String> {
        let stored = store.signing_keys().await.map_err(|e| e.to_string())?;
        let mut loaded = Vec::with_capacity(stored.len());
        for key in stored {
            let key_alg = Algorithm::from_name(&key.alg).ok_or_else(|| {
                format!("stored key {} has unknown algorithm {:?}", key.kid, key.alg)
            })?;
            let signing = SigningKey::from_pkcs8(key_alg, &key.pkcs8, rng)
                .map_err(|e| format!("stored key {} cannot be loaded: {e}", key.kid))?;
            if signing.kid() != key.kid {
                return Err(format!("stored key {} does not match its kid", key.kid));
            }
            loaded.push((key, signing));
        }

        let active_index = loaded
            .iter()
            .rposition(|(stored, signing)| stored.retired_at.is_none() && signing.alg() == alg);
        let active_kid = match active_index {
            Some(i) => loaded
                .get(i)
                .map(|(stored, _)| stored.kid.clone())
                .unwrap_or_default(),
            None => {
                let (signing, pkcs8) = SigningKey::generate(alg, rng).map_err(|e| e.to_string())?;
                let stored = StoredKey {
                    kid: signing.kid().to_owned(),
                    alg: alg.as_str().to_owned(),
                    pkcs8,
                    created_at: now.timestamp(),
                    retired_at: None,
                };
                store
                    .insert_signing_key(&stored)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(kid = signing.kid(), %alg, "created a new signing key");
                let kid = stored.kid.clone();
                loaded.push((stored, signing));
                kid
            }
        };
        for (stored, _) in loaded.iter_mut() {
            if stored.kid != active_kid && stored.retired_at.is_none() {
                store
                    .retire_signing_key(&stored.kid, now.timestamp())
                    .await
                    .map_err(|e| e.to_string())?;
                stored.retired_at = Some(now.timestamp());
                tracing::info!(kid = %stored.kid, "retired a signing key; it stays published until its tokens expire");
            }
        }

        let mut signing_key = None;
        let mut jwks = JwkSet::default();
        let mut verify = KeySet::new();
        for (stored, signing) in loaded {
            let active = stored.kid == active_kid;
            let still_verifying = stored
                .retired_at
                .is_some_and(|at| at + i64::from(MAX_TOKEN_TTL.as_secs()) > now.timestamp());
            if active || still_verifying {
                jwks.keys.push(signing.public_jwk().clone());
                verify.insert(signing.verifying_key());
            }
            if active {
                signing_key = Some(signing);
            }
        }
        let signing_key = signing_key.ok_or("no active signing key")?;
        let jwks = serde_json::to_vec(&jwks).map_err(|e| e.to_string())?;
        Ok(Self {
            signing: ArcSwap::from_pointee(signing_key),
            published: ArcSwap::from_pointee(Published {
                verify,
                jwks: Bytes::from(jwks),
            }),
        })
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        self.signing.load_full()
    }

    /// Check an access token against the published keys (see
    /// [`stint_core::access_token::verify`]).
    pub fn verify_access_token(
        &self,
        token: &str,
        expect: &Expectations<'_>,
        now: i64,
    ) -> Result<AccessTokenClaims, TokenError> {
        access_token::verify(token, &self.published.load().verify, expect, now)
    }

    /// The JWK set document, pre-serialized.
    pub fn jwks_json(&self) -> Bytes {
        self.published.load().jwks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use stint_store::SqliteStore;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[tokio::test]
    async fn creates_once_then_reuses_and_retires_on_algorithm_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let first = KeyRing::load_or_create(&store, Algorithm::ES256, at(1_000), &rng)
            .await
            .unwrap();
        let again = KeyRing::load_or_create(&store, Algorithm::ES256, at(2_000), &rng)
            .await
            .unwrap();
        assert_eq!(first.signing_key().kid(), again.signing_key().kid());

        let ed = KeyRing::load_or_create(&store, Algorithm::EdDSA, at(3_000), &rng)
            .await
            .unwrap();
        assert_eq!(ed.signing_key().alg(), Algorithm::EdDSA);
        let jwks: JwkSet = serde_json::from_slice(&ed.jwks_json()).unwrap();
        assert_eq!(jwks.keys.len(), 2, "the retired ES256 key stays published");

        let later = at(3_000 + i64::from(MAX_TOKEN_TTL.as_secs()));
        let ed_later = KeyRing::load_or_create(&store, Algorithm::EdDSA, later, &rng)
            .await
            .unwrap();
        let jwks: JwkSet = serde_json::from_slice(&ed_later.jwks_json()).unwrap();
        assert_eq!(
            jwks.keys.len(),
            1,
            "once its tokens have expired, the retired key is gone"
        );
        assert_eq!(jwks.keys[0].kid.as_deref(), Some(ed.signing_key().kid()));
    }
}
