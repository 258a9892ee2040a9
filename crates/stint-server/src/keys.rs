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
//! With a key-encryption key (`--key-encryption-key-file`), the private
//! keys are sealed in the store ([`stint_core::seal`], bound to their
//! `kid`): a backup of the store, or a read of the shared database, holds
//! no usable signing key. A key stored in the clear before the
//! key-encryption key was given is not sealed after the fact (the backups
//! that hold it are already made): it is retired at start, as after an
//! algorithm change, and a new sealed key signs. A sealed key without its
//! key-encryption key, or with another, refuses the start.
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
use std::time::Duration;
use stint_core::access_token::{self, Expectations, TokenError};
use stint_core::claims::AccessTokenClaims;
use stint_core::jose::{Algorithm, KeySet, SigningKey};
use stint_core::seal::{SealError, Sealer};
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

/// A key the ring publishes.
#[derive(Debug)]
struct RingKey {
    key: Arc<SigningKey>,
    /// Whether it may sign (see [`Loaded::may_sign`]), as judged when it
    /// was opened.
    may_sign: bool,
    /// The SHA-256 of the stored bytes it was opened from: a key is reused
    /// on a reload only while the store holds exactly those.
    stored_digest: [u8; 32],
    created_at: i64,
    activated_at: Option<i64>,
    retired_at: Option<i64>,
}

/// Whether a key retired at `retired_at` (if at all) is still published at
/// `now`.
fn still_published(retired_at: Option<i64>, now: i64) -> bool {
    retired_at
        .is_none_or(|at| at + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS > now)
}

/// The largest key-encryption key file read (64 hex digits and a newline
/// fit many times over).
const MAX_KEK_FILE: u64 = 128;

/// What a sealed signing key is bound to, besides its `kid`.
const SIGNING_KEY_AAD: &[u8] = b"stint signing key v1:";

fn signing_key_aad(kid: &str) -> Vec<u8> {
    [SIGNING_KEY_AAD, kid.as_bytes()].concat()
}

/// The key-encryption key from its file: 32 random bytes, or 64 hex
/// digits. Errors name the file, never its contents.
pub fn read_key_encryption_key(path: &std::path::Path) -> Result<Sealer, String> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot open the key-encryption key file {}: {e}",
            path.display()
        )
    })?;
    if let Ok(metadata) = file.metadata()
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the key-encryption key file is readable by group or others; chmod 600 it");
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEK_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            format!(
                "cannot read the key-encryption key file {}: {e}",
                path.display()
            )
        })?;
    Sealer::from_key_file_bytes(&bytes).ok_or_else(|| {
        format!(
            "the key-encryption key file {} must hold 32 random bytes, or 64 hex digits (head -c 32 /dev/urandom > FILE)",
            path.display()
        )
    })
}

/// A stored key's private half: opened with `kek` if it is sealed. The
/// flag says whether it was (a clear key is retired when a `kek` is given).
fn open_stored(key: &StoredKey, kek: Option<&Sealer>) -> Result<(Vec<u8>, bool), String> {
    let Some(sealed_by) = Sealer::sealed_key_id(&key.pkcs8) else {
        return Ok((key.pkcs8.clone(), false));
    };
    let Some(kek) = kek else {
        return Err(format!(
            "stored key {} is sealed under a key-encryption key (id {sealed_by}): start with --key-encryption-key-file",
            key.kid
        ));
    };
    match kek.unseal(&key.pkcs8, &signing_key_aad(&key.kid)) {
        Ok(pkcs8) => Ok((pkcs8, true)),
        Err(SealError::OtherKey) => Err(format!(
            "stored key {} is sealed under the key-encryption key with id {sealed_by}, not this one ({}): give the key file it was sealed with",
            key.kid,
            kek.key_id()
        )),
        Err(why) => Err(format!("stored key {} {why}", key.kid)),
    }
}

