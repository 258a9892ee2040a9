//! Token Status Lists at the broker: every minted token gets an index in a
//! list, revocations set its status, and `GET /v1/status/{list}` serves the
//! list as a signed `statuslist+jwt`.
//!
//! A list serves the tokens minted during one hour (or its first
//! [`LIST_CAPACITY`] tokens), then a new one starts; indexes are never
//! reused, and a list is dropped only once every token pointing at it has
//! expired. For each index the broker keeps two keyed hashes (of the
//! token's workload and job, and of its approval), so that revoking a job or
//! an approval sets the status of each of its tokens.
//!
//! Lists live in memory. Their ids are stored when they start, so that
//! after a restart the lists of the earlier run are still recognised: they
//! are served with every status INVALID (which index a job's tokens had is
//! not kept across a restart, so fail closed), until their tokens have all
//! expired.

use crate::error::OAuthError;
use crate::keys::KeyRing;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ring::rand::SecureRandom;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, RwLock};
use stint_core::claims::AccessTokenClaims;
use stint_core::status_list::{
    INVALID, STATUS_LIST_TYP, StatusClaim, StatusList, StatusListClaim, StatusListTokenClaims,
    StatusReference,
};
use stint_core::ttl::MAX_TOKEN_TTL;
use stint_store::Store;

/// The path prefix of status lists.
pub(crate) const STATUS_PATH: &str = "/v1/status";
/// Indexes per list (1 bit each: 128 KiB).
pub(crate) const LIST_CAPACITY: usize = 1 << 20;
/// How long one list takes new tokens, seconds.
pub(crate) const LIST_ROTATION_SECS: i64 = 3600;
/// How long a verifier may cache a status list token (`ttl`), seconds.
pub(crate) const LIST_TTL_SECS: u64 = 60;
/// A status list token's lifetime (`exp - iat`), seconds.
const LIST_LIFETIME_SECS: i64 = 300;

#[derive(Clone, Copy)]
struct Entry {
    job: u64,
    step: u64,
    approval: u64,
    workload: u64,
}

struct Contents {
    bits: StatusList,
    entries: Vec<Entry>,
    version: u64,
}

struct Cached {
    version: u64,
    iat: i64,
    token: Bytes,
    etag: String,
}

/// One list.
pub(crate) struct List {
    id: String,
    uri: String,
    created_at: i64,
    contents: Mutex<Contents>,
    cached: Mutex<Option<Cached>>,
    /// From an earlier run: every status INVALID, no entries.
    orphaned: bool,
}

impl List {
    fn new(issuer: &str, id: String, created_at: i64, orphaned: bool) -> Result<Self, String> {
        let mut bits = StatusList::new(1, LIST_CAPACITY).map_err(|e| e.to_string())?;
        if orphaned {
            for idx in 0..LIST_CAPACITY as u64 {
                bits.set(idx, INVALID).map_err(|e| e.to_string())?;
            }
        }
        Ok(Self {
            uri: format!("{issuer}{STATUS_PATH}/{id}"),
            id,
            created_at,
            contents: Mutex::new(Contents {
                bits,
                entries: Vec::new(),
                version: 0,
            }),
            cached: Mutex::new(None),
            orphaned,
        })
    }

