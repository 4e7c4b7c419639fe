//! What a session is made of, apart from how it travels or is stored: the
//! types the wire format (`protocol`), the store (`store`) and the snapshot
//! files (`persist`) all speak. It depends on nothing else in the crate, so
//! none of those three depends on another through it.

/// A session token: 64 random bits chosen by the server, never 0 when minted.
pub type Token = u64;

/// A key name and its value as compact JSON text, stored as the client sent
/// it (minus whitespace).
pub type KeyValue = (Box<str>, Box<[u8]>);

/// How a session expires: `SH_NEW`'s `expiry` object.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ExpirySettings {
    /// Seconds from now (or from the last extending access) to the deadline; >= 1.
    pub duration_s: u32,
    /// At the deadline the session goes too, not only its keys.
    pub delete_session: bool,
    /// `SH_SET` / `SH_ADD` / `SH_CLEAR_SET` move the deadline on.
    pub extend_on_set_add: bool,
    /// `SH_GET` moves the deadline on.
    pub extend_on_get: bool,
}

/// What a new session is to be: `SH_NEW`'s parameters.
#[derive(Debug, PartialEq)]
pub struct NewSession {
    pub name: Option<Box<str>>,
    /// Registered under `name` so other clients can `SH_OPEN` it.
    pub shared: bool,
    pub expiry: Option<ExpirySettings>,
}
