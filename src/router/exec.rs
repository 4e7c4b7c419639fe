//! Runs a session command against the owning shard's store and encodes its
//! response. Only commands about one session (by token or shared name) come
//! here; the router has already sent them to the shard that owns it.

use ahash::AHashSet;

use crate::domain::{NewSession, Token};
use crate::protocol::answer::{self, ExpiryInfo, SessionInfo};
use crate::protocol::{Command, CommandName, Status, encode_status};
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
    answer::created(out, tkn, new.name.as_deref());
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
    now: Millis,
    out: &mut Vec<u8>,
) -> Status {
    match names.lookup(name) {
        Some(tkn) if store.exists(tkn, now) => {
            answer::opened(out, tkn, name);
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
    let result: Result<(), Refusal> = match command {
        Command::End { .. } => store.end(tkn, now).map(|()| answer::done(out, name, tkn)),
        Command::Info { .. } => store.read_with_extras(tkn, now).map(|(session, extras)| {
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
            answer::session_info(out, tkn, &info);
        }),
        Command::Touch { slide, .. } => store
            .touch(tkn, slide, now)
            .map(|ttl_ms| answer::touched(out, tkn, ttl_ms)),
        Command::Set { keys, .. } => store
            .set(tkn, keys, now)
            .map(|()| answer::done(out, name, tkn)),
        Command::Add { keys, .. } => store
            .add(tkn, keys, now)
            .map(|()| answer::done(out, name, tkn)),
        Command::ClearSet { keys, .. } => store
            .clear_set(tkn, keys, now)
            .map(|removed| answer::counted(out, name, tkn, removed as u64)),
        Command::Get { keys, .. } => store.get(tkn, now).map(|session| {
            let found = distinct(&keys).filter_map(|k| session.keys.get(k).map(|v| (k, v)));
            answer::values(out, tkn, found);
        }),
        Command::Rmv { keys, .. } => store
            .remove_keys(tkn, &keys, now)
            .map(|()| answer::done(out, name, tkn)),
        Command::Contains { keys, .. } => store.read(tkn, now).map(|session| {
            let found = keys
                .iter()
                .map(|k| k.as_ref())
                .filter(|k| session.keys.contains(k));
            answer::contained(out, tkn, found);
        }),
        Command::Count { .. } => store
            .read(tkn, now)
            .map(|session| answer::counted(out, name, tkn, session.keys.len() as u64)),
        Command::Keys { .. } => store
            .read(tkn, now)
            .map(|session| answer::key_names(out, tkn, session.keys.iter().map(|(k, _)| k))),
        Command::Clear { .. } => store
            .clear(tkn, now)
            .map(|removed| answer::counted(out, name, tkn, removed as u64)),
        _ => {
            encode_status(
                out,
                name,
                Status::Unknown,
                Some(tkn),
                Some("misrouted command"),
            );
            return Status::Unknown;
        }
    };
    match result {
        Ok(()) => Status::Ok,
        Err(Refusal::NoSession) => {
            encode_status(out, name, Status::SessionNotExist, Some(tkn), None);
            Status::SessionNotExist
        }
        Err(Refusal::MemoryLimit) => {
            encode_status(out, name, Status::MemoryLimit, Some(tkn), Some(MEMORY_FULL));
            Status::MemoryLimit
        }
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