/// A new key's private half as it is stored: sealed if there is a `kek`.
fn to_store(
    kid: &str,
    pkcs8: Vec<u8>,
    kek: Option<&Sealer>,
    rng: &(dyn SecureRandom + Sync),
) -> Result<Vec<u8>, String> {
    match kek {
        None => Ok(pkcs8),
        Some(kek) => kek
            .seal(&pkcs8, &signing_key_aad(kid), rng)
            .map_err(|why| format!("the new signing key {why}")),
    }
}

/// The stored keys this broker trusts, opened (reusing the keys of `held`
/// by `kid`). Keys this broker would never have written (a clear key under
/// a key-encryption key stored after sealing began; a retirement in the
/// future) are deleted, and so are retired keys whose tokens have all
/// expired. A key that does not open is an error.
async fn load_trusted(
    store: &dyn Store,
    kek: Option<&Sealer>,
    now: DateTime<Utc>,
    rng: &(dyn SecureRandom + Sync),
    held: &[RingKey],
    at_start: bool,
) -> Result<Vec<Loaded>, String> {
    // With other brokers on the store, what looks wrong here may be this
    // broker's clock: ignore it, never delete it for everyone.
    let shared = store.shared();
    let stored = store.signing_keys().await.map_err(|e| e.to_string())?;
    // With a key-encryption key, a key in the clear is one kept from
    // before the keys were sealed, published until its tokens expire.
    // Once the first sealed key is older than that, a clear key can only
    // have been written into the store since: never trusted.
    let clear_keys_until = kek.and_then(|_| {
        stored
            .iter()
            .filter(|key| Sealer::looks_sealed(&key.pkcs8))
            .map(|key| key.created_at)
            .min()
            .map(|first| first + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS)
    });
    let now = now.timestamp();
    let mut loaded = Vec::with_capacity(stored.len());
    for key in stored {
        let clear = !Sealer::looks_sealed(&key.pkcs8);
        let stale_clear =
            kek.is_some() && clear && clear_keys_until.is_some_and(|until| now >= until);
        // A retirement in the future is no retirement a broker wrote.
        let bad_retirement = key.retired_at.is_some_and(|at| at > now + 60);
        // Under a key-encryption key, a key in the clear that appears while
        // this broker runs was written by no broker.
        let clear_since_start =
            kek.is_some() && clear && !at_start && !held.iter().any(|h| h.key.kid() == key.kid);
        let expired = !still_published(key.retired_at, now);
        if stale_clear || bad_retirement || expired || clear_since_start {
            let delete = if expired {
                tracing::info!(kid = %key.kid, "a retired signing key's tokens have all expired: unpublished");
                !shared
                    || !still_published(
                        key.retired_at.map(|at| at + SHARED_DELETE_MARGIN_SECS),
                        now,
                    )
            } else {
                tracing::warn!(kid = %key.kid, stale_clear, bad_retirement, clear_since_start, "ignoring a stored signing key that no broker wrote");
                !shared
            };
            if delete && let Err(error) = store.delete_signing_key(&key.kid).await {
                tracing::warn!(kid = %key.kid, %error, "could not delete the key");
            }
            continue;
        }
        let key_alg = Algorithm::from_name(&key.alg)
            .ok_or_else(|| format!("stored key {} has unknown algorithm {:?}", key.kid, key.alg))?;
        let digest = digest_of(&key.pkcs8);
        let reused = held.iter().find(|h| {
            h.key.kid() == key.kid && h.key.alg() == key_alg && h.stored_digest == digest
        });
        let (signing, may_sign) = match reused {
            Some(h) => (Arc::clone(&h.key), h.may_sign),
            None => {
                let (pkcs8, sealed) = open_stored(&key, kek)?;
                let signing = SigningKey::from_pkcs8(key_alg, &pkcs8, rng)
                    .map_err(|e| format!("stored key {} cannot be loaded: {e}", key.kid))?;
                if signing.kid() != key.kid {
                    return Err(format!("stored key {} does not match its kid", key.kid));
                }
                if kek.is_some() && !sealed && key.retired_at.is_none() {
                    tracing::warn!(kid = %key.kid, "a signing key is stored in the clear: it may verify, never sign, under a key-encryption key");
                }
                (Arc::new(signing), sealed || kek.is_none())
            }
        };
        loaded.push(Loaded {
            may_sign,
            stored: key,
            key: signing,
        });
    }
    Ok(loaded)
}

