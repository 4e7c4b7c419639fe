//! Runs a session command against the owning shard's store and encodes its
//! response. Only commands about one session (by token or shared name) come
//! here; the router has already sent them to the shard that owns it.

use ahash::AHashSet;

use crate::domain::{NewSession, Token};
use crate::protocol::answer::{self, ExpiryInfo, SessionInfo};
use crate::protocol::{Command, CommandName, Status, Versioning, encode_status};
use crate::shared_names::SharedNames;
use crate::store::{Millis, Refusal, SessionStore};

const MEMORY_FULL: &str = "the server is at its memory limit; nothing was changed";

/// `SH_NEW`. `mint` draws candidate tokens from a CSPRNG (only tokens this
/// shard owns); 0 and tokens in use are skipped here.
pub fn new_session(
    store: &mut SessionStore,
    names: &SharedNames,
    mut mint: impl FnMut() -> Token,
    new: NewSession,
    now: Millis,
    out: &mut Vec<u8>,
) -> Status {
    if !store.can_create_session(&new) {
        encode_status(
            out,
            CommandName::New,
            Status::MemoryLimit,
            None,
            Some(MEMORY_FULL),
        );
        return Status::MemoryLimit;
    }
    let tkn = loop {
        let tkn = mint();
        if tkn != 0 && !store.contains_token(tkn) {
            break tkn;
        }
    };
    if new.shared {
        let registered = new.name.as_deref().is_some_and(|name| {
            names.register(name, tkn)
                || release_if_expired(store, names, name, now) && names.register(name, tkn)
        });
        if !registered {
            let m = "a shared session with this name exists";
            encode_status(out, CommandName::New, Status::SessionNewFail, None, Some(m));
            return Status::SessionNewFail;
        }
    }
    // A new session's version is 1.
    let version = new.report_version.then_some(1);
    answer::created(out, tkn, new.name.as_deref(), version);
    store.create_session(tkn, new, now);
    Status::Ok
}

/// A shared name whose session (on this shard) is past its deadline but not
/// collected yet is free: settle that session and say whether it went.
/// (On another shard, background expiry releases it within a turn.)
fn release_if_expired(
    store: &mut SessionStore,
    names: &SharedNames,
    name: &str,
    now: Millis,
) -> bool {
    match names.lookup(name) {
        Some(holder) if store.contains_token(holder) => !store.exists(holder, now),
        _ => false,
    }
}

/// `SH_OPEN`, on the shard that owns the named session: checked here so
/// an expired session is never handed out even before its name is released.
pub fn open_session(
    store: &mut SessionStore,
    names: &SharedNames,
    name: &str,
    report_version: bool,
    now: Millis,
    out: &mut Vec<u8>,
) -> Status {
    match names
        .lookup(name)
        .and_then(|tkn| Some((tkn, store.version(tkn, now)?)))
    {
        Some((tkn, version)) => {
            answer::opened(out, tkn, name, report_version.then_some(version));
            Status::Ok
        }
        _ => {
            encode_status(out, CommandName::Open, Status::SessionOpenFail, None, None);
            Status::SessionOpenFail
        }
    }
}

/// Runs `command`, appends its response to `out`, and returns its status.
pub fn run(store: &mut SessionStore, command: Command, now: Millis, out: &mut Vec<u8>) -> Status {
    let name = command.kind();
    let Some(tkn) = command.token() else {
        // Only token commands are routed here; anything else is a bug, and
        // the client still gets an answer in its slot.
        encode_status(out, name, Status::Unknown, None, Some("misrouted command"));
        return Status::Unknown;
    };
    match execute(store, command, tkn, now, out) {
        Ok(status) => status,
        Err(Refusal::NoSession) => {
            encode_status(out, name, Status::SessionNotExist, Some(tkn), None);
            Status::SessionNotExist
        }
        Err(Refusal::MemoryLimit) => {
            encode_status(out, name, Status::MemoryLimit, Some(tkn), Some(MEMORY_FULL));
            Status::MemoryLimit
        }
        Err(Refusal::NotInteger) => {
            let m = "the value is not a JSON integer within the signed 64-bit range";
            encode_status(out, name, Status::ValueNotInteger, Some(tkn), Some(m));
            Status::ValueNotInteger
        }
        Err(Refusal::Overflow) => {
            let m = "the result would leave the signed 64-bit range";
            encode_status(out, name, Status::IntegerOverflow, Some(tkn), Some(m));
            Status::IntegerOverflow
        }
        Err(Refusal::VersionMismatch(version)) => {
            answer::version_mismatch(out, name, tkn, version);
            Status::VersionMismatch
        }
    }
}

