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
//!
//! With a shared store (several brokers behind one issuer URL), a broker
//! also serves the lists of the others: one it does not hold is read from
//! the store on request (a *foreign* list), its statuses computed as at
//! start-up, and read again, from the last chunk it has on, when it is
//! more than [`FOREIGN_REFRESH_SECS`] old at a request. The lists restored
//! at start-up are refreshed the same way there (another broker may still
//! be adding to them). Revocations reach foreign lists as they reach own
//! ones; the entries read later get the statuses of the revocations in
//! force. A broker never writes a list it did not start in this run.

use crate::error::OAuthError;
use crate::keys::KeyRing;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ring::hmac;
use ring::rand::SecureRandom;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use stint_core::claims::AccessTokenClaims;
use stint_core::revocation::RevocationEntries;
use stint_core::status_list::{
    INVALID, STATUS_LIST_TYP, StatusClaim, StatusList, StatusListClaim, StatusListTokenClaims,
    StatusReference, VALID,
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
/// The length of a list id: 12 random bytes, base64url (see
/// [`StatusLists::start_list`]).
const ID_LEN: usize = 16;

/// How old a list another broker adds to may be at a request before it
/// is read again from the store, seconds.
const FOREIGN_REFRESH_SECS: i64 = 1;
/// Lists of other brokers loaded on request, at most (the least recently
/// read one is dropped for a new one: it is read again if asked for).
const MAX_FOREIGN_LISTS: usize = 32;
/// How long an id the store does not know is answered 404 without
/// asking it again, seconds.
const UNKNOWN_TTL_SECS: i64 = 5;
/// Unknown ids remembered, at most.
const MAX_UNKNOWN_IDS: usize = 1024;

/// Whether `id` can be a list id at all (checked before any store read:
/// ids come from requests).
fn plausible_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

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

/// How a list another broker may still add to is read again.
struct Refresh {
    /// When the store was last read (or tried), seconds.
    read_at: AtomicI64,
    /// The first index of the last chunk read: read again next time, as
    /// it may have grown.
    from: AtomicU64,
    /// Held while the store is read, so that one request reads it.
    reading: tokio::sync::Mutex<()>,
    /// Loaded on a request, not at start-up: counts towards
    /// [`MAX_FOREIGN_LISTS`].
    on_request: bool,
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
    /// `Some` for a list this broker did not start in this run, on a
    /// shared store: read again from the store, never written to it.
    refresh: Option<Refresh>,
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
            refresh: None,
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
            read_chunks(&mut entries, &stored.chunks);
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

    /// [`List::restore`], for a list another broker may still add to: it
    /// is read again from the store (from `from` on) when it is old.
    fn restore_foreign(
        issuer: &str,
        stored: StoredStatusList,
        revocations: &RevocationEntries,
        now: i64,
        on_request: bool,
    ) -> Result<Self, String> {
        let firsts: Vec<u64> = stored.chunks.iter().map(|(first, _)| *first).collect();
        let mut list = Self::restore(issuer, stored, revocations)?;
        if list.key.is_some() {
            let held = list.contents().entries.len();
            list.refresh = Some(Refresh {
                read_at: AtomicI64::new(now),
                from: AtomicU64::new(read_again_from(firsts, held).unwrap_or(0)),
                reading: tokio::sync::Mutex::new(()),
                on_request,
            });
        }
        Ok(list)
    }

    fn on_request(&self) -> bool {
        self.refresh.as_ref().is_some_and(|r| r.on_request)
    }

    /// Set the status of every entry that `matches`; a new signed list
    /// only if one changed.
    fn revoke_in(&self, matches: impl Fn(&Entry) -> bool) {
        let mut contents = self.contents();
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

    /// Read what was written to the store since the last read, if that was
    /// more than [`FOREIGN_REFRESH_SECS`] ago: the new entries get the
    /// statuses of the revocations in force (`revocations`, asked with
    /// the list's lock held, so that a revocation recorded after the
    /// answer finds the new entries). A store failure keeps what is
    /// held (what was not read stays INVALID) until the next try.
    async fn refresh(
        &self,
        store: &dyn Store,
        now: i64,
        revocations: &(dyn Fn() -> RevocationEntries + Sync),
    ) {
        let (Some(refresh), Some(key)) = (&self.refresh, &self.key) else {
            return;
        };
        let fresh = |refresh: &Refresh| {
            now - refresh.read_at.load(Ordering::Relaxed) < FOREIGN_REFRESH_SECS
        };
        if fresh(refresh) {
            return;
        }
        let _one = refresh.reading.lock().await;
        if fresh(refresh) {
            return;
        }
        let from = refresh.from.load(Ordering::Relaxed);
        let read = store.status_list(&self.id, from, now).await;
        refresh.read_at.store(now, Ordering::Relaxed);
        let stored = match read {
            Ok(Some(stored)) => stored,
            // Dropped from the store: its tokens have expired.
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, list = %self.id, "could not read a status list of another broker; serving what was read before");
                return;
            }
        };
        let mut contents = self.contents();
        let before = contents.entries.len();
        read_chunks(&mut contents.entries, &stored.chunks);
        let after = contents.entries.len();
        if after == before {
            return;
        }
        let revoked = Revoked::new(key, &revocations());
        for idx in before..after {
            let status = match contents.entries.get(idx) {
                Some(entry) if !revoked.covers(entry) => VALID,
                _ => INVALID,
            };
            let _ = contents.bits.set(idx as u64, status);
        }
        // Never written back by this broker.
        contents.flushed = after;
        contents.version += 1;
        drop(contents);
        if let Some(last) = read_again_from(stored.chunks.iter().map(|(first, _)| *first), after) {
            refresh.from.store(last.max(from), Ordering::Relaxed);
        }
    }

    fn contents(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when a token of this list can be valid.
    fn expires_at(&self) -> i64 {
        self.created_at + LIST_ROTATION_SECS + i64::from(MAX_TOKEN_TTL.as_secs()) + 60
    }
}

/// Add the entries of `chunks` (first index, bytes; by first index) that
/// follow `entries`: whole entries, without a gap (anything after a gap or
/// a torn chunk is unknown). Chunks may overlap what is held (a cancelled
/// write that landed, or the last chunk read again): the overlap is the
/// same entries.
fn read_chunks(entries: &mut Vec<Entry>, chunks: &[(u64, Vec<u8>)]) {
    for (first, chunk) in chunks {
        let Some(known) = (entries.len() as u64).checked_sub(*first) else {
            break;
        };
        if chunk.len() % Entry::LEN != 0 {
            break;
        }
        let room = LIST_CAPACITY.saturating_sub(entries.len());
        entries.extend(
            chunk
                .chunks_exact(Entry::LEN)
                .skip(usize::try_from(known).unwrap_or(usize::MAX))
                .take(room)
                .filter_map(Entry::decode),
        );
    }
}

/// Where to read a list again from, holding `held` entries read from
/// chunks starting at `firsts`: the start of the last chunk they came
/// from (it may grow), if any.
fn read_again_from(firsts: impl IntoIterator<Item = u64>, held: usize) -> Option<u64> {
    firsts
        .into_iter()
        .filter(|first| *first <= held as u64)
        .max()
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
    /// Whether other brokers use the store: their lists are served too.
    shared: bool,
    /// Ids the store did not know, until when they are answered 404
    /// without asking it.
    unknown: Mutex<HashMap<String, i64>>,
    /// Held while a list of another broker is loaded: requests for ids
    /// this broker does not hold read the store one at a time.
    loading: tokio::sync::Mutex<()>,
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
        Self::start_with(issuer, store, rng, now, revocations, store.shared()).await
    }

    /// [`StatusLists::start`], `shared` saying whether other brokers use
    /// the store (so that tests can say so of a store that is not).
    async fn start_with(
        issuer: &str,
        store: &dyn Store,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
        revocations: &RevocationEntries,
        shared: bool,
    ) -> Result<Self, String> {
        let mut lists = Vec::new();
        let earlier = store.status_lists(now).await.map_err(|e| e.to_string())?;
        for stored in earlier {
            // On a shared store, another broker may still add to it.
            let list = if shared {
                List::restore_foreign(issuer, stored, revocations, now, false)?
            } else {
                List::restore(issuer, stored, revocations)?
            };
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
            shared,
            unknown: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
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
    /// matches: own lists and those of other brokers alike.
    fn revoke_matching<M: Fn(&Entry) -> bool>(&self, matcher: impl Fn(&ListKey) -> M) {
        for list in self.lists() {
            let Some(key) = &list.key else { continue };
            list.revoke_in(matcher(key));
        }
    }

    /// Write the entries not yet in the store. One flush at a time; on a
    /// store failure the rest waits for the next call.
    pub(crate) async fn flush(&self, store: &dyn Store) {
        let _one = self.flushing.lock().await;
        // Only the lists of this run: another broker writes its own.
        for list in self
            .lists()
            .into_iter()
            .filter(|l| l.key.is_some() && l.refresh.is_none())
        {
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

    /// Forget lists whose tokens have all expired (those of other brokers
    /// too), and the unknown ids remembered for long enough.
    pub(crate) fn purge(&self, now: i64) {
        self.lists
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|list| list.expires_at() > now);
        self.unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
    }

    /// The signed status list token for list `id`, and its ETag; `None`
    /// for a list this broker does not serve. On a shared store, a list
    /// of another broker is read from `store` (and read again when old);
    /// `revocations` gives the revocations in force, for the statuses of
    /// what is read.
    pub(crate) async fn token(
        &self,
        id: &str,
        keys: &KeyRing,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
        store: &dyn Store,
        revocations: &(dyn Fn() -> RevocationEntries + Sync),
    ) -> Option<Result<(Bytes, String), OAuthError>> {
        let held = self.lists().into_iter().find(|l| l.id == id);
        let list = match held {
            Some(list) => {
                list.refresh(store, now, revocations).await;
                list
            }
            None => match self.load(id, store, now, revocations).await {
                Ok(Some(list)) => list,
                Ok(None) => return None,
                Err(error) => return Some(Err(error)),
            },
        };
        self.sign(&list, keys, rng, now)
    }

    /// A list of another broker, read from the store, if the store is
    /// shared and has it. Ids the store did not know are not asked about
    /// again for [`UNKNOWN_TTL_SECS`].
    async fn load(
        &self,
        id: &str,
        store: &dyn Store,
        now: i64,
        revocations: &(dyn Fn() -> RevocationEntries + Sync),
    ) -> Result<Option<Arc<List>>, OAuthError> {
        if !self.shared || !plausible_id(id) || self.known_unknown(id, now) {
            return Ok(None);
        }
        let _one = self.loading.lock().await;
        // Loaded, or found unknown, while this request waited.
        if let Some(list) = self.lists().into_iter().find(|l| l.id == id) {
            return Ok(Some(list));
        }
        if self.known_unknown(id, now) {
            return Ok(None);
        }
        let stored = store.status_list(id, 0, now).await.map_err(|error| {
            tracing::warn!(%error, list = %id, "could not read a status list of another broker");
            OAuthError::unavailable("the status list could not be read")
        })?;
        let Some(stored) = stored.filter(|s| s.id == id) else {
            self.remember_unknown(id, now);
            return Ok(None);
        };
        let list = List::restore_foreign(&self.issuer, stored, &revocations(), now, true)
            .map(Arc::new)
            .map_err(|error| {
                tracing::error!(%error, list = %id, "could not build a status list of another broker");
                OAuthError::unavailable("the status list could not be read")
            })?;
        {
            let mut lists = self.lists.write().unwrap_or_else(|p| p.into_inner());
            let loaded = lists.iter().filter(|l| l.on_request()).count();
            if loaded >= MAX_FOREIGN_LISTS {
                let oldest = lists
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.on_request())
                    .min_by_key(|(_, l)| {
                        l.refresh
                            .as_ref()
                            .map_or(i64::MIN, |r| r.read_at.load(Ordering::Relaxed))
                    })
                    .map(|(i, _)| i);
                if let Some(oldest) = oldest {
                    lists.remove(oldest);
                }
            }
            lists.push(Arc::clone(&list));
        }
        // A revocation recorded after the first answer, whose statuses were
        // set before the list was added: it is in this one.
        if let Some(key) = &list.key {
            let revoked = Revoked::new(key, &revocations());
            list.revoke_in(|entry| revoked.covers(entry));
        }
        tracing::info!(
            list = %list.id,
            tokens = list.contents().entries.len(),
            "status list of another broker loaded"
        );
        Ok(Some(list))
    }

    /// Whether the store did not know `id` a moment ago.
    fn known_unknown(&self, id: &str, now: i64) -> bool {
        self.unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|until| *until > now)
    }

    fn remember_unknown(&self, id: &str, now: i64) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if unknown.len() >= MAX_UNKNOWN_IDS {
            unknown.retain(|_, until| *until > now);
        }
        if unknown.len() >= MAX_UNKNOWN_IDS {
            // Full of ids still remembered (a flood of made-up ones): start
            // again, costing one store read per id, one at a time.
            unknown.clear();
        }
        unknown.insert(id.to_owned(), now + UNKNOWN_TTL_SECS);
    }

    /// The signed status list token for `list`, and its ETag.
    fn sign(
        &self,
        list: &List,
        keys: &KeyRing,
        rng: &(dyn SecureRandom + Sync),
        now: i64,
    ) -> Option<Result<(Bytes, String), OAuthError>> {
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

    /// Two brokers on one store, as on a shared one: `other` started
    /// first (so it holds nothing of `owner`'s), then `owner`.
    async fn two_brokers(store: &dyn Store) -> (StatusLists, StatusLists) {
        let rng = SystemRandom::new();
        let none = RevocationEntries::default();
        let other = StatusLists::start_with(ISSUER, store, &rng, NOW, &none, true)
            .await
            .unwrap();
        let owner = StatusLists::start_with(ISSUER, store, &rng, NOW, &none, true)
            .await
            .unwrap();
        (owner, other)
    }

    fn list_id(claims: &AccessTokenClaims) -> String {
        uri(claims).rsplit('/').next().unwrap().to_owned()
    }

    /// The statuses `lists` serves for list `id` at `now` (signed, then
    /// decoded), or `None` if it serves no such list.
    async fn served(
        lists: &StatusLists,
        keys: &KeyRing,
        store: &dyn Store,
        id: &str,
        now: i64,
        revocations: &RevocationEntries,
    ) -> Option<StatusList> {
        let in_force = || revocations.clone();
        let (token, _) = lists
            .token(id, keys, &SystemRandom::new(), now, store, &in_force)
            .await?
            .unwrap();
        let payload = std::str::from_utf8(&token)
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            claims["sub"],
            format!("{ISSUER}{STATUS_PATH}/{id}"),
            "signed for the list's own URI"
        );
        Some(StatusList::decode(1, claims["status_list"]["lst"].as_str().unwrap()).unwrap())
    }

    async fn keys(store: &dyn Store) -> KeyRing {
        KeyRing::load_or_create(
            store,
            stint_core::jose::Algorithm::ES256,
            std::time::Duration::ZERO,
            chrono::DateTime::from_timestamp(NOW, 0).unwrap(),
            &SystemRandom::new(),
            None,
        )
        .await
        .unwrap()
    }

    fn at(list: &StatusList, idxs: &[u64]) -> Vec<u8> {
        idxs.iter().map(|i| list.get(*i).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_list_of_another_broker_is_built_from_its_stored_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let keys = keys(&store).await;
        let lonely = StatusLists::start_with(
            ISSUER,
            &store,
            &SystemRandom::new(),
            NOW,
            &RevocationEntries::default(),
            false,
        )
        .await
        .unwrap();
        let (owner, other) = two_brokers(&store).await;
        let (t0, live) = mint(&owner, &store, 0, "job-a", None).await;
        let (_, by_job) = mint(&owner, &store, 1, "job-b", None).await;
        owner.flush(&store).await;
        let (_, unflushed) = mint(&owner, &store, 2, "job-c", None).await;
        let id = list_id(&t0);
        let revocations = RevocationEntries {
            jobs: vec![("deployer".into(), "job-b".into(), NOW + 600)],
            ..RevocationEntries::default()
        };

        let got = served(&other, &keys, &store, &id, NOW, &revocations)
            .await
            .expect("the other broker serves the owner's list");
        assert_eq!(
            at(&got, &[live, by_job, unflushed, unflushed + 1]),
            [VALID, INVALID, INVALID, INVALID],
            "live, revoked by job, not yet stored, never handed out"
        );
        // The owner's own list is as it was: the revocation was never
        // applied there (it only learns of it through its own calls).
        let own = served(&owner, &keys, &store, &id, NOW, &revocations)
            .await
            .unwrap();
        assert_eq!(at(&own, &[live, by_job, unflushed]), [VALID, VALID, VALID]);
        // A broker not on a shared store serves only what it holds.
        assert!(
            served(&lonely, &keys, &store, &id, NOW, &revocations)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_foreign_list_is_read_again_when_old_and_revocations_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let keys = keys(&store).await;
        let (owner, other) = two_brokers(&store).await;
        let (t0, i0) = mint(&owner, &store, 0, "job-a", None).await;
        let (t1, i1) = mint(&owner, &store, 1, "job-b", None).await;
        owner.flush(&store).await;
        let id = list_id(&t0);
        let mut revocations = RevocationEntries::default();
        let got = served(&other, &keys, &store, &id, NOW, &revocations)
            .await
            .unwrap();
        assert_eq!(at(&got, &[i0, i1]), [VALID, VALID]);

        // More tokens, stored in a later chunk; one of them of a job
        // revoked meanwhile (in force when they are read).
        let (_, i2) = mint(&owner, &store, 2, "job-c", None).await;
        let (_, i3) = mint(&owner, &store, 3, "job-r", None).await;
        owner.flush(&store).await;
        revocations
            .jobs
            .push(("deployer".into(), "job-r".into(), NOW + 600));
        let same_second = served(&other, &keys, &store, &id, NOW, &revocations)
            .await
            .unwrap();
        assert_eq!(
            at(&same_second, &[i2, i3]),
            [INVALID, INVALID],
            "not read again within a second: unknown indexes fail closed"
        );
        let later = served(&other, &keys, &store, &id, NOW + 1, &revocations)
            .await
            .unwrap();
        assert_eq!(
            at(&later, &[i0, i1, i2, i3, i3 + 1]),
            [VALID, VALID, VALID, INVALID, INVALID],
            "the new chunk read, with the revocations in force"
        );

        // Revocations this broker applies reach the foreign list, at the
        // right index only, and also entries read later.
        other.revoke_job("deployer", "job-a");
        other.revoke_token(&t1);
        let (_, i4) = mint(&owner, &store, 4, "job-a", None).await;
        owner.flush(&store).await;
        revocations
            .jobs
            .push(("deployer".into(), "job-a".into(), NOW + 600));
        let revoked = served(&other, &keys, &store, &id, NOW + 2, &revocations)
            .await
            .unwrap();
        assert_eq!(
            at(&revoked, &[i0, i1, i2, i3, i4]),
            [INVALID, INVALID, VALID, INVALID, INVALID]
        );
        // The owner's list is untouched by what the other did.
        let own = served(&owner, &keys, &store, &id, NOW + 2, &revocations)
            .await
            .unwrap();
        assert_eq!(at(&own, &[i0, i1, i2, i4]), [VALID; 4]);

        // The other broker never writes the owner's list: after its flush
        // (and more of the owner's mints), a broker starting now reads the
        // owner's entries only.
        other.flush(&store).await;
        let (_, i5) = mint(&owner, &store, 5, "job-d", None).await;
        owner.flush(&store).await;
        let stored = store.status_list(&id, 0, NOW).await.unwrap().unwrap();
        let mut entries = Vec::new();
        read_chunks(&mut entries, &stored.chunks);
        assert_eq!(entries.len() as u64, i5 + 1);
        // Dropped with the owner's lists once every token has expired.
        let expired = owner.lists().iter().map(|l| l.expires_at()).max().unwrap();
        other.purge(expired);
        assert!(other.lists().iter().all(|l| l.id != id));
    }

    #[tokio::test]
    async fn an_unknown_id_is_not_asked_about_again_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let keys = keys(&store).await;
        let (_, other) = two_brokers(&store).await;
        let none = RevocationEntries::default();
        let id = "AAAAAAAAAAAAAAAA";
        assert!(plausible_id(id));
        assert!(
            served(&other, &keys, &store, id, NOW, &none)
                .await
                .is_none()
        );
        // The list appears in the store: the answer stays 404 without a
        // store read until the remembered answer is old.
        store
            .insert_status_list(id, NOW, NOW + 10_000, &[7; KEY_LEN])
            .await
            .unwrap();
        for now in [NOW, NOW + UNKNOWN_TTL_SECS - 1] {
            assert!(
                served(&other, &keys, &store, id, now, &none)
                    .await
                    .is_none(),
                "remembered as unknown at {now}"
            );
        }
        let got = served(&other, &keys, &store, id, NOW + UNKNOWN_TTL_SECS, &none)
            .await
            .expect("asked again");
        assert_eq!(got.get(0).unwrap(), INVALID, "no entry stored yet");

        // Ids that cannot be a list's are never looked up.
        for bad in ["short", "AAAAAAAAAAAAAAA!", "AAAAAAAAAAAAAAAAA"] {
            assert!(!plausible_id(bad), "{bad}");
            store
                .insert_status_list(bad, NOW, NOW + 10_000, &[7; KEY_LEN])
                .await
                .unwrap();
            assert!(
                served(&other, &keys, &store, bad, NOW, &none)
                    .await
                    .is_none()
            );
        }
        // The remembered answers are bounded, and purged.
        for n in 0..(MAX_UNKNOWN_IDS + 10) {
            other.remember_unknown(&format!("{n:0>16}"), NOW);
        }
        assert!(other.unknown.lock().unwrap().len() <= MAX_UNKNOWN_IDS);
        other.purge(NOW + UNKNOWN_TTL_SECS);
        assert!(other.unknown.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_lists_loaded_on_request_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        let keys = keys(&store).await;
        let (_, other) = two_brokers(&store).await;
        let none = RevocationEntries::default();
        let ids: Vec<String> = (0..MAX_FOREIGN_LISTS + 3)
            .map(|n| format!("{n:0>16}"))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            store
                .insert_status_list(id, NOW, NOW + 10_000, &[7; KEY_LEN])
                .await
                .unwrap();
            // Each read at its own second: the least recently read goes.
            let now = NOW + n as i64;
            assert!(
                served(&other, &keys, &store, id, now, &none)
                    .await
                    .is_some()
            );
        }
        let held: Vec<String> = other
            .lists()
            .iter()
            .filter(|l| l.on_request())
            .map(|l| l.id.clone())
            .collect();
        assert_eq!(held.len(), MAX_FOREIGN_LISTS);
        assert!(!held.contains(&ids[0]) && held.contains(&ids[ids.len() - 1]));
        // Its own list is kept.
        assert_eq!(other.lists().len(), MAX_FOREIGN_LISTS + 1);
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
