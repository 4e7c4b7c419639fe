//! Expiry: every flag combination on a manual clock, and one real-time smoke
//! test through the binary.
//!
//! The matrix runs on a `LocalDispatcher`, whose clock moves only when told
//! (`advance`, which also runs background expiry as a shard turn would), so
//! every check sits at an exact millisecond, the deadline's edges included,
//! and the matrix takes no time. What the matrix cannot show, that the
//! server's own clock and background expiry drive the same behaviour across
//! shards, the smoke test shows with real seconds; it is the only test here
//! that sleeps.

use std::thread::sleep;
use std::time::{Duration, Instant};

use nemesisdb::shard::LocalDispatcher;
use simd_json::OwnedValue;
use simd_json::prelude::*;

use crate::support::{Client, Server, body, one_client_per_shard, st};

/// Whatever answers requests: the real binary or a dispatcher in-process.
/// The checks below are written once for both.
trait Caller {
    /// Sends `request` and returns the response body (`{"X_RSP":{body}}`).
    fn call(&mut self, request: &str) -> OwnedValue;
}

impl Caller for Client {
    fn call(&mut self, request: &str) -> OwnedValue {
        Client::call(self, request)
    }
}

/// A `LocalDispatcher` and the time its clock shows, in ms since it started.
struct ManualClock {
    dispatcher: LocalDispatcher,
    now: u64,
}

impl ManualClock {
    fn new() -> Self {
        ManualClock {
            dispatcher: LocalDispatcher::new(7),
            now: 0,
        }
    }

    /// Moves the clock to `ms` (never back).
    fn at(&mut self, ms: u64) {
        assert!(ms >= self.now, "the clock only moves on");
        self.dispatcher.advance(ms - self.now);
        self.now = ms;
    }

    fn new_session(&mut self, params: &str) -> u64 {
        let r = self.call(&format!(r#"{{"SH_NEW":{params}}}"#));
        assert_eq!(st(&r), 1, "SH_NEW failed: {r}");
        r["tkn"].as_u64().expect("tkn")
    }
}

impl Caller for ManualClock {
    fn call(&mut self, request: &str) -> OwnedValue {
        let mut response = self.dispatcher.handle(request.as_bytes(), true);
        let response = simd_json::to_owned_value(&mut response).expect("JSON");
        let command = request.trim_start_matches("{\"").split('"').next();
        body(&response, &format!("{}_RSP", command.unwrap_or_default()))
    }
}

fn exists(c: &mut impl Caller, tkn: u64) -> bool {
    let r = c.call(&format!(r#"{{"SH_EXISTS":{{"tkns":[{tkn}]}}}}"#));
    !r["exist"].as_array().unwrap().is_empty()
}

fn key_count(c: &mut impl Caller, tkn: u64) -> Option<u64> {
    let r = c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#));
    (st(&r) == 1).then(|| r["cnt"].as_u64().unwrap())
}

/// `SH_INFO`'s `expiry.remaining`: whole seconds, rounded up.
fn remaining(c: &mut impl Caller, tkn: u64) -> u64 {
    let r = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    r["expiry"]["remaining"].as_u64().expect("remaining")
}

fn set(c: &mut impl Caller, tkn: u64, key: &str) -> u64 {
    st(&c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"{key}":1}}}}}}"#
    )))
}

