//! Expiry through the real binary: every flag combination with 1-3 s
//! durations. Scenarios run in parallel threads so the whole file takes a
//! few seconds; sleeps only ever make a check later, and every check leaves
//! at least 0.5 s of slack on the side a slow machine could push it.

use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::support::{Client, Server, st};
use simd_json::prelude::*;

fn at(start: Instant, seconds: f64) {
    let target = start + Duration::from_secs_f64(seconds);
    if let Some(wait) = target.checked_duration_since(Instant::now()) {
        sleep(wait);
    }
}

fn exists(c: &mut Client, tkn: u64) -> bool {
    let r = c.call(&format!(r#"{{"SH_EXISTS":{{"tkns":[{tkn}]}}}}"#));
    !r["exist"].as_array().unwrap().is_empty()
}

fn key_count(c: &mut Client, tkn: u64) -> Option<u64> {
    let r = c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#));
    (st(&r) == 1).then(|| r["cnt"].as_u64().unwrap())
}

fn set(c: &mut Client, tkn: u64, key: &str) -> u64 {
    st(&c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"{key}":1}}}}}}"#
    )))
}

fn get(c: &mut Client, tkn: u64) -> u64 {
    st(&c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#)))
}

fn delete_session_goes_whole_and_releases_its_name(mut c: Client) {
    let start = Instant::now();
    let tkn = c.new_session(
        r#"{"name":"gone","shared":true,"expiry":{"duration":1,"deleteSession":true}}"#,
    );
    set(&mut c, tkn, "a");
    at(start, 0.3);
    assert_eq!(key_count(&mut c, tkn), Some(1));
    at(start, 1.5);
    assert_eq!(get(&mut c, tkn), 100);
    assert!(!exists(&mut c, tkn));
    assert_eq!(st(&c.call(r#"{"SH_OPEN":{"name":"gone"}}"#)), 102);
    c.new_session(r#"{"name":"gone","shared":true}"#);
}

fn keys_only_expiry_keeps_the_session(mut c: Client) {
    let start = Instant::now();
    let tkn = c.new_session(r#"{"expiry":{"duration":1,"deleteSession":false}}"#);
    set(&mut c, tkn, "a");
    at(start, 1.5);
    assert_eq!(key_count(&mut c, tkn), Some(0));
    let r = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    assert!(r["expiry"]["remaining"].as_u64().unwrap() <= 1);
    // The session lives on and expires its keys again.
    set(&mut c, tkn, "b");
    assert_eq!(key_count(&mut c, tkn), Some(1));
    at(start, 3.5);
    assert_eq!(key_count(&mut c, tkn), Some(0));
}

fn extend_on_get_slides_on_reads_only(mut c: Client) {
    let start = Instant::now();
    let tkn = c.new_session(r#"{"expiry":{"duration":2,"deleteSession":true,"extendOnGet":true}}"#);
    let other =
        c.new_session(r#"{"expiry":{"duration":2,"deleteSession":true,"extendOnGet":true}}"#);
    at(start, 1.2);
    assert_eq!(get(&mut c, tkn), 1); // tkn now due at 3.2
    assert_eq!(set(&mut c, other, "a"), 1); // a write does not slide: due at 2.0
    at(start, 2.5);
    assert!(exists(&mut c, tkn));
    assert!(!exists(&mut c, other));
    at(start, 3.7);
    assert!(!exists(&mut c, tkn));
}

fn extend_on_set_add_slides_on_writes_only(mut c: Client) {
    let start = Instant::now();
    let params = r#"{"expiry":{"duration":2,"deleteSession":true,"extendOnSetAdd":true}}"#;
    let by_set = c.new_session(params);
    let by_add = c.new_session(params);
    let by_clear_set = c.new_session(params);
    let by_get = c.new_session(params);
    at(start, 1.2);
    set(&mut c, by_set, "a");
    c.call(&format!(
        r#"{{"SH_ADD":{{"tkn":{by_add},"keys":{{"a":1}}}}}}"#
    ));
    c.call(&format!(
        r#"{{"SH_CLEAR_SET":{{"tkn":{by_clear_set},"keys":{{"a":1}}}}}}"#
    ));
    assert_eq!(get(&mut c, by_get), 1);
    at(start, 2.5);
    assert!(exists(&mut c, by_set) && exists(&mut c, by_add) && exists(&mut c, by_clear_set));
    assert!(!exists(&mut c, by_get));
    at(start, 3.7);
    assert!(!exists(&mut c, by_set) && !exists(&mut c, by_add) && !exists(&mut c, by_clear_set));
}

fn both_extend_flags_keys_only(mut c: Client) {
    let start = Instant::now();
    let tkn = c.new_session(
        r#"{"expiry":{"duration":2,"deleteSession":false,"extendOnSetAdd":true,"extendOnGet":true}}"#,
    );
    set(&mut c, tkn, "a");
    at(start, 1.2);
    assert_eq!(get(&mut c, tkn), 1); // due at 3.2
    at(start, 2.5);
    assert_eq!(key_count(&mut c, tkn), Some(1));
    at(start, 3.7);
    assert_eq!(key_count(&mut c, tkn), Some(0), "keys expired");
    assert!(exists(&mut c, tkn), "the session stays");
}

fn totals_never_count_expired_sessions(mut c: Client) {
    let start = Instant::now();
    for _ in 0..50 {
        let tkn = c.new_session(r#"{"expiry":{"duration":1,"deleteSession":true}}"#);
        set(&mut c, tkn, "a");
    }
    at(start, 1.5);
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    // Other scenarios share the server: only sessions without expiry or
    // with later deadlines may be counted, never these 50.
    assert!(r["totalSessions"].as_u64().unwrap() < 50, "{r}");
}

#[test]
fn expiry_flag_combinations() {
    let server = Server::start(&["--shards", "2"]);
    type Scenario = (&'static str, fn(Client));
    let scenarios: Vec<Scenario> = vec![
        (
            "deleteSession",
            delete_session_goes_whole_and_releases_its_name,
        ),
        ("keys only", keys_only_expiry_keeps_the_session),
        ("extendOnGet", extend_on_get_slides_on_reads_only),
        ("extendOnSetAdd", extend_on_set_add_slides_on_writes_only),
        ("both extend flags", both_extend_flags_keys_only),
        ("totals", totals_never_count_expired_sessions),
    ];
    let threads: Vec<_> = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let client = server.client();
            (name, std::thread::spawn(move || scenario(client)))
        })
        .collect();
    for (name, thread) in threads {
        if thread.join().is_err() {
            panic!("scenario {name:?} failed");
        }
    }
}
