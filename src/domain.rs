//! What a session is made of, apart from how it travels or is stored: the
//! types the wire format (`protocol`), the store (`store`) and the snapshot
//! files (`persist`) all speak. It depends on nothing else in the crate, so
//! none of those three depends on another through it.

/// A session token: 64 random bits chosen by the server, never 0 when minted.
pub type Token = u64;

/// A key name and its value as compact JSON text, stored as the client sent
/// it (minus whitespace).
pub type KeyValue = (Box<str>, Box<[u8]>);

/// How a session expires: `SH_NEW`'s `expiry` object. At least one of
/// `duration_s` and `max_lifetime_s` is set (an expiry with neither is no
/// expiry at all, and is never built).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ExpirySettings {
    /// Seconds from now (or from the last extending access) to the idle
    /// deadline; 0: no idle deadline, only the lifetime.
    pub duration_s: u32,
    /// At the deadline the session goes too, not only its keys.
    pub delete_session: bool,
    /// `SH_SET` / `SH_ADD` / `SH_CLEAR_SET` move the deadline on.
    pub extend_on_set_add: bool,
    /// `SH_GET` moves the deadline on.
    pub extend_on_get: bool,
    /// Seconds from creation to the session's end, whatever sliding does;
    /// 0: no lifetime.
    pub max_lifetime_s: u32,
}

impl ExpirySettings {
    /// Idle expiry only, as NemesisDB has it.
    pub fn idle(
        duration_s: u32,
        delete_session: bool,
        extend_on_set_add: bool,
        extend_on_get: bool,
    ) -> Self {
        ExpirySettings {
            duration_s,
            delete_session,
            extend_on_set_add,
            extend_on_get,
            max_lifetime_s: 0,
        }
    }
}

/// What a new session is to be: `SH_NEW`'s parameters.
#[derive(Debug, PartialEq)]
pub struct NewSession {
    pub name: Option<Box<str>>,
    /// Registered under `name` so other clients can `SH_OPEN` it.
    pub shared: bool,
    pub expiry: Option<ExpirySettings>,
    /// Who the session belongs to: its sessions can be listed and ended
    /// together, and they all live on one shard.
    pub owner: Option<Box<str>>,
    /// Keys set with the creation, as `SH_SET` would set them.
    pub keys: Vec<KeyValue>,
    /// `withVersion`: the answer carries the new session's version (1).
    pub report_version: bool,
}