fn get(c: &mut impl Caller, tkn: u64) -> u64 {
    st(&c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#)))
}

#[test]
fn delete_session_goes_whole_and_releases_its_name() {
    let mut c = ManualClock::new();
    let tkn = c.new_session(
        r#"{"name":"gone","shared":true,"expiry":{"duration":1,"deleteSession":true}}"#,
    );
    set(&mut c, tkn, "a");
    c.at(999);
    assert_eq!(key_count(&mut c, tkn), Some(1));
    assert_eq!(remaining(&mut c, tkn), 1);
    c.at(1000);
    assert_eq!(get(&mut c, tkn), 100);
    assert!(!exists(&mut c, tkn));
    assert_eq!(st(&c.call(r#"{"SH_OPEN":{"name":"gone"}}"#)), 102);
    c.new_session(r#"{"name":"gone","shared":true}"#);
}

#[test]
fn keys_only_expiry_keeps_the_session() {
    let mut c = ManualClock::new();
    let tkn = c.new_session(r#"{"expiry":{"duration":1,"deleteSession":false}}"#);
    set(&mut c, tkn, "a");
    c.at(1500);
    assert_eq!(key_count(&mut c, tkn), Some(0));
    // The next deadline counts from the old one (1000), not from when
    // expiry ran: due at 2000, 500 ms left, shown rounded up.
    assert_eq!(remaining(&mut c, tkn), 1);
    // The session lives on and expires its keys again; a write does not
    // slide it.
    set(&mut c, tkn, "b");
    c.at(1999);
    assert_eq!(key_count(&mut c, tkn), Some(1));
    c.at(2000);
    assert_eq!(key_count(&mut c, tkn), Some(0));
    assert!(exists(&mut c, tkn));
}

#[test]
fn extend_on_get_slides_on_reads_only() {
    let mut c = ManualClock::new();
    let params = r#"{"expiry":{"duration":2,"deleteSession":true,"extendOnGet":true}}"#;
    let tkn = c.new_session(params);
    let other = c.new_session(params);
    c.at(1200);
    assert_eq!(get(&mut c, tkn), 1); // due at 3200
    assert_eq!(set(&mut c, other, "a"), 1); // a write does not slide: due at 2000
    assert_eq!(remaining(&mut c, tkn), 2);
    assert_eq!(remaining(&mut c, other), 1);
    c.at(2000);
    assert!(exists(&mut c, tkn));
    assert!(!exists(&mut c, other));
    c.at(3199);
    assert!(exists(&mut c, tkn));
    c.at(3200);
    assert!(!exists(&mut c, tkn));
}

#[test]
fn extend_on_set_add_slides_on_writes_only() {
    let mut c = ManualClock::new();
    let params = r#"{"expiry":{"duration":2,"deleteSession":true,"extendOnSetAdd":true}}"#;
    let by_set = c.new_session(params);
    let by_add = c.new_session(params);
    let by_clear_set = c.new_session(params);
    let by_get = c.new_session(params);
    c.at(1200);
    assert_eq!(set(&mut c, by_set, "a"), 1);
    let r = c.call(&format!(
        r#"{{"SH_ADD":{{"tkn":{by_add},"keys":{{"a":1}}}}}}"#
    ));
    assert_eq!(st(&r), 1);
    let r = c.call(&format!(
        r#"{{"SH_CLEAR_SET":{{"tkn":{by_clear_set},"keys":{{"a":1}}}}}}"#
    ));
    assert_eq!(st(&r), 1);
    assert_eq!(get(&mut c, by_get), 1);
    assert_eq!(remaining(&mut c, by_set), 2);
    assert_eq!(remaining(&mut c, by_get), 1);
    c.at(2000);
    let written = [by_set, by_add, by_clear_set];
    assert!(written.iter().all(|&t| exists(&mut c, t)));
    assert!(!exists(&mut c, by_get));
    c.at(3199);
    assert!(written.iter().all(|&t| exists(&mut c, t)));
    c.at(3200);
    assert!(written.iter().all(|&t| !exists(&mut c, t)));
}

#[test]
fn both_extend_flags_keys_only() {
    let mut c = ManualClock::new();
    let tkn = c.new_session(
        r#"{"expiry":{"duration":2,"deleteSession":false,"extendOnSetAdd":true,"extendOnGet":true}}"#,
    );
    set(&mut c, tkn, "a");
    c.at(1200);
    assert_eq!(get(&mut c, tkn), 1); // due at 3200
    c.at(3199);
    assert_eq!(key_count(&mut c, tkn), Some(1));
    c.at(3200);
    assert_eq!(key_count(&mut c, tkn), Some(0), "keys expired");
    assert!(exists(&mut c, tkn), "the session stays");
    // Its next deadline is 3200 + 2 s.
    c.at(3201);
    assert_eq!(remaining(&mut c, tkn), 2);
}

#[test]
fn totals_never_count_expired_sessions() {
    let mut c = ManualClock::new();
    let kept = c.new_session("{}");
    set(&mut c, kept, "a");
    for _ in 0..50 {
        let tkn = c.new_session(r#"{"expiry":{"duration":1,"deleteSession":true}}"#);
        set(&mut c, tkn, "a");
    }
    c.at(999);
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(51), "{r}");
    c.at(1000);
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(1), "{r}");
    assert_eq!(r["totalKeys"].as_u64(), Some(1), "{r}");
}

/// Sleeps until `seconds` after `start` (not at all if that is past).
fn at(start: Instant, seconds: f64) {
    let target = start + Duration::from_secs_f64(seconds);
    if let Some(wait) = target.checked_duration_since(Instant::now()) {
        sleep(wait);
    }
}

/// The real clock and background expiry of a two-shard server: sessions
/// made on one shard, due after 1 s, seen from the other. Checks come only
/// after the deadline (with 0.5 s of slack), so a slow machine only makes
/// them later.
#[test]
fn real_time_expiry_across_shards() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients = one_client_per_shard(&server, 2);
    let (mut b, _) = clients.pop().unwrap();
    let (mut a, _) = clients.pop().unwrap();
    let start = Instant::now();
    let whole = b.new_session(
        r#"{"name":"brief","shared":true,"expiry":{"duration":1,"deleteSession":true}}"#,
    );
    let keys_only = b.new_session(r#"{"expiry":{"duration":1,"deleteSession":false}}"#);
    set(&mut b, whole, "a");
    set(&mut b, keys_only, "a");
    at(start, 1.5);
    assert_eq!(get(&mut a, whole), 100);
    assert!(!exists(&mut a, whole));
    // The name held on b's shard is free for a.
    let r = a.call(r#"{"SH_NEW":{"name":"brief","shared":true}}"#);
    assert_eq!(st(&r), 1, "{r}");
    assert_eq!(key_count(&mut a, keys_only), Some(0));
    assert!(exists(&mut a, keys_only));
    assert!(remaining(&mut a, keys_only) <= 1);
}