/// Runs a command about session `tkn`; when it ran, its answer is in `out`;
/// on a refusal nothing was written (nor changed).
fn execute(
    store: &mut SessionStore,
    command: Command,
    tkn: Token,
    now: Millis,
    out: &mut Vec<u8>,
) -> Result<Status, Refusal> {
    let name = command.kind();
    match command {
        Command::End { .. } => store
            .end(tkn, now)
            .map(|()| answer::done(out, name, tkn, None))
            .map(|()| Status::Ok),
        Command::Info { v, .. } => {
            let version = read_version(store, tkn, v, now)?;
            let (session, extras) = store.read_with_extras(tkn, now)?;
            let lifetime_end = extras.filter(|x| x.has_lifetime()).map(|x| x.lifetime_end);
            let info = SessionInfo {
                name: session.name(),
                shared: session.shared(),
                owner: extras.and_then(|x| x.owner.as_deref()),
                key_count: session.keys.len() as u64,
                expiry: session.expiry().map(|e| {
                    let mut settings = e.settings;
                    settings.max_lifetime_s = extras.map_or(0, |x| x.max_lifetime_s);
                    ExpiryInfo {
                        settings,
                        remaining_s: e.remaining_s(now),
                        lifetime_remaining_s: lifetime_end
                            .map_or(0, |end| end.saturating_sub(now).div_ceil(1000)),
                    }
                }),
            };
            answer::session_info(out, tkn, &info, version);
            Ok(Status::Ok)
        }
        Command::Touch { slide, v, .. } => {
            let version = read_version(store, tkn, v, now)?;
            let ttl_ms = store.touch(tkn, slide, now)?;
            answer::touched(out, tkn, ttl_ms, version);
            Ok(Status::Ok)
        }
        Command::Get { keys, v, .. } => {
            let version = read_version(store, tkn, v, now)?;
            let session = store.get(tkn, now)?;
            let found = distinct(&keys).filter_map(|k| session.keys.get(k).map(|v| (k, v)));
            answer::values(out, tkn, found, version);
            Ok(Status::Ok)
        }
        Command::Contains { keys, v, .. } => {
            let version = read_version(store, tkn, v, now)?;
            let session = store.read(tkn, now)?;
            let found = keys
                .iter()
                .map(|k| k.as_ref())
                .filter(|k| session.keys.contains(k));
            answer::contained(out, tkn, found, version);
            Ok(Status::Ok)
        }
        Command::Count { v, .. } => {
            let version = read_version(store, tkn, v, now)?;
            let cnt = store.read(tkn, now)?.keys.len() as u64;
            answer::counted(out, name, tkn, cnt, version);
            Ok(Status::Ok)
        }
        Command::Keys { v, .. } => {
            let version = read_version(store, tkn, v, now)?;
            let session = store.read(tkn, now)?;
            answer::key_names(out, tkn, session.keys.iter().map(|(k, _)| k), version);
            Ok(Status::Ok)
        }
        Command::Set { keys, v, .. } => {
            check_version(store, tkn, v, now)?;
            store.set(tkn, keys, now)?;
            answer::done(out, name, tkn, written_version(store, tkn, v, now));
            Ok(Status::Ok)
        }
        Command::Add { keys, v, .. } => {
            check_version(store, tkn, v, now)?;
            store.add(tkn, keys, now)?;
            answer::done(out, name, tkn, written_version(store, tkn, v, now));
            Ok(Status::Ok)
        }
        Command::Rmv { keys, v, .. } => {
            check_version(store, tkn, v, now)?;
            store.remove_keys(tkn, &keys, now)?;
            answer::done(out, name, tkn, written_version(store, tkn, v, now));
            Ok(Status::Ok)
        }
        Command::ClearSet { keys, v, .. } => {
            check_version(store, tkn, v, now)?;
            let removed = store.clear_set(tkn, keys, now)?;
            let version = written_version(store, tkn, v, now);
            answer::counted(out, name, tkn, removed as u64, version);
            Ok(Status::Ok)
        }
        Command::Clear { v, .. } => {
            check_version(store, tkn, v, now)?;
            let removed = store.clear(tkn, now)?;
            let version = written_version(store, tkn, v, now);
            answer::counted(out, name, tkn, removed as u64, version);
            Ok(Status::Ok)
        }
        Command::Incr { key, by, v, .. } => {
            check_version(store, tkn, v, now)?;
            let value = store.incr(tkn, &key, by, now)?;
            let version = written_version(store, tkn, v, now);
            answer::incremented(out, tkn, &key, value, version);
            Ok(Status::Ok)
        }
        _ => {
            encode_status(
                out,
                name,
                Status::Unknown,
                Some(tkn),
                Some("misrouted command"),
            );
            Ok(Status::Unknown)
        }
    }
}

/// The version a read answers with, when asked. Reads never change it, so
/// it is taken before the read (whose answer borrows the store).
fn read_version(
    store: &mut SessionStore,
    tkn: Token,
    v: Versioning,
    now: Millis,
) -> Result<Option<u64>, Refusal> {
    if !v.report {
        return Ok(None);
    }
    store.version(tkn, now).map(Some).ok_or(Refusal::NoSession)
}

/// `ifVersion`: the write runs only on that version. Checked in the same
/// turn as the write, on the shard that owns the session: nothing can come
/// between the two.
fn check_version(
    store: &mut SessionStore,
    tkn: Token,
    v: Versioning,
    now: Millis,
) -> Result<(), Refusal> {
    let Some(expected) = v.expect else {
        return Ok(());
    };
    match store.version(tkn, now) {
        None => Err(Refusal::NoSession),
        Some(current) if current != expected => Err(Refusal::VersionMismatch(current)),
        Some(_) => Ok(()),
    }
}

