//! Signed-in sessions, kept in memory, and the sealed cookie that carries a
//! sign-in in progress.
//!
//! A session is 32 random bytes in a `__Host-` cookie; the console keeps
//! only their SHA-256, so a session id is never held (or logged) where a
//! lookup's timing could reveal it. Each session has its CSRF token, an
//! idle and an absolute deadline (counted on the broker's clock), and at
//! most one message for the next page (post/redirect/get).
//!
//! A sign-in in progress (its `state`, `nonce`, PKCE verifier and where to
//! go after) is sealed with AES-256-GCM under a key made when the console
//! starts, into a cookie of its own: starting sign-ins costs the console no
//! memory. A `state` that has come back once is remembered until its
//! sign-in would have expired, so a callback is never accepted twice.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use stint_server::operators::SignedIn;

/// The most sessions kept in all.
pub(crate) const MAX_SESSIONS: usize = 10_000;
/// The most sessions one operator may hold: signing in again past that
/// ends their oldest.
pub(crate) const MAX_SESSIONS_PER_OPERATOR: usize = 16;
/// How long a sign-in may take, from the redirect to the identity provider
/// to its callback, seconds.
pub(crate) const LOGIN_TTL_SECS: i64 = 600;
/// The most `state`s remembered as used.
const MAX_USED_STATES: usize = 100_000;
/// The longest sealed sign-in cookie accepted.
const MAX_LOGIN_COOKIE_LEN: usize = 2048;

/// Random bytes, base64url: session ids, CSRF tokens, `state`, `nonce`
/// and PKCE verifiers (RFC 7636: 32 octets give a 43-character verifier).
pub(crate) fn random_token(rng: &SystemRandom) -> Option<String> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

fn key_of(id: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// One signed-in operator's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) signed: SignedIn,
    pub(crate) csrf: String,
    pub(crate) created: i64,
    pub(crate) last_seen: i64,
    /// A message for the next page shown, and whether it reports an error.
    pub(crate) flash: Option<(String, bool)>,
}

/// Why no session was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// No such session (never, or signed out).
    Unknown,
    /// Idle for longer than the idle timeout.
    Idle,
    /// Older than the absolute timeout.
    Absolute,
}

/// The sessions.
#[derive(Debug)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: i64,
    absolute: i64,
}

impl Sessions {
    pub(crate) fn new(idle_secs: i64, absolute_secs: i64) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle: idle_secs,
            absolute: absolute_secs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, session: &Session, now: i64) -> Result<(), Ended> {
        if now >= session.created + self.absolute {
            Err(Ended::Absolute)
        } else if now >= session.last_seen + self.idle {
            Err(Ended::Idle)
        } else {
            Ok(())
        }
    }

    /// A new session for `signed`; its id (for the cookie), or `None` if
    /// the console holds as many sessions as it may.
    pub(crate) fn create(&self, signed: SignedIn, now: i64, rng: &SystemRandom) -> Option<String> {
        let id = random_token(rng)?;
        let csrf = random_token(rng)?;
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| self.live(s, now).is_ok());
            if map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        // An operator's oldest sessions end past their share.
        let mut theirs: Vec<([u8; 32], i64)> = map
            .iter()
            .filter(|(_, s)| s.signed.operator == signed.operator)
            .map(|(k, s)| (*k, s.created))
            .collect();
        if theirs.len() >= MAX_SESSIONS_PER_OPERATOR {
            theirs.sort_by_key(|(_, created)| *created);
            for (key, _) in theirs
                .iter()
                .take(theirs.len() + 1 - MAX_SESSIONS_PER_OPERATOR)
            {
                map.remove(key);
            }
        }
        map.insert(
            key_of(&id),
            Session {
                signed,
                csrf,
                created: now,
                last_seen: now,
                flash: None,
            },
        );
        Some(id)
    }

    /// The session `id` names, touched (its idle deadline moves), with its
    /// message for this page taken. A session past a deadline is ended.
    pub(crate) fn touch(&self, id: &str, now: i64) -> Result<Session, Ended> {
        let key = key_of(id);
        let mut map = self.lock();
        let session = map.get_mut(&key).ok_or(Ended::Unknown)?;
        if let Err(ended) = self.live(session, now) {
            map.remove(&key);
            return Err(ended);
        }
        session.last_seen = now;
        let shown = session.clone();
        session.flash = None;
        Ok(shown)
    }

    /// Leave a message for the next page of session `id`.
    pub(crate) fn flash(&self, id: &str, message: String, error: bool) {
        if let Some(session) = self.lock().get_mut(&key_of(id)) {
            session.flash = Some((message, error));
        }
    }

    /// End session `id` (sign-out).
    pub(crate) fn end(&self, id: &str) {
        self.lock().remove(&key_of(id));
    }

    /// Sessions held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A sign-in in progress, as sealed in its cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Login {
    pub(crate) state: String,
    pub(crate) nonce: String,
    pub(crate) verifier: String,
    /// Where to go once signed in: a path of the console.
    pub(crate) return_to: String,
    /// When it began, seconds since the epoch.
    pub(crate) started: i64,
}