fn digest_of(stored: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, stored).as_ref());
    out
}

/// How much longer than [`still_published`] says a key is kept in a shared
/// store before a broker deletes it: another broker's clock may be behind.
const SHARED_DELETE_MARGIN_SECS: i64 = 600;

/// The key that signs for `alg`: the latest activated, not retired.
fn signer(loaded: &[Loaded], alg: Algorithm) -> Option<Arc<SigningKey>> {
    loaded
        .iter()
        .filter(|l| {
            l.may_sign
                && l.key.alg() == alg
                && l.stored.activated_at.is_some()
                && l.stored.retired_at.is_none()
        })
        .max_by_key(|l| (l.stored.activated_at, l.stored.created_at))
        .map(|l| Arc::clone(&l.key))
}

/// The published keys: all that were loaded (expired ones are not).
fn ring_of(loaded: Vec<Loaded>) -> Vec<RingKey> {
    loaded
        .into_iter()
        .map(|l| RingKey {
            key: l.key,
            may_sign: l.may_sign,
            stored_digest: digest_of(&l.stored.pkcs8),
            created_at: l.stored.created_at,
            activated_at: l.stored.activated_at,
            retired_at: l.stored.retired_at,
        })
        .collect()
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new signing key.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The key it replaces.
    pub retired_kid: String,
    /// When the new key begins to sign, on every broker (seconds since the
    /// epoch): it is published from now, and signs once every verifier's
    /// cached JWK set has had time to expire.
    pub signs_from: i64,
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

/// The longest a verifier may cache the JWK set (its `Cache-Control`
/// `max-age`), and the default [`KeyRing`] publish lead.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);

/// A stored key this broker trusts, opened.
struct Loaded {
    stored: StoredKey,
    key: Arc<SigningKey>,
    /// Sealed, or stored in the clear with no key-encryption key given: a
    /// clear key under a key-encryption key may publish, never sign.
    may_sign: bool,
}

/// The current signing key and the published verification keys.
///
/// The store is the truth: every broker on one store loads the same keys
/// ([`KeyRing::reload`], on every signing-key change of the change feed),
/// publishes every key that is staged, signing, or retired with tokens
/// still alive, and signs with the one activated key of its algorithm.
#[derive(Debug)]
pub struct KeyRing {
    /// Shared with the audit log's checkpoint signer ([`KeyRing::checkpoint_signer`]).
    signing: Arc<ArcSwap<SigningKey>>,
    published: ArcSwap<Published>,
    /// Every published key; loads, rotations and activations change it
    /// under this lock, one at a time.
    ring: tokio::sync::Mutex<Vec<RingKey>>,
    /// The federation keys' public halves, published after the ring's.
    federation: Vec<Jwk>,
    /// Seals new keys in the store, if given.
    kek: Option<Arc<Sealer>>,
    /// The algorithm this broker signs with.
    alg: Algorithm,
    /// How long a new key is published before it signs.
    lead: i64,
    /// The JWK set's `Cache-Control`: never longer than the lead.
    jwks_cache_control: http::HeaderValue,
}

impl KeyRing {
    /// Load the keys from `store`; if no key of `alg` signs yet, create one
    /// and make it sign at once (no verifier can have cached a JWK set
    /// without it that it would need), which retires the key that signed
    /// until now (after an algorithm change, or one kept in the clear from
    /// before a key-encryption key was given). A rotation publishes its
    /// new key `lead` before it signs.
    pub async fn load_or_create(
        store: &dyn Store,
        alg: Algorithm,
        lead: Duration,
        now: DateTime<Utc>,
        rng: &(dyn SecureRandom + Sync),
        kek: Option<Arc<Sealer>>,
    ) -> Result<Self, String> {
        let mut loaded = load_trusted(store, kek.as_deref(), now, rng, &[], true).await?;
        if signer(&loaded, alg).is_none() {
            let (signing, pkcs8) = SigningKey::generate(alg, rng).map_err(|e| e.to_string())?;
            let kid = signing.kid().to_owned();
            store
                .insert_signing_key(&StoredKey {
                    kid: kid.clone(),
                    alg: alg.as_str().to_owned(),
                    pkcs8: to_store(&kid, pkcs8, kek.as_deref(), rng)?,
                    created_at: now.timestamp(),
                    activated_at: None,
                    retired_at: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            // Another broker starting at the same moment may activate its
            // own key after this one: the last activation stands, and this
            // broker switches to it when that change reaches it.
            store
                .activate_signing_key(&kid, now.timestamp())
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(%kid, %alg, sealed = kek.is_some(), "created a new signing key");
            loaded = load_trusted(store, kek.as_deref(), now, rng, &[], true).await?;
        }
        let signing_key = signer(&loaded, alg)
            .ok_or_else(|| format!("no {alg} signing key in the store after creating one"))?;
        let ring = ring_of(loaded);
        let published = publish(&ring, &[])?;
        let lead = i64::try_from(lead.as_secs()).map_err(|_| "the publish lead is too long")?;
        let max_age = lead.min(JWKS_MAX_AGE.as_secs() as i64);
        let jwks_cache_control = http::HeaderValue::try_from(format!("public, max-age={max_age}"))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            signing: Arc::new(ArcSwap::new(signing_key)),
            published: ArcSwap::from_pointee(published),
            ring: tokio::sync::Mutex::new(ring),
            federation: Vec::new(),
            kek,
            alg,
            lead,
            jwks_cache_control,
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

    /// Load the keys from the store again, as another broker (or this one)
    /// changed them: publish what is there, then sign with the activated
    /// key. On an error nothing changes (the keys in force stay) and the
    /// error is returned; so it is if the store has no signing key of this
    /// broker's algorithm (a broker started with another `--signing-alg`
    /// took over): this broker goes on signing with its key, which stays
    /// valid until its retirement's tokens expire, and says so.
    pub async fn reload(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        rng: &(dyn SecureRandom + Sync),
    ) -> Result<(), String> {
        let mut ring = self.ring.lock().await;
        self.reload_locked(&mut ring, store, now, rng).await
    }

    async fn reload_locked(
        &self,
        ring: &mut Vec<RingKey>,
        store: &dyn Store,
        now: DateTime<Utc>,
        rng: &(dyn SecureRandom + Sync),
    ) -> Result<(), String> {
        let loaded = load_trusted(store, self.kek.as_deref(), now, rng, ring, false).await?;
        let next = signer(&loaded, self.alg);
        let current = self.signing.load_full();
        let mut next_ring = ring_of(loaded);
        // Without a signer of this broker's algorithm it signs on with its
        // key: which must then stay published here.
        if next.is_none()
            && let Some(held) = ring.iter().find(|h| h.key.kid() == current.kid())
            && !next_ring.iter().any(|h| h.key.kid() == current.kid())
        {
            next_ring.push(RingKey {
                key: Arc::clone(&held.key),
                may_sign: held.may_sign,
                stored_digest: held.stored_digest,
                created_at: held.created_at,
                activated_at: held.activated_at,
                retired_at: held.retired_at,
            });
        }
        let published = publish(&next_ring, &self.federation)?;
        *ring = next_ring;
        // Published first, signing second.
        self.published.store(Arc::new(published));
        let next = next.ok_or_else(|| {
            format!(
                "the store holds no activated {} signing key (a broker with another --signing-alg took over): this broker signs on with {}",
                self.alg,
                current.kid()
            )
        })?;
        if current.kid() != next.kid() {
            tracing::info!(
                kid = next.kid(),
                retired = current.kid(),
                "the signing key changed: signing with the new one"
            );
            self.signing.store(next);
        }
        Ok(())
    }

    /// Stage a new key of the same algorithm, once `audit` has recorded
    /// the rotation that is about to happen: it is published (by every
    /// broker on the store) from now, and signs from
    /// [`Rotation::signs_from`], when [`KeyRing::activate_due`] on any
    /// broker activates it; the old key then retires, and stays published
    /// until its last token has expired. With no publish lead the new key
    /// signs at once.
    ///
    /// If `audit` fails nothing has changed. If the store then refuses the
    /// new key, nothing has changed either, but the audit log names a
    /// rotation that did not happen: the caller records that too
    /// ([`RotationError::Store`]). Rotations run one at a time.
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
        let now_secs = now.timestamp();
        let signs_from = now_secs + self.lead;
        let rotation = Rotation {
            kid: next.kid().to_owned(),
            alg,
            retired_kid: current.kid().to_owned(),
            signs_from,
            retired_until: signs_from + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS,
        };
        let pkcs8 = to_store(next.kid(), pkcs8, self.kek.as_deref(), rng)
            .map_err(RotationError::Generate)?;
        audit(rotation.clone())
            .await
            .map_err(RotationError::Audit)?;
        store
            .insert_signing_key(&StoredKey {
                kid: next.kid().to_owned(),
                alg: alg.as_str().to_owned(),
                pkcs8,
                created_at: now_secs,
                activated_at: None,
                retired_at: None,
            })
            .await
            .map_err(|e| RotationError::Store(e.to_string()))?;
        // From here the rotation stands: the staged key is in the store,
        // and whichever broker finds it due activates it.
        if self.lead == 0
            && let Err(error) = store.activate_signing_key(next.kid(), now_secs).await
        {
            tracing::warn!(kid = next.kid(), %error, "could not activate the new signing key; it is tried again every second");
        }
        if let Err(error) = self.reload_locked(&mut ring, store, now, rng).await {
            tracing::warn!(kid = next.kid(), %error, "the new signing key is stored but not yet loaded; the change feed loads it");
        }
        tracing::info!(kid = next.kid(), retired = current.kid(), %alg, signs_from, "staged a new signing key: published now, signing from signs_from");
        Ok(rotation)
    }

    /// Activate the staged key of this broker's algorithm whose publish
    /// lead has passed, if there is one: every broker calls this every
    /// second, the store lets one of them do it, and all of them switch on
    /// that one change. Returns the key activated by this call.
    pub async fn activate_due(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        rng: &(dyn SecureRandom + Sync),
    ) -> Option<String> {
        let mut ring = self.ring.lock().await;
        let due = ring
            .iter()
            .filter(|held| {
                held.activated_at.is_none()
                    && held.retired_at.is_none()
                    && held.key.alg() == self.alg
                    // Strictly: both times are whole seconds, rounded
                    // down, so this waits at least the whole lead.
                    && held.created_at + self.lead < now.timestamp()
            })
            .max_by_key(|held| held.created_at)
            .map(|held| held.key.kid().to_owned())?;
        let activated = match store.activate_signing_key(&due, now.timestamp()).await {
            Ok(activated) => activated.is_some(),
            Err(error) => {
                tracing::warn!(kid = %due, %error, "could not activate the staged signing key; trying again");
                return None;
            }
        };
        if let Err(error) = self.reload_locked(&mut ring, store, now, rng).await {
            tracing::warn!(kid = %due, %error, "could not load the keys after an activation");
        }
        activated.then_some(due)
    }

    /// Remove retired keys whose tokens have all expired from the JWK set
    /// and the store, and load the keys again (a safety net, every minute,
    /// for a signing-key change this broker failed to load). Returns how
    /// many keys left the JWK set.
    pub async fn prune(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        rng: &(dyn SecureRandom + Sync),
    ) -> usize {
        let mut ring = self.ring.lock().await;
        let before = ring.len();
        // Loading deletes the expired keys from the store.
        if let Err(error) = self.reload_locked(&mut ring, store, now, rng).await {
            tracing::warn!(%error, "could not prune the signing keys");
        }
        before.saturating_sub(ring.len())
    }

    /// The JWK set's `Cache-Control` header: verifiers may cache it for no
    /// longer than a new key is published before it signs.
    pub fn jwks_cache_control(&self) -> http::HeaderValue {
        self.jwks_cache_control.clone()
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
    kek: Option<&Sealer>,
) -> Result<Vec<stint_core::jose::VerifyingKey>, String> {
    let stored =
        stint_store::SqliteStore::read_signing_keys(store_path).map_err(|e| e.to_string())?;
    public_halves(stored, kek)
}

/// The public halves of the signing keys in `store` (a PostgreSQL store's,
/// for `stintd verify-audit` over its chains), opened with `kek` if sealed.
pub async fn public_keys_in_store(
    store: &dyn Store,
    kek: Option<&Sealer>,
) -> Result<Vec<stint_core::jose::VerifyingKey>, String> {
    let stored = store.signing_keys().await.map_err(|e| e.to_string())?;
    public_halves(stored, kek)
}

/// The public halves of `stored` keys, opened with `kek` if sealed. Under
/// a key-encryption key a clear key is one anybody able to write the store
/// could have put there: not a trust anchor, so left out.
fn public_halves(
    stored: Vec<StoredKey>,
    kek: Option<&Sealer>,
) -> Result<Vec<stint_core::jose::VerifyingKey>, String> {
    let rng = ring::rand::SystemRandom::new();
    let mut keys = Vec::with_capacity(stored.len());
    for key in stored {
        if kek.is_some() && !Sealer::looks_sealed(&key.pkcs8) {
            continue;
        }
        let alg = Algorithm::from_name(&key.alg)
            .ok_or_else(|| format!("stored key {} has unknown algorithm {:?}", key.kid, key.alg))?;
        let (pkcs8, _) = open_stored(&key, kek)?;
        let signing = SigningKey::from_pkcs8(alg, &pkcs8, &rng)
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
        let first = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_000),
            &rng,
            None,
        )
        .await
        .unwrap();
        let again = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(2_000),
            &rng,
            None,
        )
        .await
        .unwrap();
        assert_eq!(first.signing_key().kid(), again.signing_key().kid());

        let ed = KeyRing::load_or_create(
            &store,
            Algorithm::EdDSA,
            Duration::ZERO,
            at(3_000),
            &rng,
            None,
        )
        .await
        .unwrap();
        assert_eq!(ed.signing_key().alg(), Algorithm::EdDSA);
        let jwks: JwkSet = serde_json::from_slice(&ed.jwks_json()).unwrap();
        assert_eq!(jwks.keys.len(), 2, "the retired ES256 key stays published");

        let still = at(3_000 + i64::from(MAX_TOKEN_TTL.as_secs()));
        let ed_still =
            KeyRing::load_or_create(&store, Algorithm::EdDSA, Duration::ZERO, still, &rng, None)
                .await
                .unwrap();
        assert_eq!(ed_still.published_kids().len(), 2, "within the margin");
        let later = at(3_000 + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS);
        let ed_later =
            KeyRing::load_or_create(&store, Algorithm::EdDSA, Duration::ZERO, later, &rng, None)
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

    fn kek(byte: u8) -> Option<Arc<Sealer>> {
        Some(Arc::new(Sealer::from_key_file_bytes(&[byte; 32]).unwrap()))
    }

    #[tokio::test]
    async fn with_a_key_encryption_key_the_store_holds_only_sealed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let ring = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_000),
            &rng,
            kek(1),
        )
        .await
        .unwrap();
        let kid = ring.signing_key().kid().to_owned();
        let stored = store.signing_keys().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert!(Sealer::looks_sealed(&stored[0].pkcs8));
        assert!(
            SigningKey::from_pkcs8(Algorithm::ES256, &stored[0].pkcs8, &rng).is_err(),
            "what the store holds is no key"
        );

        // The same key-encryption key opens it: the same key signs.
        let again = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_100),
            &rng,
            kek(1),
        )
        .await
        .unwrap();
        assert_eq!(again.signing_key().kid(), kid);
        // Rotations store the new key sealed too.
        again
            .rotate(&store, at(1_200), &rng, |_| async { Ok::<(), ()>(()) })
            .await
            .unwrap();
        let stored = store.signing_keys().await.unwrap();
        assert_eq!(stored.len(), 2);
        assert!(stored.iter().all(|key| Sealer::looks_sealed(&key.pkcs8)));

        // Without it, or with another, the start fails: no key is made
        // over the sealed ones.
        let without = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_300),
            &rng,
            None,
        )
        .await
        .unwrap_err();
        assert!(without.contains("--key-encryption-key-file"), "{without}");
        let other = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_300),
            &rng,
            kek(2),
        )
        .await
        .unwrap_err();
        let (ours, theirs) = (kek(1).unwrap().key_id(), kek(2).unwrap().key_id());
        assert!(other.contains(&ours) && other.contains(&theirs), "{other}");
        assert_eq!(store.signing_keys().await.unwrap().len(), 2);
        assert!(stored_public_keys(&dir.path().join("stint.db"), None).is_err());
        assert_eq!(
            stored_public_keys(&dir.path().join("stint.db"), kek(1).as_deref())
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_sealed_key_is_bound_to_its_kid() {
        let rng = SystemRandom::new();
        let kek = kek(1).unwrap();
        let (signing, pkcs8) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let sealed = to_store(signing.kid(), pkcs8, Some(&kek), &rng).unwrap();
        // The same sealed bytes under another row's kid do not open.
        let moved = StoredKey {
            kid: "another-kid".into(),
            alg: "ES256".into(),
            pkcs8: sealed,
            created_at: 1,
            activated_at: Some(1),
            retired_at: None,
        };
        let why = open_stored(&moved, Some(&kek)).unwrap_err();
        assert!(why.contains("does not open"), "{why}");
    }

    #[tokio::test]
    async fn giving_a_key_encryption_key_retires_the_key_kept_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let clear = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_000),
            &rng,
            None,
        )
        .await
        .unwrap();
        let clear_kid = clear.signing_key().kid().to_owned();
        let sealed = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(2_000),
            &rng,
            kek(1),
        )
        .await
        .unwrap();
        assert_ne!(sealed.signing_key().kid(), clear_kid, "a new key signs");
        assert!(
            sealed.published_kids().contains(&clear_kid),
            "the clear key still verifies its tokens"
        );
        let stored = store.signing_keys().await.unwrap();
        let old = stored.iter().find(|key| key.kid == clear_kid).unwrap();
        assert_eq!(old.retired_at, Some(2_000));
        // Once its tokens have expired it is gone from the store.
        let later = at(2_000 + i64::from(MAX_TOKEN_TTL.as_secs()) + RETIREMENT_MARGIN_SECS);
        KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            later,
            &rng,
            kek(1),
        )
        .await
        .unwrap();
        let stored = store.signing_keys().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert!(Sealer::looks_sealed(&stored[0].pkcs8));
    }

    #[tokio::test]
    async fn under_a_key_encryption_key_a_clear_key_written_later_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let sealed = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_000),
            &rng,
            kek(1),
        )
        .await
        .unwrap();
        // Someone who can write the store adds a key in the clear, retired
        // (so that it would only be published) far in the future.
        let (forged, pkcs8) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        for retired_at in [Some(10_000_000), Some(5_000)] {
            store.delete_signing_key(forged.kid()).await.unwrap();
            store
                .insert_signing_key(&StoredKey {
                    kid: forged.kid().to_owned(),
                    alg: "ES256".into(),
                    pkcs8: pkcs8.clone(),
                    created_at: 900,
                    activated_at: Some(900),
                    retired_at,
                })
                .await
                .unwrap();
            let later = at(5_000);
            let ring = KeyRing::load_or_create(
                &store,
                Algorithm::ES256,
                Duration::ZERO,
                later,
                &rng,
                kek(1),
            )
            .await
            .unwrap();
            assert_eq!(ring.signing_key().kid(), sealed.signing_key().kid());
            assert!(
                !ring.published_kids().contains(&forged.kid().to_owned()),
                "{retired_at:?}"
            );
            assert!(
                store
                    .signing_keys()
                    .await
                    .unwrap()
                    .iter()
                    .all(|key| key.kid != forged.kid()),
                "and deleted"
            );
        }
    }

    /// Two brokers on one store: a rotation through one is published by
    /// both at once, signs on neither until the lead has passed, and then
    /// signs on both after one activation.
    #[tokio::test]
    async fn a_staged_key_is_published_everywhere_before_any_broker_signs_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let lead = Duration::from_secs(300);
        let a = KeyRing::load_or_create(&store, Algorithm::ES256, lead, at(1_000), &rng, kek(1))
            .await
            .unwrap();
        let b = KeyRing::load_or_create(&store, Algorithm::ES256, lead, at(1_001), &rng, kek(1))
            .await
            .unwrap();
        let old = a.signing_key().kid().to_owned();
        assert_eq!(b.signing_key().kid(), old, "one key for both");
        assert_eq!(
            a.jwks_cache_control(),
            "public, max-age=300",
            "never cached past the lead"
        );

        let rotation = a
            .rotate(&store, at(2_000), &rng, |_| async { Ok::<(), ()>(()) })
            .await
            .unwrap();
        assert_eq!(rotation.signs_from, 2_300);
        b.reload(&store, at(2_000), &rng).await.unwrap();
        for ring in [&a, &b] {
            assert!(
                ring.published_kids().contains(&rotation.kid),
                "published at once"
            );
            assert_eq!(ring.signing_key().kid(), old, "not signing yet");
        }
        assert_eq!(
            b.activate_due(&store, at(2_300), &rng).await,
            None,
            "not due: the rotation may have come late in its second"
        );
        assert_eq!(a.signing_key().kid(), old);
        assert_eq!(
            b.activate_due(&store, at(2_301), &rng).await,
            Some(rotation.kid.clone()),
            "due: one broker activates"
        );
        assert_eq!(
            a.activate_due(&store, at(2_301), &rng).await,
            None,
            "and only one"
        );
        for ring in [&a, &b] {
            assert_eq!(ring.signing_key().kid(), rotation.kid, "both sign with it");
            assert!(
                ring.published_kids().contains(&old),
                "the old key verifies on"
            );
        }
        let stored = store.signing_keys().await.unwrap();
        let retired = stored.iter().find(|key| key.kid == old).unwrap();
        assert_eq!(retired.retired_at, Some(2_301), "retired at the switch");

        // A restart while a key is staged keeps it staged.
        let rotation = a
            .rotate(&store, at(3_000), &rng, |_| async { Ok::<(), ()>(()) })
            .await
            .unwrap();
        let c = KeyRing::load_or_create(&store, Algorithm::ES256, lead, at(3_010), &rng, kek(1))
            .await
            .unwrap();
        assert!(c.published_kids().contains(&rotation.kid));
        assert_ne!(c.signing_key().kid(), rotation.kid);
    }

    /// With no lead the new key signs at once, and the JWK set is not
    /// cached.
    #[tokio::test]
    async fn without_a_lead_the_new_key_signs_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let ring = KeyRing::load_or_create(
            &store,
            Algorithm::ES256,
            Duration::ZERO,
            at(1_000),
            &rng,
            None,
        )
        .await
        .unwrap();
        assert_eq!(ring.jwks_cache_control(), "public, max-age=0");
        let rotation = ring
            .rotate(&store, at(2_000), &rng, |_| async { Ok::<(), ()>(()) })
            .await
            .unwrap();
        assert_eq!(rotation.signs_from, 2_000);
        assert_eq!(ring.signing_key().kid(), rotation.kid);
    }
}