/// The version a write answers with: the new one, when asked for or when
/// the write was conditional.
fn written_version(
    store: &mut SessionStore,
    tkn: Token,
    v: Versioning,
    now: Millis,
) -> Option<u64> {
    if v.answered() {
        store.version(tkn, now)
    } else {
        None
    }
}

/// The names in `keys` without repeats, first occurrence first: a response
/// object must not hold the same member twice. Requests name a few keys:
/// up to `SCAN_MAX` a scan of the earlier names beats hashing (and needs
/// no allocation on every `SH_GET`).
fn distinct(keys: &[Box<str>]) -> impl Iterator<Item = &str> {
    const SCAN_MAX: usize = 16;
    let mut seen: Option<AHashSet<&str>> =
        (keys.len() > SCAN_MAX).then(|| AHashSet::with_capacity(keys.len()));
    keys.iter().enumerate().filter_map(move |(i, k)| {
        let first = match &mut seen {
            Some(seen) => seen.insert(k.as_ref()),
            None => !keys[..i].contains(k),
        };
        first.then_some(k.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::shared_names::SharedNames;

    fn run_text(store: &mut SessionStore, request: &str, now: Millis) -> String {
        let command = crate::protocol::parse_request(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        run(store, command, now, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_commands_answer_as_the_protocol_says() {
        let mut store = SessionStore::new(Arc::new(SharedNames::default()));
        store.create(9, Some("n".into()), false, None, 0);
        let r = |s: &mut SessionStore, q: &str| run_text(s, q, 0);
        assert_eq!(
            r(
                &mut store,
                r#"{"SH_SET":{"tkn":9,"keys":{"a":1,"b":{"c":[true,null]}}}}"#
            ),
            r#"{"SH_SET_RSP":{"st":1,"tkn":9}}"#
        );
        assert_eq!(
            r(
                &mut store,
                r#"{"SH_GET":{"tkn":"9","keys":["b","zz","a","b"]}}"#
            ),
            r#"{"SH_GET_RSP":{"st":1,"tkn":9,"keys":{"b":{"c":[true,null]},"a":1}}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_ADD":{"tkn":9,"keys":{"a":2,"d":"x"}}}"#),
            r#"{"SH_ADD_RSP":{"st":1,"tkn":9}}"#
        );
        assert_eq!(
            r(
                &mut store,
                r#"{"SH_CONTAINS":{"tkn":9,"keys":["d","q","a"]}}"#
            ),
            r#"{"SH_CONTAINS_RSP":{"st":1,"tkn":9,"contains":["d","a"]}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_COUNT":{"tkn":9}}"#),
            r#"{"SH_COUNT_RSP":{"st":1,"tkn":9,"cnt":3}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_KEYS":{"tkn":9}}"#),
            r#"{"SH_KEYS_RSP":{"st":1,"tkn":9,"keys":["a","b","d"]}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_RMV":{"tkn":9,"keys":["a"]}}"#),
            r#"{"SH_RMV_RSP":{"st":1,"tkn":9}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_CLEAR_SET":{"tkn":9,"keys":{"z":0}}}"#),
            r#"{"SH_CLEAR_SET_RSP":{"st":1,"tkn":9,"cnt":2}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_INFO":{"tkn":9}}"#),
            r#"{"SH_INFO_RSP":{"st":1,"tkn":9,"name":"n","shared":false,"keyCnt":1,"expires":false}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_CLEAR":{"tkn":9}}"#),
            r#"{"SH_CLEAR_RSP":{"st":1,"tkn":9,"cnt":1}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_END":{"tkn":9}}"#),
            r#"{"SH_END_RSP":{"st":1,"tkn":9}}"#
        );
        assert_eq!(
            r(&mut store, r#"{"SH_GET":{"tkn":9,"keys":["a"]}}"#),
            r#"{"SH_GET_RSP":{"st":100,"tkn":9}}"#
        );
    }

    #[test]
    fn distinct_keeps_first_occurrences_at_any_size() {
        let few: Vec<Box<str>> = ["a", "b", "a", "c", "b"].map(Box::from).to_vec();
        assert_eq!(distinct(&few).collect::<Vec<_>>(), ["a", "b", "c"]);
        let many: Vec<Box<str>> = (0..40).map(|i| format!("k{}", i % 20).into()).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        assert_eq!(distinct(&many).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn info_reports_expiry() {
        let mut store = SessionStore::new(Arc::new(SharedNames::default()));
        let settings = crate::domain::ExpirySettings::idle(10, true, false, true);
        store.create(3, None, false, Some(settings), 1000);
        assert_eq!(
            run_text(&mut store, r#"{"SH_INFO":{"tkn":3}}"#, 5500),
            r#"{"SH_INFO_RSP":{"st":1,"tkn":3,"shared":false,"keyCnt":0,"expires":true,"expiry":{"duration":10,"remaining":6,"deleteSession":true,"extendOnSetAdd":false,"extendOnGet":true}}}"#
        );
    }
}