    fn contents(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when a token of this list can be valid.
    fn expires_at(&self) -> i64 {
        self.created_at + LIST_ROTATION_SECS + i64::from(MAX_TOKEN_TTL.as_secs()) + 60
    }
}

/// Every list the broker serves.
pub(crate) struct StatusLists {
    issuer: String,
    hasher: RandomState,
    lists: RwLock<Vec<Arc<List>>>,
    /// The list new tokens go to (the newest of this run).
    current: arc_swap::ArcSwapOption<List>,
    /// Held while a new list is started (a store write).
    rotation: tokio::sync::Mutex<()>,
}

impl StatusLists {
    /// The lists at start-up: those of earlier runs (orphaned, see the
    /// module docs) and a new one for this run.
    pub(crate) async fn start(
        issuer: &str,
        store: &dyn Store,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
    ) -> Result<Self, String> {
        let mut lists = Vec::new();
        let earlier = store.status_lists(now).await.map_err(|e| e.to_string())?;
        for (id, created_at) in earlier {
            lists.push(Arc::new(List::new(issuer, id, created_at, true)?));
        }
        let this = Self {
            issuer: issuer.to_owned(),
            hasher: RandomState::new(),
            lists: RwLock::new(lists),
            current: arc_swap::ArcSwapOption::empty(),
            rotation: tokio::sync::Mutex::new(()),
        };
        this.start_list(store, rng, now).await?;
        Ok(this)
    }

    fn lists(&self) -> Vec<Arc<List>> {
        self.lists.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn start_list(
        &self,
        store: &dyn Store,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
    ) -> Result<Arc<List>, String> {
        let mut id = [0u8; 12];
        rng.fill(&mut id).map_err(|_| "no randomness".to_owned())?;
        let list = Arc::new(List::new(
            &self.issuer,
            URL_SAFE_NO_PAD.encode(id),
            now,
            false,
        )?);
        // Stored before any token points at it.
        store
            .insert_status_list(&list.id, list.created_at, list.expires_at())
            .await
            .map_err(|e| e.to_string())?;
        self.lists
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&list));
        self.current.store(Some(Arc::clone(&list)));
        tracing::info!(list = %list.id, "status list started");
        Ok(list)
    }

    fn job_key(&self, sub: &str, job: &str) -> u64 {
        self.hasher.hash_one((sub, job))
    }

    fn step_key(&self, sub: &str, job: &str, step: &str) -> u64 {
        self.hasher.hash_one(("step", sub, job, step))
    }

    fn workload_key(&self, workload: &str) -> u64 {
        self.hasher.hash_one(("workload", workload))
    }

    fn approval_key(&self, approval: &str) -> u64 {
        self.hasher.hash_one(("elev", approval))
    }

    /// Give a new token its index: in the newest list if it is young and
    /// not full, else in a new one.
    pub(crate) async fn allocate(
        &self,
        claims: &AccessTokenClaims,
        store: &dyn Store,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
    ) -> Result<StatusClaim, OAuthError> {
        let entry = Entry {
            job: self.job_key(&claims.sub, &claims.job),
            approval: claims
                .elev
                .as_deref()
                .map_or(0, |approval| self.approval_key(approval)),
            workload: self.workload_key(&claims.sub),
            step: self.step_key(&claims.sub, &claims.job, &claims.step),
        };
        for _ in 0..2 {
            let newest = self.current.load_full();
            if let Some(list) = newest.filter(|l| now < l.created_at + LIST_ROTATION_SECS) {
                let mut contents = list.contents();
                if contents.entries.len() < LIST_CAPACITY {
                    let idx = contents.entries.len() as u64;
                    contents.entries.push(entry);
                    return Ok(StatusClaim {
                        status_list: StatusReference {
                            idx,
                            uri: list.uri.clone(),
                        },
                    });
                }
            }
            let _rotating = self.rotation.lock().await;
            // Another mint may have started one meanwhile.
            let fresh = self.current.load_full().filter(|l| {
                now < l.created_at + LIST_ROTATION_SECS
                    && l.contents().entries.len() < LIST_CAPACITY
            });
            if fresh.is_none() {
                self.start_list(store, rng, now).await.map_err(|error| {
                    tracing::error!(%error, "could not start a status list");
                    OAuthError::unavailable("a status list could not be started")
                })?;
            }
        }
        Err(OAuthError::unavailable("no status list index is free"))
    }

