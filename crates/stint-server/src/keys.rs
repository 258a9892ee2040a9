//! Signing keys: created on first start, kept in the store, published as a
//! JWK set.
//!
//! One key signs at a time. A key that stops signing (rotated by an admin,
//! or because the broker was restarted with another `--signing-alg`) is
//! retired: it stays in the JWK set, and keeps verifying at introspection,
//! until every token it could have signed has expired, and is then removed
//! from the JWK set and deleted from the store ([`KeyRing::prune`]).
//!
//! A rotation publishes the new key before it signs anything: the JWK set
//! with both keys is swapped in first, the signer second. A verifier that
//! meets the new `kid` and fetches the JWK set therefore always finds it.
//!
//! A rotation is audited before it takes effect ([`KeyRing::rotate`]): the
//! new key exists only in memory until its `keys_rotated` record is
//! durable, so an audit log that cannot be written leaves the old key
//! signing, the store untouched, and a retry rotates once.

use crate::audit::CheckpointSigner;
use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ring::rand::SecureRandom;
use std::sync::Arc;
use stint_core::access_token::{self, Expectations, TokenError};
use stint_core::claims::AccessTokenClaims;
use stint_core::jose::{Algorithm, KeySet, SigningKey};
use stint_core::ttl::MAX_TOKEN_TTL;
use stint_proto::{Jwk, JwkSet};
use stint_store::{Store, StoredKey};

/// The published side of the keys, swapped as one.
#[derive(Debug)]
struct Published {
    verify: KeySet,
    jwks: Bytes,
    kids: Vec<String>,
}

/// The JWK set of `ring`, and after it the federation keys: those are
/// published for relying parties, never used to verify Stint's own
/// tokens (they are not in `verify`, nor in `kids`).
fn publish(ring: &[RingKey], federation: &[Jwk]) -> Result<Published, String> {
    let mut jwks = JwkSet::default();
    let mut verify = KeySet::new();
    let mut kids = Vec::with_capacity(ring.len());
    for held in ring {
        jwks.keys.push(held.key.public_jwk().clone());
        verify.insert(held.key.verifying_key());
        kids.push(held.key.kid().to_owned());
    }
    jwks.keys.extend(federation.iter().cloned());
    let jwks = serde_json::to_vec(&jwks).map_err(|e| e.to_string())?;
    Ok(Published {
        verify,
        jwks: Bytes::from(jwks),
        kids,
    })
}

/// How long past `retired_at + MAX_TOKEN_TTL` a retired key stays
/// published: a mint that loaded the old key just before a rotation signs
/// a moment after it.
const RETIREMENT_MARGIN_SECS: i64 = 60;

/// A key the ring still publishes.
#[derive(Debug)]
struct RingKey {
    key: Arc<SigningKey>,
    retired_at: Option<i64>,
}

/// Whether a key retired at `retired_at` (if at all) is still published at
/// `now`.
fn still_published(retired_at: Option<i64>, now: i64) -> bool {
    retired_at
        .is_none_or(|at| at + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS > now)
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new signing key.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The key it replaced.
    pub retired_kid: String,
    /// When the replaced key leaves the JWK set (seconds since the epoch).
    pub retired_until: i64,
}

/// Why a rotation did not happen.
#[derive(Debug)]
pub enum RotationError<E> {
    /// No new key could be made; nothing was audited.
    Generate(String),
    /// The rotation could not be audited; nothing changed.
    Audit(E),
    /// The rotation was audited, but the new key could not be stored;
    /// nothing changed.
    Store(String),
}

/// The key that signs now, for the audit log's checkpoints.
struct CurrentKey(Arc<ArcSwap<SigningKey>>);

impl CheckpointSigner for CurrentKey {
    fn signing_key(&self) -> Arc<SigningKey> {
        self.0.load_full()
    }
}

/// The current signing key and the published verification keys.
#[derive(Debug)]
pub struct KeyRing {
    /// Shared with the audit log's checkpoint signer ([`KeyRing::checkpoint_signer`]).
    signing: Arc<ArcSwap<SigningKey>>,
    published: ArcSwap<Published>,
    /// Every published key; rotations and pruning change it under this lock.
    ring: tokio::sync::Mutex<Vec<RingKey>>,
    /// The federation keys' public halves, published after the ring's.
    federation: Vec<Jwk>,
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

