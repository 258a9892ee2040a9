//! Token Status Lists at the broker: every minted token gets an index in a
//! list, revocations set its status, and `GET /v1/status/{list}` serves the
//! list as a signed `statuslist+jwt`.
//!
//! A list serves the tokens minted during one hour (or its first
//! [`LIST_CAPACITY`] tokens), then a new one starts; indexes are never
//! reused, and a list is dropped only once every token pointing at it has
//! expired. For each index the broker keeps 64 bits of the token's `jti`,
//! keyed hashes of its workload, job, step and approval, and its `iat`, so
//! that revoking a job, a step, an approval or a workload sets the status of
//! each of its tokens. The key is the list's own, random.
//!
//! Lists are kept across restarts: a list's id and key are stored before
//! any token points at it, and its entries are written to the store every
//! second (and at shutdown). At start-up the statuses are computed again
//! from the entries and the revocations in force. Indexes whose entries had
//! not been written when the broker stopped (a crash, at most a second of
//! mints) read INVALID: fail closed. So do lists stored before entries were
//! (schema 5).

use crate::error::OAuthError;
use crate::keys::KeyRing;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ring::hmac;
use ring::rand::SecureRandom;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use stint_core::claims::AccessTokenClaims;
use stint_core::revocation::RevocationEntries;
use stint_core::status_list::{
    INVALID, STATUS_LIST_TYP, StatusClaim, StatusList, StatusListClaim, StatusListTokenClaims,
    StatusReference,
};
use stint_core::ttl::MAX_TOKEN_TTL;
use stint_store::{Store, StoredStatusList};

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

/// Entries written to the store in one go, at most.
const FLUSH_CHUNK: usize = 65_536;
/// The length of a list's key.
const KEY_LEN: usize = 32;

/// What the broker knows of the token at one index: 64 bits of its `jti`,
/// keyed hashes (see [`ListKey`]) of its names, and its `iat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    jti: u64,
    workload: u64,
    job: u64,
    step: u64,
    /// 0 for a token minted without an approval (no hash is 0).
    approval: u64,
    iat: i64,
}

impl Entry {
    /// Its stored form: six little-endian 64-bit words.
    const LEN: usize = 48;

    fn encode(&self, out: &mut Vec<u8>) {
        for word in [self.jti, self.workload, self.job, self.step, self.approval] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.iat.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
        Some(Self {
            jti: u64::from_le_bytes(word(0)?),
            workload: u64::from_le_bytes(word(1)?),
            job: u64::from_le_bytes(word(2)?),
            step: u64::from_le_bytes(word(3)?),
            approval: u64::from_le_bytes(word(4)?),
            iat: i64::from_le_bytes(word(5)?),
        })
    }
}

/// A list's key: HMAC-SHA256, truncated to 64 bits, over a kind tag and
/// the length-prefixed names. Keyed, so that nobody can choose a job name
/// whose hash is another workload's job (and revoke its tokens' statuses).
struct ListKey {
    key: hmac::Key,
    bytes: [u8; KEY_LEN],
}

impl ListKey {
    fn generate(rng: &(dyn SecureRandom + Sync)) -> Result<Self, String> {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill(&mut bytes)
            .map_err(|_| "no randomness".to_owned())?;
        Ok(Self::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            bytes,
        }
    }

    fn hash(&self, kind: &[u8], names: &[&str]) -> u64 {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(kind);
        for name in names {
            context.update(&(name.len() as u64).to_le_bytes());
            context.update(name.as_bytes());
        }
        let tag = context.sign();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        // 0 means "no approval" in an entry.
        u64::from_le_bytes(first).max(1)
    }

    fn workload(&self, workload: &str) -> u64 {
        self.hash(b"workload", &[workload])
    }

    fn job(&self, sub: &str, job: &str) -> u64 {
        self.hash(b"job", &[sub, job])
    }

    fn step(&self, sub: &str, job: &str, step: &str) -> u64 {
        self.hash(b"step", &[sub, job, step])
    }

    fn approval(&self, approval: &str) -> u64 {
        self.hash(b"elev", &[approval])
    }

    fn entry(&self, claims: &AccessTokenClaims) -> Entry {
        Entry {
            // Every jti the broker mints is one; 0 matches no revocation.
            jti: jti_word(&claims.jti).unwrap_or(0),
            workload: self.workload(&claims.sub),
            job: self.job(&claims.sub, &claims.job),
            step: self.step(&claims.sub, &claims.job, &claims.step),
            approval: claims
                .elev
                .as_deref()
                .map_or(0, |approval| self.approval(approval)),
            iat: claims.iat,
        }
    }
}