    /// A token was revoked: set its status.
    pub(crate) fn revoke_token(&self, claims: &AccessTokenClaims) {
        let Some(status) = &claims.status else { return };
        let reference = &status.status_list;
        if let Some(list) = self
            .lists()
            .into_iter()
            .find(|l| l.uri == reference.uri && !l.orphaned)
        {
            let mut contents = list.contents();
            // Only a change bumps the version (and costs a new signed list).
            if (reference.idx as usize) < contents.entries.len()
                && contents.bits.get(reference.idx) != Ok(INVALID)
                && contents.bits.set(reference.idx, INVALID).is_ok()
            {
                contents.version += 1;
            }
        }
    }

    /// A job was revoked: set the status of each of its tokens.
    pub(crate) fn revoke_job(&self, sub: &str, job: &str) {
        let key = self.job_key(sub, job);
        self.revoke_matching(|entry| entry.job == key);
    }

    /// An approval was revoked: set the status of each token minted under it.
    pub(crate) fn revoke_approval(&self, approval: &str) {
        let key = self.approval_key(approval);
        self.revoke_matching(|entry| entry.approval == key);
    }

    /// A step of a job was revoked: set the status of each of its tokens.
    pub(crate) fn revoke_step(&self, sub: &str, job: &str, step: &str) {
        let key = self.step_key(sub, job, step);
        self.revoke_matching(|entry| entry.step == key);
    }

    /// A workload was stopped: set the status of each of its tokens.
    pub(crate) fn revoke_workload(&self, workload: &str) {
        let key = self.workload_key(workload);
        self.revoke_matching(|entry| entry.workload == key);
    }

    fn revoke_matching(&self, matches: impl Fn(&Entry) -> bool) {
        for list in self.lists().into_iter().filter(|l| !l.orphaned) {
            let mut contents = list.contents();
            let hits: Vec<u64> = contents
                .entries
                .iter()
                .enumerate()
                .filter(|(_, entry)| matches(entry))
                .map(|(idx, _)| idx as u64)
                .filter(|idx| contents.bits.get(*idx) != Ok(INVALID))
                .collect();
            for idx in &hits {
                let _ = contents.bits.set(*idx, INVALID);
            }
            if !hits.is_empty() {
                contents.version += 1;
            }
        }
    }

    /// Forget lists whose tokens have all expired.
    pub(crate) fn purge(&self, now: i64) {
        self.lists
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|list| list.expires_at() > now);
    }

    /// The signed status list token for list `id`, and its ETag; `None`
    /// for a list this broker does not serve.
    pub(crate) fn token(
        &self,
        id: &str,
        keys: &KeyRing,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
    ) -> Option<Result<(Bytes, String), OAuthError>> {
        let list = self.lists().into_iter().find(|l| l.id == id)?;
        let current = list.contents().version;
        let mut cached = list.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cached
            .as_ref()
            .filter(|c| c.version == current && now - c.iat < (LIST_TTL_SECS as i64) / 2)
        {
            return Some(Ok((hit.token.clone(), hit.etag.clone())));
        }
        let (version, lst) = {
            let contents = list.contents();
            (contents.version, StatusListClaim::of(&contents.bits))
        };
        let claims = StatusListTokenClaims {
            sub: list.uri.clone(),
            iat: now,
            exp: Some(now + LIST_LIFETIME_SECS),
            ttl: Some(LIST_TTL_SECS),
            status_list: lst,
        };
        let signed = match keys.signing_key().sign_jwt(STATUS_LIST_TYP, &claims, rng) {
            Ok(signed) => signed,
            Err(_) => {
                return Some(Err(OAuthError::unavailable(
                    "the status list could not be signed",
                )));
            }
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, signed.as_bytes());
        let etag = format!("\"{}\"", hex::encode(&digest.as_ref()[..16]));
        let token = Bytes::from(signed);
        *cached = Some(Cached {
            version,
            iat: now,
            token: token.clone(),
            etag: etag.clone(),
        });
        Some(Ok((token, etag)))
    }
}