/// Seals and opens sign-in cookies, and remembers the `state`s used.
pub(crate) struct Logins {
    key: LessSafeKey,
    used: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins").finish_non_exhaustive()
    }
}

/// Why a callback's sign-in is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LoginError {
    #[error("no sign-in was started in this browser, or it was started by another console")]
    NoCookie,
    #[error("the sign-in took longer than 10 minutes; sign in again")]
    TooOld,
    #[error("the state does not match the sign-in this browser started")]
    StateMismatch,
    #[error("this sign-in has already come back once")]
    Replayed,
}

impl Logins {
    pub(crate) fn new(rng: &SystemRandom) -> Option<Self> {
        let mut key = [0u8; 32];
        rng.fill(&mut key).ok()?;
        let key = UnboundKey::new(&AES_256_GCM, &key).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            used: Mutex::new(HashMap::new()),
        })
    }

    /// `login`, sealed for its cookie.
    pub(crate) fn seal(&self, login: &Login, rng: &SystemRandom) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).ok()?;
        let mut sealed = serde_json::to_vec(login).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"stint-console-login"),
                &mut sealed,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    fn open(&self, cookie: &str) -> Option<Login> {
        if cookie.len() > MAX_LOGIN_COOKIE_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(b"stint-console-login"), &mut sealed)
            .ok()?;
        serde_json::from_slice(opened).ok()
    }

    /// The sign-in the cookie carries, if `state` is its state, it is
    /// recent, and it has not come back before (it never will again).
    pub(crate) fn take(
        &self,
        cookie: Option<&str>,
        state: &str,
        now: i64,
    ) -> Result<Login, LoginError> {
        let login = cookie
            .and_then(|c| self.open(c))
            .ok_or(LoginError::NoCookie)?;
        if !stint_core::secret::constant_time_eq(login.state.as_bytes(), state.as_bytes()) {
            return Err(LoginError::StateMismatch);
        }
        if now < login.started || now >= login.started + LOGIN_TTL_SECS {
            return Err(LoginError::TooOld);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() >= MAX_USED_STATES {
            used.retain(|_, until| *until > now);
            if used.len() >= MAX_USED_STATES {
                // Full of recent ones (someone is starting and abandoning
                // sign-ins): forget the older half rather than refuse
                // everyone. A state forgotten early is still safe to
                // replay against: its code was traded once already (the
                // provider refuses it again), and the verifier to trade it
                // is only in that browser's cookie.
                let mut ages: Vec<i64> = used.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                used.retain(|_, until| *until > cut);
            }
        }
        if used.contains_key(&login.state) {
            return Err(LoginError::Replayed);
        }
        used.insert(login.state.clone(), login.started + LOGIN_TTL_SECS);
        Ok(login)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(operator: &str) -> SignedIn {
        SignedIn {
            operator: operator.into(),
            issuer: "corp".into(),
            subject: format!("sub-{operator}"),
            claim_groups: Vec::new(),
            claim_groups_until: 0,
            issuer_url: "https://idp.test".into(),
        }
    }

    #[test]
    fn sessions_end_when_idle_or_old_and_on_sign_out() {
        let rng = SystemRandom::new();
        let sessions = Sessions::new(60, 300);
        let id = sessions.create(signed("alice"), 1000, &rng).unwrap();
        assert!(sessions.touch(&id, 1059).is_ok());
        // Touched at 1059: idle until 1119.
        assert!(sessions.touch(&id, 1118).is_ok());
        assert_eq!(sessions.touch(&id, 1178).unwrap_err(), Ended::Idle);
        assert_eq!(sessions.touch(&id, 1178).unwrap_err(), Ended::Unknown);

        let id = sessions.create(signed("alice"), 2000, &rng).unwrap();
        for t in (2050..2300).step_by(50) {
            assert!(sessions.touch(&id, t).is_ok());
        }
        assert_eq!(sessions.touch(&id, 2300).unwrap_err(), Ended::Absolute);

        let id = sessions.create(signed("alice"), 3000, &rng).unwrap();
        sessions.end(&id);
        assert_eq!(sessions.touch(&id, 3001).unwrap_err(), Ended::Unknown);
        assert_eq!(
            sessions.touch("not-a-session", 3001).unwrap_err(),
            Ended::Unknown
        );
    }

    #[test]
    fn an_operator_keeps_only_their_newest_sessions() {
        let rng = SystemRandom::new();
        let sessions = Sessions::new(600, 6000);
        let ids: Vec<String> = (0..MAX_SESSIONS_PER_OPERATOR + 2)
            .map(|i| {
                sessions
                    .create(signed("alice"), 100 + i as i64, &rng)
                    .unwrap()
            })
            .collect();
        let bob = sessions.create(signed("bob"), 100, &rng).unwrap();
        assert!(sessions.touch(&ids[0], 200).is_err());
        assert!(sessions.touch(&ids[1], 200).is_err());
        assert!(sessions.touch(&ids[2], 200).is_ok());
        assert!(sessions.touch(&bob, 200).is_ok());
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_OPERATOR + 1);
    }

    #[test]
    fn flash_is_shown_once() {
        let rng = SystemRandom::new();
        let sessions = Sessions::new(600, 6000);
        let id = sessions.create(signed("alice"), 0, &rng).unwrap();
        sessions.flash(&id, "approved".into(), false);
        assert_eq!(
            sessions.touch(&id, 1).unwrap().flash,
            Some(("approved".into(), false))
        );
        assert_eq!(sessions.touch(&id, 2).unwrap().flash, None);
    }

    #[test]
    fn a_full_set_of_used_states_forgets_the_oldest_not_everyone() {
        let rng = SystemRandom::new();
        let logins = Logins::new(&rng).unwrap();
        {
            let mut used = logins.used.lock().unwrap();
            for i in 0..MAX_USED_STATES {
                used.insert(format!("s{i}"), 2000 + (i as i64 % 500));
            }
        }
        let login = Login {
            state: "fresh".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            return_to: "/approvals".into(),
            started: 1000,
        };
        let cookie = logins.seal(&login, &rng).unwrap();
        assert_eq!(logins.take(Some(&cookie), "fresh", 1001).unwrap(), login);
        assert!(logins.used.lock().unwrap().len() <= MAX_USED_STATES / 2 + 1);
        assert_eq!(
            logins.take(Some(&cookie), "fresh", 1002).unwrap_err(),
            LoginError::Replayed
        );
    }

    #[test]
    fn a_login_comes_back_once_with_its_state_in_time() {
        let rng = SystemRandom::new();
        let logins = Logins::new(&rng).unwrap();
        let login = Login {
            state: "st".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            return_to: "/approvals".into(),
            started: 1000,
        };
        let cookie = logins.seal(&login, &rng).unwrap();
        assert_eq!(
            logins.take(Some(&cookie), "other", 1001).unwrap_err(),
            LoginError::StateMismatch
        );
        assert_eq!(
            logins
                .take(Some(&cookie), "st", 1000 + LOGIN_TTL_SECS)
                .unwrap_err(),
            LoginError::TooOld
        );
        assert_eq!(logins.take(Some(&cookie), "st", 1001).unwrap(), login);
        assert_eq!(
            logins.take(Some(&cookie), "st", 1002).unwrap_err(),
            LoginError::Replayed
        );
        assert_eq!(
            logins.take(None, "st", 1002).unwrap_err(),
            LoginError::NoCookie
        );
        // A cookie sealed by another console (another key), or altered.
        let other = Logins::new(&rng).unwrap().seal(&login, &rng).unwrap();
        assert_eq!(
            logins.take(Some(&other), "st", 1001).unwrap_err(),
            LoginError::NoCookie
        );
        let mut altered = cookie.into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            logins.take(Some(&altered), "st", 1001).unwrap_err(),
            LoginError::NoCookie
        );
    }
}
