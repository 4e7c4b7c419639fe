//! One shard's sessions. The store owns the sessions and their keys, keeps
//! the shard's totals, and applies expiry lazily on every access, so a
//! session past its deadline is never visible, whatever background expiry
//! has or has not done yet.
//!
//! It knows nothing of connections, shards or the wire format; time comes in
//! as milliseconds on the caller's monotonic clock.

mod keymap;

use std::sync::Arc;

use ahash::AHashMap;

pub use keymap::KeyMap;

use crate::protocol::{ExpirySettings, KeyValue, Token};
use crate::shared_names::SharedNames;

/// Milliseconds on the server's monotonic clock.
pub type Millis = u64;

#[derive(Debug)]
pub struct Session {
    pub keys: KeyMap,
    /// Given at creation; registered server-wide when `shared`.
    pub name: Option<Box<str>>,
    pub shared: bool,
    pub expiry: Option<Expiry>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub settings: ExpirySettings,
    /// When the session (or its keys) expire; moved by sliding expiry.
    pub deadline: Millis,
}

impl Expiry {
    fn new(settings: ExpirySettings, now: Millis) -> Self {
        Expiry {
            settings,
            deadline: now + duration_ms(settings),
        }
    }

    /// Whole seconds left, rounded up, never negative.
    pub fn remaining_s(&self, now: Millis) -> u64 {
        self.deadline.saturating_sub(now).div_ceil(1000)
    }
}

fn duration_ms(settings: ExpirySettings) -> Millis {
    u64::from(settings.duration_s) * 1000
}

/// Why a session command found nothing to act on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NoSession;

/// Which access is happening, for sliding expiry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Get,
    SetAdd,
}

pub struct SessionStore {
    sessions: AHashMap<Token, Session>,
    /// Keys over all sessions here, kept so totals cost O(1).
    key_count: u64,
    names: Arc<SharedNames>,
}

impl SessionStore {
    pub fn new(names: Arc<SharedNames>) -> Self {
        SessionStore {
            sessions: AHashMap::new(),
            key_count: 0,
            names,
        }
    }