/// 64 bits of a token's `jti`: random bits the broker chose, so no key is
/// needed (and no hash is spent on it per mint).
fn jti_word(jti: &str) -> Option<u64> {
    stint_core::claims::jti_key(jti).map(|key| (key ^ (key >> 64)) as u64)
}

/// The revocations in force, hashed with one list's key.
struct Revoked {
    jtis: HashSet<u64>,
    jobs: HashSet<u64>,
    steps: HashSet<u64>,
    approvals: HashSet<u64>,
    /// Stopped workloads: tokens issued up to the value are revoked.
    workloads: HashMap<u64, i64>,
}

impl Revoked {
    fn new(key: &ListKey, revocations: &RevocationEntries) -> Self {
        Self {
            jtis: revocations
                .tokens
                .iter()
                .filter_map(|(jti, _)| jti_word(jti))
                .collect(),
            jobs: revocations
                .jobs
                .iter()
                .map(|(sub, job, _)| key.job(sub, job))
                .collect(),
            steps: revocations
                .steps
                .iter()
                .map(|(sub, job, step, _)| key.step(sub, job, step))
                .collect(),
            approvals: revocations
                .approvals
                .iter()
                .map(|(approval, _)| key.approval(approval))
                .collect(),
            workloads: revocations
                .workloads
                .iter()
                .map(|(workload, before, _)| (key.workload(workload), *before))
                .collect(),
        }
    }

    fn covers(&self, entry: &Entry) -> bool {
        self.jtis.contains(&entry.jti)
            || self.jobs.contains(&entry.job)
            || self.steps.contains(&entry.step)
            || (entry.approval != 0 && self.approvals.contains(&entry.approval))
            || self
                .workloads
                .get(&entry.workload)
                .is_some_and(|before| entry.iat <= *before)
    }
}

struct Contents {
    bits: StatusList,
    entries: Vec<Entry>,
    /// How many entries are in the store.
    flushed: usize,
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
    /// `None` for a list whose entries are unknown (stored before entries
    /// were): every status INVALID.
    key: Option<ListKey>,
}

impl List {
    fn new(issuer: &str, id: String, created_at: i64, key: ListKey) -> Result<Self, String> {
        let bits = StatusList::new(1, LIST_CAPACITY).map_err(|e| e.to_string())?;
        Ok(Self::with(
            issuer,
            id,
            created_at,
            Some(key),
            bits,
            Vec::new(),
        ))
    }

    fn with(
        issuer: &str,
        id: String,
        created_at: i64,
        key: Option<ListKey>,
        bits: StatusList,
        entries: Vec<Entry>,
    ) -> Self {
        Self {
            uri: format!("{issuer}{STATUS_PATH}/{id}"),
            id,
            created_at,
            contents: Mutex::new(Contents {
                bits,
                flushed: entries.len(),
                entries,
                version: 0,
            }),
            cached: Mutex::new(None),
            key,
        }
    }