        let now = now.timestamp();
        let mut ring = Vec::with_capacity(loaded.len());
        for (stored, signing) in loaded {
            if stored.kid == active_kid || still_published(stored.retired_at, now) {
                ring.push(RingKey {
                    key: Arc::new(signing),
                    retired_at: stored.retired_at,
                });
            } else if let Err(error) = store.delete_signing_key(&stored.kid).await {
                tracing::warn!(kid = %stored.kid, %error, "could not delete an expired signing key");
            }
        }
        let signing_key = ring
            .iter()
            .find(|k| k.key.kid() == active_kid)
            .map(|k| Arc::clone(&k.key))
            .ok_or("no active signing key")?;
        let published = publish(&ring, &[])?;
        Ok(Self {
            signing: Arc::new(ArcSwap::new(signing_key)),
            published: ArcSwap::from_pointee(published),
            ring: tokio::sync::Mutex::new(ring),
            federation: Vec::new(),
        })
    }

    /// Publish `federation` (the federation keys' JWKs) in the JWK set
    /// too, after the ring's keys, from now and through every rotation.
    pub fn with_federation_keys(mut self, federation: Vec<Jwk>) -> Result<Self, String> {
        let published = publish(self.ring.get_mut(), &federation)?;
        self.published = ArcSwap::from_pointee(published);
        self.federation = federation;
        Ok(self)
    }

    /// Replace the signing key with a new one of the same algorithm, once
    /// `audit` has recorded the rotation that is about to happen.
    ///
    /// The new key is generated and `audit` called with what the rotation
    /// will do; only if it succeeds is the new key stored, published and
    /// made to sign, and the old one retired (it stays published until its
    /// last token has expired). If `audit` fails nothing has changed. If the
    /// store then refuses the new key, nothing has changed either, but the
    /// audit log names a rotation that did not happen: the caller records
    /// that too ([`RotationError::Store`]). Rotations run one at a time.
    pub async fn rotate<E, F, Fut>(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        rng: &(dyn SecureRandom + Sync),
        audit: F,
    ) -> Result<Rotation, RotationError<E>>
    where
        F: FnOnce(Rotation) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let mut ring = self.ring.lock().await;
        let current = self.signing.load_full();
        let alg = current.alg();
        let (next, pkcs8) =
            SigningKey::generate(alg, rng).map_err(|e| RotationError::Generate(e.to_string()))?;
        let now = now.timestamp();
        let rotation = Rotation {
            kid: next.kid().to_owned(),
            alg,
            retired_kid: current.kid().to_owned(),
            retired_until: now + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS,
        };
        let next = Arc::new(next);
        // The ring and the JWK set as they will be, made before anything
        // is written, so nothing fails once the new key is stored.
        let mut next_ring: Vec<RingKey> = ring
            .iter()
            .map(|held| RingKey {
                key: Arc::clone(&held.key),
                retired_at: if held.key.kid() == current.kid() {
                    Some(now)
                } else {
                    held.retired_at
                },
            })
            .collect();
        next_ring.push(RingKey {
            key: Arc::clone(&next),
            retired_at: None,
        });
        let published = publish(&next_ring, &self.federation).map_err(RotationError::Generate)?;

        audit(rotation.clone())
            .await
            .map_err(RotationError::Audit)?;
        store
            .insert_signing_key(&StoredKey {
                kid: next.kid().to_owned(),
                alg: alg.as_str().to_owned(),
                pkcs8,
                created_at: now,
                retired_at: None,
            })
            .await
            .map_err(|e| RotationError::Store(e.to_string()))?;
        // From here the rotation stands: with the new key stored, a restart
        // signs with it (and retires every other key) whatever happens next.
        if let Err(error) = store.retire_signing_key(current.kid(), now).await {
            tracing::warn!(kid = current.kid(), %error, "could not mark the old signing key retired in the store; the next start retires it");
        }
        *ring = next_ring;
        // Published first, signing second.
        self.published.store(Arc::new(published));
        self.signing.store(Arc::clone(&next));
        tracing::info!(kid = next.kid(), retired = current.kid(), %alg, "rotated the signing key");
        Ok(rotation)
    }

    /// Remove retired keys whose tokens have all expired from the JWK set
    /// and the store. Returns how many were removed.
    pub async fn prune(&self, store: &dyn Store, now: DateTime<Utc>) -> usize {
        let mut ring = self.ring.lock().await;
        let now = now.timestamp();
        let before = ring.len();
        let mut expired = Vec::new();
        ring.retain(|held| {
            let keep = still_published(held.retired_at, now);
            if !keep {
                expired.push(held.key.kid().to_owned());
            }
            keep
        });
        if expired.is_empty() {
            return 0;
        }
        match publish(&ring, &self.federation) {
            Ok(published) => self.published.store(Arc::new(published)),
            Err(error) => tracing::error!(%error, "could not republish the keys"),
        }
        for kid in &expired {
            tracing::info!(%kid, "a retired signing key's tokens have all expired: unpublished");
            if let Err(error) = store.delete_signing_key(kid).await {
                tracing::warn!(%kid, %error, "could not delete an expired signing key");
            }
        }
        before - ring.len()
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        self.signing.load_full()
    }

    /// A signer for the audit log's checkpoints: whichever key signs
    /// tokens at the time.
    pub fn checkpoint_signer(&self) -> Arc<dyn CheckpointSigner> {
        Arc::new(CurrentKey(Arc::clone(&self.signing)))
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

    /// The key ids in the JWK set.
    pub fn published_kids(&self) -> Vec<String> {
        let published = self.published.load();
        let mut kids: Vec<String> = published.kids.clone();
        kids.sort();
        kids
    }

    /// The JWK set document, pre-serialized.
    pub fn jwks_json(&self) -> Bytes {
        self.published.load().jwks.clone()
    }
}