    /// Live sessions (may include expired ones not yet reached by expiry;
    /// use [`SessionStore::live_counts`] for what clients may see).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn contains_token(&self, tkn: Token) -> bool {
        self.sessions.contains_key(&tkn)
    }

    /// Creates a session under a token the caller minted. Shared names must
    /// already be registered by the caller.
    pub fn create(
        &mut self,
        tkn: Token,
        name: Option<Box<str>>,
        shared: bool,
        expiry: Option<ExpirySettings>,
        now: Millis,
    ) {
        let session = Session {
            keys: KeyMap::default(),
            name,
            shared,
            expiry: expiry.map(|e| Expiry::new(e, now)),
        };
        if let Some(old) = self.sessions.insert(tkn, session) {
            // Callers check for collisions first; keep totals right regardless.
            self.key_count -= old.keys.len() as u64;
        }
    }

    /// Applies an overdue expiry, then returns the session if it still lives.
    fn live(&mut self, tkn: Token, now: Millis, access: Access) -> Option<&mut Session> {
        let expired = match self.sessions.get(&tkn)?.expiry {
            Some(e) if now >= e.deadline => Some(e.settings),
            _ => None,
        };
        if let Some(settings) = expired {
            if settings.delete_session {
                self.remove(tkn);
                return None;
            }
            let session = self.sessions.get_mut(&tkn)?;
            self.key_count -= session.keys.clear() as u64;
            session.expiry = Some(Expiry::new(settings, now));
        }
        let session = self.sessions.get_mut(&tkn)?;
        if let Some(e) = &mut session.expiry {
            let extend = match access {
                Access::Read => false,
                Access::Get => e.settings.extend_on_get,
                Access::SetAdd => e.settings.extend_on_set_add,
            };
            if extend {
                e.deadline = now + duration_ms(e.settings);
            }
        }
        Some(session)
    }

    /// Removes a session and releases its shared name.
    fn remove(&mut self, tkn: Token) -> Option<Session> {
        let session = self.sessions.remove(&tkn)?;
        self.key_count -= session.keys.len() as u64;
        if session.shared
            && let Some(name) = &session.name
        {
            self.names.release(name, tkn);
        }
        Some(session)
    }

    pub fn exists(&mut self, tkn: Token, now: Millis) -> bool {
        self.live(tkn, now, Access::Read).is_some()
    }

    /// A session for reading (`SH_INFO`, `SH_COUNT`, `SH_KEYS`, `SH_CONTAINS`).
    pub fn read(&mut self, tkn: Token, now: Millis) -> Result<&Session, NoSession> {
        self.live(tkn, now, Access::Read)
            .map(|s| &*s)
            .ok_or(NoSession)
    }

    /// `SH_GET`: a read that may slide the deadline.
    pub fn get(&mut self, tkn: Token, now: Millis) -> Result<&Session, NoSession> {
        self.live(tkn, now, Access::Get)
            .map(|s| &*s)
            .ok_or(NoSession)
    }

    pub fn end(&mut self, tkn: Token, now: Millis) -> Result<(), NoSession> {
        self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        self.remove(tkn);
        Ok(())
    }

    /// Ends every session here; returns how many were live.
    pub fn end_all(&mut self, now: Millis) -> u64 {
        let tokens: Vec<Token> = self.sessions.keys().copied().collect();
        let mut ended = 0;
        for tkn in tokens {
            if self.live(tkn, now, Access::Read).is_some() {
                ended += 1;
            }
            self.remove(tkn);
        }
        ended
    }

    pub fn set(&mut self, tkn: Token, keys: Vec<KeyValue>, now: Millis) -> Result<(), NoSession> {
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        let mut added = 0;
        for (key, value) in keys {
            added += u64::from(session.keys.set(key, value));
        }
        self.key_count += added;
        Ok(())
    }

    pub fn add(&mut self, tkn: Token, keys: Vec<KeyValue>, now: Millis) -> Result<(), NoSession> {
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        let mut added = 0;
        for (key, value) in keys {
            added += u64::from(session.keys.add(key, value));
        }
        self.key_count += added;
        Ok(())
    }

    /// `SH_CLEAR_SET`: returns how many keys were removed before setting.
    pub fn clear_set(
        &mut self,
        tkn: Token,
        keys: Vec<KeyValue>,
        now: Millis,
    ) -> Result<usize, NoSession> {
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        let removed = session.keys.clear();
        for (key, value) in keys {
            session.keys.set(key, value);
        }
        let after = session.keys.len();
        self.key_count = self.key_count - removed as u64 + after as u64;
        Ok(removed)
    }

    pub fn remove_keys(
        &mut self,
        tkn: Token,
        keys: &[Box<str>],
        now: Millis,
    ) -> Result<(), NoSession> {
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let mut removed = 0;
        for key in keys {
            removed += u64::from(session.keys.remove(key));
        }
        self.key_count -= removed;
        Ok(())
    }

    /// `SH_CLEAR`: returns how many keys were removed.
    pub fn clear(&mut self, tkn: Token, now: Millis) -> Result<usize, NoSession> {
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let removed = session.keys.clear();
        self.key_count -= removed as u64;
        Ok(removed)
    }

    /// Sessions and keys that clients can see: expired ones are settled first.
    pub fn live_counts(&mut self, now: Millis) -> (u64, u64) {
        let overdue: Vec<Token> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expiry.is_some_and(|e| now >= e.deadline))
            .map(|(t, _)| *t)
            .collect();
        for tkn in overdue {
            self.live(tkn, now, Access::Read);
        }
        (self.sessions.len() as u64, self.key_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SessionStore {
        SessionStore::new(Arc::new(SharedNames::default()))
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        (k.into(), v.as_bytes().into())
    }

    fn expiry(duration_s: u32, delete_session: bool, on_set: bool, on_get: bool) -> ExpirySettings {
        ExpirySettings {
            duration_s,
            delete_session,
            extend_on_set_add: on_set,
            extend_on_get: on_get,
        }
    }

    #[test]
    fn keys_and_totals() {
        let mut s = store();
        s.create(1, None, false, None, 0);
        s.create(2, None, false, None, 0);
        s.set(1, vec![kv("a", "1"), kv("b", "2")], 0).unwrap();
        s.add(1, vec![kv("a", "9"), kv("c", "3")], 0).unwrap();
        s.set(2, vec![kv("a", "1")], 0).unwrap();
        assert_eq!(s.live_counts(0), (2, 4));
        assert_eq!(s.read(1, 0).unwrap().keys.get("a"), Some(&b"1"[..]));
        assert_eq!(s.clear_set(1, vec![kv("z", "0")], 0), Ok(3));
        assert_eq!(s.live_counts(0), (2, 2));
        s.remove_keys(2, &["a".into(), "nope".into()], 0).unwrap();
        assert_eq!(s.clear(1, 0), Ok(1));
        assert_eq!(s.live_counts(0), (2, 0));
        assert_eq!(s.set(3, vec![], 0), Err(NoSession));
        assert_eq!(s.end(2, 0), Ok(()));
        assert_eq!(s.end(2, 0), Err(NoSession));
        assert_eq!(s.end_all(0), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn expired_sessions_are_never_visible() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(2, true, false, false)), 0);
        s.set(1, vec![kv("a", "1")], 0).unwrap();
        assert!(s.exists(1, 1999));
        assert!(!s.exists(1, 2000));
        assert_eq!(s.live_counts(2000), (0, 0));
    }

    #[test]
    fn keys_only_expiry_keeps_the_session_with_a_fresh_deadline() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(2, false, false, false)), 0);
        s.set(1, vec![kv("a", "1")], 0).unwrap();
        let session = s.read(1, 2500).unwrap();
        assert!(session.keys.is_empty());
        assert_eq!(session.expiry.unwrap().deadline, 4500);
        assert_eq!(s.live_counts(2500), (1, 0));
    }

    #[test]
    fn sliding_expiry_follows_the_flags() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(2, true, false, true)), 0);
        s.create(2, None, false, Some(expiry(2, true, true, false)), 0);
        s.get(1, 1500).unwrap();
        s.read(1, 1600).unwrap();
        s.set(2, vec![kv("a", "1")], 1500).unwrap();
        s.get(2, 1600).unwrap();
        assert!(s.exists(1, 3400) && s.exists(2, 3400));
        assert!(!s.exists(1, 3500) && !s.exists(2, 3500));
        assert_eq!(s.read(1, 0).map(|_| ()), Err(NoSession));
    }

    #[test]
    fn remaining_is_whole_seconds_rounded_up() {
        let e = Expiry::new(expiry(10, false, false, false), 0);
        assert_eq!(e.remaining_s(0), 10);
        assert_eq!(e.remaining_s(1), 10);
        assert_eq!(e.remaining_s(9001), 1);
        assert_eq!(e.remaining_s(20000), 0);
    }

    #[test]
    fn deleting_a_shared_session_releases_its_name() {
        let names = Arc::new(SharedNames::default());
        let mut s = SessionStore::new(names.clone());
        assert!(names.register("n", 7));
        s.create(
            7,
            Some("n".into()),
            true,
            Some(expiry(1, true, false, false)),
            0,
        );
        assert_eq!(names.lookup("n"), Some(7));
        assert!(!s.exists(7, 1000));
        assert_eq!(names.lookup("n"), None);
    }
}