    /// A list of an earlier run, from the store: its entries read back,
    /// their statuses computed from the revocations in force. Every index
    /// past the entries read back (or of a list without a key) is INVALID.
    fn restore(
        issuer: &str,
        stored: StoredStatusList,
        revocations: &RevocationEntries,
    ) -> Result<Self, String> {
        let key = stored
            .key
            .as_deref()
            .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes).ok())
            .map(ListKey::from_bytes);
        let mut entries = Vec::new();
        if key.is_some() {
            for (first, chunk) in &stored.chunks {
                // Whole entries, without a gap: anything after a gap or a
                // torn chunk is unknown. Chunks may overlap (a cancelled
                // write that landed): the overlap is the same entries.
                let Some(known) = (entries.len() as u64).checked_sub(*first) else {
                    break;
                };
                if chunk.len() % Entry::LEN != 0 {
                    break;
                }
                let room = LIST_CAPACITY - entries.len();
                entries.extend(
                    chunk
                        .chunks_exact(Entry::LEN)
                        .skip(usize::try_from(known).unwrap_or(usize::MAX))
                        .take(room)
                        .filter_map(Entry::decode),
                );
            }
        }
        let mut bits = StatusList::new(1, LIST_CAPACITY).map_err(|e| e.to_string())?;
        for idx in entries.len()..LIST_CAPACITY {
            bits.set(idx as u64, INVALID).map_err(|e| e.to_string())?;
        }
        if let Some(key) = &key {
            let revoked = Revoked::new(key, revocations);
            for (idx, entry) in entries.iter().enumerate() {
                if revoked.covers(entry) {
                    bits.set(idx as u64, INVALID).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(Self::with(
            issuer,
            stored.id,
            stored.created_at,
            key,
            bits,
            entries,
        ))
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
    lists: RwLock<Vec<Arc<List>>>,
    /// The list new tokens go to (the newest of this run).
    current: arc_swap::ArcSwapOption<List>,
    /// Held while a new list is started (a store write).
    rotation: tokio::sync::Mutex<()>,
    /// Held while entries are written to the store.
    flushing: tokio::sync::Mutex<()>,
}

impl StatusLists {
    /// The lists at start-up: those of earlier runs, restored from the
    /// store with the statuses `revocations` (those in force) give them,
    /// and a new one for this run.
    pub(crate) async fn start(
        issuer: &str,
        store: &dyn Store,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
        revocations: &RevocationEntries,
    ) -> Result<Self, String> {
        let mut lists = Vec::new();
        let earlier = store.status_lists(now).await.map_err(|e| e.to_string())?;
        for stored in earlier {
            let list = List::restore(issuer, stored, revocations)?;
            tracing::info!(
                list = %list.id,
                tokens = list.contents().entries.len(),
                "status list restored"
            );
            lists.push(Arc::new(list));
        }
        let this = Self {
            issuer: issuer.to_owned(),
            lists: RwLock::new(lists),
            current: arc_swap::ArcSwapOption::empty(),
            rotation: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
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
        let key = ListKey::generate(rng)?;
        let key_bytes = key.bytes;
        let list = Arc::new(List::new(
            &self.issuer,
            URL_SAFE_NO_PAD.encode(id),
            now,
            key,
        )?);
        // Stored before any token points at it.
        store
            .insert_status_list(&list.id, list.created_at, list.expires_at(), &key_bytes)
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

    /// Give a new token its index: in the newest list if it is young and
    /// not full, else in a new one.
    pub(crate) async fn allocate(
        &self,
        claims: &AccessTokenClaims,
        store: &dyn Store,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
    ) -> Result<StatusClaim, OAuthError> {
        for _ in 0..2 {
            let newest = self.current.load_full();
            // The hashes are computed before the list's lock is taken.
            if let Some((list, entry)) = newest
                .filter(|l| now < l.created_at + LIST_ROTATION_SECS)
                .and_then(|l| {
                    let entry = l.key.as_ref()?.entry(claims);
                    Some((l, entry))
                })
            {
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
        if let Some(status) = &claims.status {
            self.revoke_reference(&status.status_list);
        }
    }

    /// Set the status of every entry the revocations in force cover (after
    /// changes were missed: see [`crate::changes`]).
    pub(crate) fn reapply(&self, revocations: &RevocationEntries) {
        self.revoke_matching(|key| {
            let revoked = Revoked::new(key, revocations);
            move |entry: &Entry| revoked.covers(entry)
        });
    }

    /// The token at `reference` was revoked: set its status, if this
    /// broker serves its list.
    pub(crate) fn revoke_reference(&self, reference: &StatusReference) {
        if let Some(list) = self
            .lists()
            .into_iter()
            .find(|l| l.uri == reference.uri && l.key.is_some())
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
        self.revoke_matching(|key| {
            let job = key.job(sub, job);
            move |entry: &Entry| entry.job == job
        });
    }

    /// An approval was revoked: set the status of each token minted under it.
    pub(crate) fn revoke_approval(&self, approval: &str) {
        self.revoke_matching(|key| {
            let approval = key.approval(approval);
            move |entry: &Entry| entry.approval == approval
        });
    }

    /// A step of a job was revoked: set the status of each of its tokens.
    pub(crate) fn revoke_step(&self, sub: &str, job: &str, step: &str) {
        self.revoke_matching(|key| {
            let step = key.step(sub, job, step);
            move |entry: &Entry| entry.step == step
        });
    }

    /// A workload was stopped at `before`: set the status of each of its
    /// tokens issued until then.
    pub(crate) fn revoke_workload(&self, workload: &str, before: i64) {
        self.revoke_matching(|key| {
            let workload = key.workload(workload);
            move |entry: &Entry| entry.workload == workload && entry.iat <= before
        });
    }

    /// Set the status of every entry that `matcher` (given each list's key)
    /// matches.
    fn revoke_matching<M: Fn(&Entry) -> bool>(&self, matcher: impl Fn(&ListKey) -> M) {
        for list in self.lists() {
            let Some(key) = &list.key else { continue };
            let matches = matcher(key);
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

    /// Write the entries not yet in the store. One flush at a time; on a
    /// store failure the rest waits for the next call.
    pub(crate) async fn flush(&self, store: &dyn Store) {
        let _one = self.flushing.lock().await;
        for list in self.lists().into_iter().filter(|l| l.key.is_some()) {
            loop {
                let (first, entries) = {
                    let contents = list.contents();
                    let first = contents.flushed;
                    let end = contents.entries.len().min(first + FLUSH_CHUNK);
                    if end == first {
                        break;
                    }
                    (first, contents.entries[first..end].to_vec())
                };
                // Encoded outside the lock: mints wait only for the copy.
                let mut bytes = Vec::with_capacity(entries.len() * Entry::LEN);
                for entry in &entries {
                    entry.encode(&mut bytes);
                }
                if let Err(error) = store
                    .append_status_entries(&list.id, first as u64, &bytes)
                    .await
                {
                    tracing::warn!(%error, list = %list.id, "could not store status list entries; retrying");
                    return;
                }
                list.contents().flushed = first + entries.len();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ring::rand::SystemRandom;
    use stint_core::status_list::VALID;
    use stint_store::SqliteStore;

    const ISSUER: &str = "https://stint.test";
    const NOW: i64 = 1_800_000_000;

    /// A well-formed jti, different for each `n`.
    fn jti(n: u32) -> String {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        bytes[15] = 0x5a;
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn claims(n: u32, job: &str, elev: Option<&str>) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: ISSUER.into(),
            sub: "deployer".into(),
            aud: "svc".into(),
            client_id: "deployer".into(),
            exp: NOW + 300,
            iat: NOW - 10 + i64::from(n),
            nbf: NOW,
            jti: jti(n),
            scope: "read:x".into(),
            job: job.into(),
            step: format!("step-{n}"),
            workflow: "wf".into(),
            cnf: None,
            elev: elev.map(str::to_owned),
            status: None,
        }
    }

    async fn mint(
        lists: &StatusLists,
        store: &dyn Store,
        n: u32,
        job: &str,
        elev: Option<&str>,
    ) -> (AccessTokenClaims, u64) {
        let rng = SystemRandom::new();
        let mut claims = claims(n, job, elev);
        let status = lists.allocate(&claims, store, &rng, NOW).await.unwrap();
        let idx = status.status_list.idx;
        claims.status = Some(status);
        (claims, idx)
    }

    fn statuses(lists: &StatusLists, uri: &str, idxs: &[u64]) -> Vec<u8> {
        let list = lists.lists().into_iter().find(|l| l.uri == uri).unwrap();
        let contents = list.contents();
        idxs.iter()
            .map(|i| contents.bits.get(*i).unwrap())
            .collect()
    }

    fn uri(claims: &AccessTokenClaims) -> String {
        claims.status.as_ref().unwrap().status_list.uri.clone()
    }

    async fn allocate(
        lists: &StatusLists,
        store: &dyn Store,
        mut claims: AccessTokenClaims,
    ) -> u64 {
        let status = lists
            .allocate(&claims, store, &SystemRandom::new(), NOW)
            .await
            .unwrap();
        let idx = status.status_list.idx;
        claims.status = Some(status);
        idx
    }

    #[tokio::test]
    async fn restored_lists_recompute_statuses_and_fail_closed_past_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let none = RevocationEntries::default();
        let lists = StatusLists::start(ISSUER, &store, &rng, NOW, &none)
            .await
            .unwrap();
        // Each token is covered by one kind of revocation at most.
        let (t0, by_jti) = mint(&lists, &store, 0, "job-a", None).await;
        let by_approval = allocate(&lists, &store, claims(1, "job-a", Some("apr-1"))).await;
        let live = allocate(&lists, &store, claims(2, "job-b", None)).await;
        let by_job = allocate(&lists, &store, claims(3, "job-c", None)).await;
        let by_step = allocate(&lists, &store, claims(4, "job-d", None)).await;
        let stopped = AccessTokenClaims {
            sub: "stopped".into(),
            ..claims(5, "job-s", None)
        };
        let at_stop = allocate(&lists, &store, stopped.clone()).await;
        let after_stop = allocate(
            &lists,
            &store,
            AccessTokenClaims {
                iat: stopped.iat + 1,
                ..claims(6, "job-s", None)
            },
        )
        .await;
        let after_stop_other = allocate(
            &lists,
            &store,
            AccessTokenClaims {
                iat: stopped.iat + 1,
                jti: jti(7),
                ..stopped.clone()
            },
        )
        .await;
        lists.flush(&store).await;
        // Minted after the last flush, then the broker "crashes".
        let unflushed = allocate(&lists, &store, claims(8, "job-e", None)).await;
        let first_list = uri(&t0);
        drop(lists);

        // What the store says is revoked when the broker starts again.
        let revocations = RevocationEntries {
            tokens: vec![(jti(0), NOW + 300), ("not-a-jti".into(), NOW + 300)],
            approvals: vec![("apr-1".into(), NOW + 300)],
            workloads: vec![("stopped".into(), stopped.iat, NOW + 600)],
            jobs: vec![("deployer".into(), "job-c".into(), NOW + 600)],
            steps: vec![(
                "deployer".into(),
                "job-d".into(),
                "step-4".into(),
                NOW + 600,
            )],
        };
        let lists = StatusLists::start(ISSUER, &store, &rng, NOW, &revocations)
            .await
            .unwrap();
        let names = [
            "by jti",
            "by approval",
            "live",
            "by job",
            "by step",
            "issued at the stop",
            "another workload after the stop",
            "issued after the stop",
            "never stored",
            "never handed out",
        ];
        let got = statuses(
            &lists,
            &first_list,
            &[
                by_jti,
                by_approval,
                live,
                by_job,
                by_step,
                at_stop,
                after_stop,
                after_stop_other,
                unflushed,
                unflushed + 1,
            ],
        );
        let want = [
            INVALID, INVALID, VALID, INVALID, INVALID, INVALID, VALID, VALID, INVALID, INVALID,
        ];
        for ((name, got), want) in names.iter().zip(got).zip(want) {
            assert_eq!(got, want, "{name}");
        }
        // Later revocations reach the restored list; the rest stays.
        lists.revoke_step("deployer", "job-b", "step-2");
        assert_eq!(statuses(&lists, &first_list, &[live]), [INVALID]);
        // New tokens go to a new list.
        let (t9, _) = mint(&lists, &store, 9, "job-f", None).await;
        assert_ne!(uri(&t9), first_list);
    }

    #[tokio::test]
    async fn a_workload_stop_covers_only_tokens_issued_until_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let rng = SystemRandom::new();
        let lists = StatusLists::start(ISSUER, &store, &rng, NOW, &RevocationEntries::default())
            .await
            .unwrap();
        let (t0, i0) = mint(&lists, &store, 0, "job-a", None).await;
        let (_, i1) = mint(&lists, &store, 5, "job-a", None).await;
        lists.revoke_workload("deployer", NOW - 10);
        lists.revoke_workload("someone-else", NOW + 100);
        assert_eq!(statuses(&lists, &uri(&t0), &[i0, i1]), [INVALID, VALID]);
    }

    #[test]
    fn entries_round_trip_and_keys_separate_kinds() {
        let key = ListKey::from_bytes([3; KEY_LEN]);
        let entry = key.entry(&claims(7, "job", Some("apr")));
        let mut bytes = Vec::new();
        entry.encode(&mut bytes);
        assert_eq!(bytes.len(), Entry::LEN);
        assert_eq!(Entry::decode(&bytes), Some(entry));
        assert_eq!(Entry::decode(&bytes[..40]), None);
        // The same names under different kinds, or split differently, hash
        // apart; another key gives other hashes.
        assert_ne!(key.job("a", "bc"), key.job("ab", "c"));
        assert_ne!(key.workload("x"), key.approval("x"));
        assert_ne!(
            key.job("a", "b"),
            ListKey::from_bytes([4; KEY_LEN]).job("a", "b")
        );
        assert_eq!(key.entry(&claims(7, "job", None)).approval, 0);
    }
}