/// The public halves of the signing keys in the store at `store_path`,
/// read without changing it (a running broker may hold it): what `stintd
/// verify-audit` checks checkpoints with by default. The store holds the
/// keys that sign now and those retired within the last hour or so.
pub fn stored_public_keys(
    store_path: &std::path::Path,
) -> Result<Vec<stint_core::jose::VerifyingKey>, String> {
    let stored =
        stint_store::SqliteStore::read_signing_keys(store_path).map_err(|e| e.to_string())?;
    let rng = ring::rand::SystemRandom::new();
    let mut keys = Vec::with_capacity(stored.len());
    for key in stored {
        let alg = Algorithm::from_name(&key.alg)
            .ok_or_else(|| format!("stored key {} has unknown algorithm {:?}", key.kid, key.alg))?;
        let signing = SigningKey::from_pkcs8(alg, &key.pkcs8, &rng)
            .map_err(|e| format!("stored key {} cannot be loaded: {e}", key.kid))?;
        keys.push(signing.verifying_key());
    }
    Ok(keys)
}

/// The keys of a JWK set document (the broker's `/.well-known/jwks.json`,
/// saved), for `stintd verify-audit --jwks`. A key without a `kid`, or of
/// a type Stint does not verify, is an error: a trust anchor should hold
/// what it is meant to.
pub fn public_keys_from_jwks(
    document: &[u8],
) -> Result<Vec<stint_core::jose::VerifyingKey>, String> {
    let set: JwkSet =
        serde_json::from_slice(document).map_err(|e| format!("not a JWK set: {e}"))?;
    set.keys
        .iter()
        .map(|jwk| stint_core::jose::VerifyingKey::from_jwk(jwk).map_err(|e| e.to_string()))
        .collect()
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

        let still = at(3_000 + i64::from(MAX_TOKEN_TTL.as_secs()));
        let ed_still = KeyRing::load_or_create(&store, Algorithm::EdDSA, still, &rng)
            .await
            .unwrap();
        assert_eq!(ed_still.published_kids().len(), 2, "within the margin");
        let later = at(3_000 + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS);
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
        assert_eq!(
            store.signing_keys().await.unwrap().len(),
            1,
            "and deleted from the store"
        );
    }
}
