//! Every response body the server sends, one function each: the field
//! names of docs/PROTOCOL.md live here and nowhere else. Callers pass plain
//! facts (counts, tokens, names); the functions append one response to `out`.
//!
//! A `version: Option<u64>` is the session's version when the request asked
//! for it (`withVersion`, or a write given `ifVersion`): it ends the body.

use super::{CommandName, Response, Status};
use crate::domain::{ExpirySettings, Token};

/// `{"<CMD>_RSP":{"st":1,"tkn":T}}`: a write that has nothing else to say.
pub fn done(out: &mut Vec<u8>, command: CommandName, tkn: Token, version: Option<u64>) {
    Response::new(out, command, Status::Ok)
        .u64("tkn", tkn)
        .opt_u64("version", version)
        .finish();
}

/// A success that reports how many keys it counted or removed (`cnt`).
pub fn counted(
    out: &mut Vec<u8>,
    command: CommandName,
    tkn: Token,
    cnt: u64,
    version: Option<u64>,
) {
    Response::new(out, command, Status::Ok)
        .u64("tkn", tkn)
        .u64("cnt", cnt)
        .opt_u64("version", version)
        .finish();
}

/// `{"st":104,"tkn":T,"version":V}`: `ifVersion` did not match; nothing
/// changed.
pub fn version_mismatch(out: &mut Vec<u8>, command: CommandName, tkn: Token, version: u64) {
    Response::new(out, command, Status::VersionMismatch)
        .u64("tkn", tkn)
        .u64("version", version)
        .finish();
}

/// `SH_INCR`: the key and its new value.
pub fn incremented(out: &mut Vec<u8>, tkn: Token, key: &str, value: i64, version: Option<u64>) {
    Response::new(out, CommandName::Incr, Status::Ok)
        .u64("tkn", tkn)
        .str("key", key)
        .i64("value", value)
        .opt_u64("version", version)
        .finish();
}

/// `SH_NEW`: the new session's token, and its name if it has one.
pub fn created(out: &mut Vec<u8>, tkn: Token, name: Option<&str>, version: Option<u64>) {
    Response::new(out, CommandName::New, Status::Ok)
        .u64("tkn", tkn)
        .opt_str("name", name)
        .opt_u64("version", version)
        .finish();
}

/// `SH_OPEN`: the token of the shared session `name`.
pub fn opened(out: &mut Vec<u8>, tkn: Token, name: &str, version: Option<u64>) {
    Response::new(out, CommandName::Open, Status::Ok)
        .u64("tkn", tkn)
        .str("name", name)
        .opt_u64("version", version)
        .finish();
}

/// What `SH_INFO` reports about one session.
pub struct SessionInfo<'a> {
    pub name: Option<&'a str>,
    pub shared: bool,
    pub owner: Option<&'a str>,
    pub key_count: u64,
    pub expiry: Option<ExpiryInfo>,
}

/// A session's expiry as `SH_INFO` shows it.
pub struct ExpiryInfo {
    /// With `max_lifetime_s` (0: no lifetime).
    pub settings: ExpirySettings,
    /// Whole seconds left until the next deadline (idle or lifetime).
    pub remaining_s: u64,
    /// Whole seconds left until the lifetime's end, when it has one.
    pub lifetime_remaining_s: u64,
}

pub fn session_info(out: &mut Vec<u8>, tkn: Token, info: &SessionInfo<'_>, version: Option<u64>) {
    let mut r = Response::new(out, CommandName::Info, Status::Ok)
        .u64("tkn", tkn)
        .opt_str("name", info.name)
        .bool("shared", info.shared)
        .opt_str("owner", info.owner)
        .u64("keyCnt", info.key_count)
        .bool("expires", info.expiry.is_some());
    if let Some(e) = &info.expiry {
        let settings = e.settings;
        r = r
            .begin_object("expiry")
            .u64("duration", u64::from(settings.duration_s))
            .u64("remaining", e.remaining_s)
            .bool("deleteSession", settings.delete_session)
            .bool("extendOnSetAdd", settings.extend_on_set_add)
            .bool("extendOnGet", settings.extend_on_get);
        if settings.max_lifetime_s > 0 {
            r = r
                .u64("maxLifetime", u64::from(settings.max_lifetime_s))
                .u64("lifetimeRemaining", e.lifetime_remaining_s);
        }
        r = r.end_object();
    }
    r.opt_u64("version", version).finish();
}

/// `SH_GET`: the keys found, each with its stored JSON value.
#[inline]
pub fn values<'s>(
    out: &mut Vec<u8>,
    tkn: Token,
    found: impl IntoIterator<Item = (&'s str, &'s [u8])>,
    version: Option<u64>,
) {
    Response::new(out, CommandName::Get, Status::Ok)
        .u64("tkn", tkn)
        .raw_object("keys", found)
        .opt_u64("version", version)
        .finish();
}

/// `SH_CONTAINS`: the asked-for keys the session holds.
pub fn contained<'s>(
    out: &mut Vec<u8>,
    tkn: Token,
    found: impl IntoIterator<Item = &'s str>,
    version: Option<u64>,
) {
    Response::new(out, CommandName::Contains, Status::Ok)
        .u64("tkn", tkn)
        .str_array("contains", found)
        .opt_u64("version", version)
        .finish();
}

/// `SH_KEYS`: every key name of the session.
pub fn key_names<'s>(
    out: &mut Vec<u8>,
    tkn: Token,
    names: impl IntoIterator<Item = &'s str>,
    version: Option<u64>,
) {
    Response::new(out, CommandName::Keys, Status::Ok)
        .u64("tkn", tkn)
        .str_array("keys", names)
        .opt_u64("version", version)
        .finish();
}

/// `SH_TOUCH`: milliseconds to the next deadline, -1 when it never expires.
pub fn touched(out: &mut Vec<u8>, tkn: Token, ttl_ms: i64, version: Option<u64>) {
    Response::new(out, CommandName::Touch, Status::Ok)
        .u64("tkn", tkn)
        .i64("ttlMs", ttl_ms)
        .opt_u64("version", version)
        .finish();
}

/// `SH_OWNER_SESSIONS`: the owner's live sessions, oldest first.
pub fn owner_sessions(out: &mut Vec<u8>, owner: &str, tkns: impl IntoIterator<Item = Token>) {
    Response::new(out, CommandName::OwnerSessions, Status::Ok)
        .str("owner", owner)
        .u64_array("tkns", tkns)
        .finish();
}

/// `SH_OWNER_END`: how many of the owner's sessions ended.
pub fn owner_ended(out: &mut Vec<u8>, owner: &str, cnt: u64) {
    Response::new(out, CommandName::OwnerEnd, Status::Ok)
        .str("owner", owner)
        .u64("cnt", cnt)
        .finish();
}

/// `SH_SUBSCRIBE`: where delivery starts; with `lost` (-1: unknown) when a
/// resumed subscription missed events (160).
pub fn subscribed(out: &mut Vec<u8>, cursor: &str, lost: Option<i64>) {
    let status = if lost.is_some() {
        Status::EventsLost
    } else {
        Status::Ok
    };
    let r = Response::new(out, CommandName::Subscribe, status).str("cursor", cursor);
    match lost {
        Some(lost) => r.i64("lost", lost),
        None => r,
    }
    .finish();
}

/// `SH_UNSUBSCRIBE`.
pub fn unsubscribed(out: &mut Vec<u8>) {
    Response::new(out, CommandName::Unsubscribe, Status::Ok).finish();
}

/// `SV_AUTH` succeeded: who the connection is now.
pub fn authenticated(out: &mut Vec<u8>, user: &str, role: &str) {
    Response::new(out, CommandName::Auth, Status::Ok)
        .str("user", user)
        .str("role", role)
        .finish();
}

/// `SH_END_ALL`: how many sessions ended.
pub fn ended_all(out: &mut Vec<u8>, cnt: u64) {
    Response::new(out, CommandName::EndAll, Status::Ok)
        .u64("cnt", cnt)
        .finish();
}

/// `SH_INFO_ALL`: live sessions and keys over every shard.
pub fn totals(out: &mut Vec<u8>, sessions: u64, keys: u64) {
    Response::new(out, CommandName::InfoAll, Status::Ok)
        .u64("totalSessions", sessions)
        .u64("totalKeys", keys)
        .finish();
}

/// `SH_EXISTS`: the tokens that exist, in request order.
pub fn existing(out: &mut Vec<u8>, tkns: impl IntoIterator<Item = Token>) {
    Response::new(out, CommandName::Exists, Status::Ok)
        .u64_array("exist", tkns)
        .finish();
}

/// What `SV_INFO` reports.
pub struct ServerInfo {
    pub persist_enabled: bool,
    pub shards: u64,
    pub sessions: u64,
    pub keys: u64,
    pub connections: u64,
    pub uptime_s: u64,
    pub memory_used: u64,
    pub max_memory: u64,
    pub session_not_exist: u64,
}

pub fn server_info(out: &mut Vec<u8>, info: &ServerInfo) {
    Response::new(out, CommandName::ServerInfo, Status::Ok)
        .str("serverVersion", env!("CARGO_PKG_VERSION"))
        .bool("persistEnabled", info.persist_enabled)
        .u64("shards", info.shards)
        .u64("sessions", info.sessions)
        .u64("keys", info.keys)
        .u64("connections", info.connections)
        .u64("uptimeSeconds", info.uptime_s)
        .u64("memoryUsed", info.memory_used)
        .u64("maxMemory", info.max_memory)
        .u64("sessionNotExist", info.session_not_exist)
        .finish();
}

/// `SH_SAVE` committed: 121.
pub fn saved(out: &mut Vec<u8>, name: &str, duration_ms: u64, sessions: u64, keys: u64) {
    Response::new(out, CommandName::Save, Status::SaveComplete)
        .str("name", name)
        .u64("duration", duration_ms)
        .u64("sessions", sessions)
        .u64("keys", keys)
        .finish();
}

/// `SH_SAVE` or `SH_LOAD` failed (122, 123, 142): the dataset and why.
pub fn persist_failed(
    out: &mut Vec<u8>,
    command: CommandName,
    status: Status,
    name: &str,
    why: &str,
) {
    Response::new(out, command, status)
        .str("name", name)
        .str("m", why)
        .finish();
}

/// `SH_LOAD` done: 141.
pub fn loaded(out: &mut Vec<u8>, name: &str, sessions: u64, keys: u64) {
    Response::new(out, CommandName::Load, Status::LoadComplete)
        .str("name", name)
        .u64("sessions", sessions)
        .u64("keys", keys)
        .finish();
}
