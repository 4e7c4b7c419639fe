//! Session versions, `ifVersion`, `withVersion` and `SH_INCR` through the
//! real binary on two shards: how the version moves, conditional writes
//! right and wrong on every write command (sent from a connection served by
//! the other shard, so they cross), many clients racing compare-and-set on
//! one counter, every edge of `SH_INCR`, the memory limit, and versions
//! across a save and a load (including a snapshot written before versions).

use std::path::Path;
use std::time::Duration;

use crate::support::{Client, Server, TempDir, one_client_per_shard, st};
use simd_json::OwnedValue;
use simd_json::prelude::*;

fn two_shards(extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn version_of(c: &mut Client, tkn: u64) -> u64 {
    let r = c.call(&format!(
        r#"{{"SH_COUNT":{{"tkn":{tkn},"withVersion":true}}}}"#
    ));
    assert_eq!(st(&r), 1, "{r}");
    r["version"].as_u64().expect("version")
}

fn get(c: &mut Client, tkn: u64, key: &str) -> OwnedValue {
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["{key}"]}}}}"#));
    assert_eq!(st(&r), 1, "{r}");
    r["keys"][key].clone()
}

fn incr(c: &mut Client, tkn: u64, key: &str, by: &str) -> OwnedValue {
    c.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{tkn},"key":"{key}"{by}}}}}"#
    ))
}

/// Two connections, one served by each shard, and a session on shard 0:
/// requests from the second connection cross shards.
fn crossing(server: &Server) -> (Client, Client, u64) {
    let mut clients = one_client_per_shard(server, 2).into_iter();
    let (near, tkn) = clients.next().unwrap();
    let (far, _) = clients.next().unwrap();
    (near, far, tkn)
}

#[test]
fn the_version_moves_exactly_as_the_protocol_lists() {
    let server = two_shards(&[]);
    let (mut near, mut far, tkn) = crossing(&server);
    assert_eq!(version_of(&mut far, tkn), 1, "a new session");
    let r = near.call(r#"{"SH_NEW":{"keys":{"a":1},"withVersion":true}}"#);
    assert_eq!((st(&r), r["version"].as_u64()), (1, Some(1)), "{r}");
    let r = near.call(r#"{"SH_NEW":{"name":"plain"}}"#);
    assert!(r.get("version").is_none(), "not asked for: {r}");

    // (request, version change)
    let steps = [
        (r#""SH_SET":{"keys":{"a":1}}"#, 1),
        (r#""SH_SET":{"keys":{"a":1}}"#, 1),
        (r#""SH_SET":{"keys":{}}"#, 0),
        (r#""SH_ADD":{"keys":{"a":2}}"#, 0),
        (r#""SH_ADD":{"keys":{"a":2,"b":2}}"#, 1),
        (r#""SH_RMV":{"keys":["zz"]}"#, 0),
        (r#""SH_RMV":{"keys":["b","zz"]}"#, 1),
        (r#""SH_INCR":{"key":"a","by":0}"#, 0),
        (r#""SH_INCR":{"key":"fresh","by":0}"#, 0),
        (r#""SH_INCR":{"key":"a"}"#, 1),
        (r#""SH_INCR":{"key":"a","by":-7}"#, 1),
        (r#""SH_GET":{"keys":["a"]}"#, 0),
        (r#""SH_CONTAINS":{"keys":["a"]}"#, 0),
        (r#""SH_KEYS":{}"#, 0),
        (r#""SH_INFO":{}"#, 0),
        (r#""SH_TOUCH":{}"#, 0),
        (r#""SH_CLEAR_SET":{"keys":{"c":3}}"#, 1),
        (r#""SH_CLEAR_SET":{"keys":{}}"#, 1),
        (r#""SH_CLEAR_SET":{"keys":{}}"#, 0),
        (r#""SH_CLEAR":{}"#, 0),
        (r#""SH_SET":{"keys":{"d":4}}"#, 1),
        (r#""SH_CLEAR":{}"#, 1),
    ];
    let mut expected = 1;
    for (request, change) in steps {
        let (name, params) = request.split_once(':').unwrap();
        let params = params.trim_start_matches('{');
        let sep = if params.starts_with('}') { "" } else { "," };
        let text = format!(r#"{{{name}:{{"tkn":{tkn}{sep}{params}}}"#);
        let r = far.call(&text);
        assert_eq!(st(&r), 1, "{text}: {r}");
        assert!(r.get("version").is_none(), "not asked for: {text} {r}");
        expected += change;
        assert_eq!(version_of(&mut near, tkn), expected, "after {text}");
    }
    // A refused write changes nothing.
    far.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"s":"x"}}}}}}"#
    ));
    let r = incr(&mut far, tkn, "s", "");
    assert_eq!(st(&r), 43, "{r}");
    assert_eq!(version_of(&mut near, tkn), expected + 1);
}

#[test]
fn with_version_answers_on_every_command_that_takes_it() {
    let server = two_shards(&[]);
    let (mut near, mut far, tkn) = crossing(&server);
    let t = tkn;
    let cases = [
        (
            format!(r#"{{"SH_SET":{{"tkn":{t},"keys":{{"a":1}},"withVersion":true}}}}"#),
            2,
        ),
        (
            format!(r#"{{"SH_ADD":{{"tkn":{t},"keys":{{"b":1}},"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_GET":{{"tkn":{t},"keys":["a"],"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_CONTAINS":{{"tkn":{t},"keys":["a"],"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_COUNT":{{"tkn":{t},"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_KEYS":{{"tkn":{t},"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_INFO":{{"tkn":{t},"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_TOUCH":{{"tkn":{t},"withVersion":true}}}}"#),
            3,
        ),
        (
            format!(r#"{{"SH_INCR":{{"tkn":{t},"key":"a","withVersion":true}}}}"#),
            4,
        ),
        (
            format!(r#"{{"SH_RMV":{{"tkn":{t},"keys":["b"],"withVersion":true}}}}"#),
            5,
        ),
        (
            format!(r#"{{"SH_CLEAR_SET":{{"tkn":{t},"keys":{{"c":1}},"withVersion":true}}}}"#),
            6,
        ),
        (
            format!(r#"{{"SH_CLEAR":{{"tkn":{t},"withVersion":true}}}}"#),
            7,
        ),
        (
            format!(r#"{{"SH_GET":{{"tkn":{t},"keys":[],"withVersion":false}}}}"#),
            0,
        ),
    ];
    for (request, version) in cases {
        let r = far.call(&request);
        assert_eq!(st(&r), 1, "{request}: {r}");
        let answered = r.get("version").and_then(|v| v.as_u64());
        assert_eq!(answered, (version > 0).then_some(version), "{request}: {r}");
    }
    let r = far.call(r#"{"SH_GET":{"tkn":1,"keys":[],"withVersion":true}}"#);
    assert_eq!(st(&r), 100);
    assert!(r.get("version").is_none(), "{r}");
    // Shared sessions: SH_OPEN from the other shard.
    near.call(r#"{"SH_NEW":{"name":"cart","shared":true}}"#);
    let r = far.call(r#"{"SH_OPEN":{"name":"cart","withVersion":true}}"#);
    assert_eq!((st(&r), r["version"].as_u64()), (1, Some(1)), "{r}");
    let r = far.call(r#"{"SH_OPEN":{"name":"cart"}}"#);
    assert!(r.get("version").is_none(), "{r}");
    let r = far.call(&format!(r#"{{"SH_END":{{"tkn":{t},"withVersion":true}}}}"#));
    assert_eq!(
        r.as_object().map(|o| o.len()),
        Some(2),
        "st and tkn only: {r}"
    );
}

#[test]
fn if_version_guards_every_write_command() {
    let server = two_shards(&[]);
    let (mut near, mut far, tkn) = crossing(&server);
    let writes = [
        r#""SH_SET":{"keys":{"a":1}"#,
        r#""SH_ADD":{"keys":{"b":1}"#,
        r#""SH_INCR":{"key":"a""#,
        r#""SH_RMV":{"keys":["b"]"#,
        r#""SH_CLEAR_SET":{"keys":{"c":1}"#,
        r#""SH_CLEAR":{"#,
    ];
    for (i, write) in writes.iter().enumerate() {
        let current = version_of(&mut near, tkn);
        let sep = if write.ends_with('{') { "" } else { "," };
        let keys_before = near.call(&format!(r#"{{"SH_KEYS":{{"tkn":{tkn}}}}}"#));
        for wrong in [current - 1, current + 1, 0] {
            let text = format!(r#"{{{write}{sep}"tkn":{tkn},"ifVersion":{wrong}}}}}"#);
            let r = far.call(&text);
            assert_eq!(st(&r), 104, "{text}: {r}");
            assert_eq!(r["tkn"].as_u64(), Some(tkn));
            assert_eq!(r["version"].as_u64(), Some(current), "{text}: {r}");
            assert_eq!(
                r.as_object().map(|o| o.len()),
                Some(3),
                "st, tkn, version: {r}"
            );
        }
        assert_eq!(version_of(&mut near, tkn), current, "nothing changed");
        let keys_after = near.call(&format!(r#"{{"SH_KEYS":{{"tkn":{tkn}}}}}"#));
        assert_eq!(keys_before, keys_after, "nothing changed");
        let text = format!(r#"{{{write}{sep}"tkn":"{tkn}","ifVersion":{current}}}}}"#);
        let r = far.call(&text);
        assert_eq!(st(&r), 1, "{text}: {r}");
        assert_eq!(
            r["version"].as_u64(),
            Some(current + 1),
            "write {i}: {text}: {r}"
        );
    }
    // The checks' order: the session first, then the version.
    let r = far.call(r#"{"SH_SET":{"tkn":1,"keys":{"a":1},"ifVersion":1}}"#);
    assert_eq!(st(&r), 100, "{r}");
    let r = far.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{tkn},"key":"zz","by":1.5,"ifVersion":99}}}}"#
    ));
    assert_eq!(st(&r), 41, "parameters before the version: {r}");
    near.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"s":"x"}}}}}}"#
    ));
    let current = version_of(&mut near, tkn);
    let r = far.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{tkn},"key":"s","ifVersion":{}}}}}"#,
        current + 5
    ));
    assert_eq!(st(&r), 104, "the version before the value: {r}");
    let r = far.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{tkn},"key":"s","ifVersion":{current}}}}}"#
    ));
    assert_eq!(st(&r), 43, "{r}");
    // An expired deleteSession session is 100, never 104.
    let gone = near.new_session(r#"{"expiry":{"duration":1,"deleteSession":true}}"#);
    std::thread::sleep(Duration::from_millis(1100));
    let r = far.call(&format!(
        r#"{{"SH_SET":{{"tkn":{gone},"keys":{{"a":1}},"ifVersion":1}}}}"#
    ));
    assert_eq!(st(&r), 100, "{r}");
}

#[test]
fn bad_version_parameters_are_refused() {
    let server = two_shards(&[]);
    let mut c = server.client();
    let tkn = c.new_session("{}");
    for (params, status) in [
        (r#""SH_GET":{"keys":[],"withVersion":1"#, 41),
        (r#""SH_GET":{"keys":[],"withVersion":"true""#, 41),
        (r#""SH_SET":{"keys":{},"ifVersion":-1"#, 41),
        (r#""SH_SET":{"keys":{},"ifVersion":1.0"#, 41),
        (r#""SH_SET":{"keys":{},"ifVersion":"1""#, 41),
        (r#""SH_SET":{"keys":{},"ifVersion":null"#, 41),
        (
            r#""SH_SET":{"keys":{},"ifVersion":18446744073709551616"#,
            41,
        ),
        (r#""SH_GET":{"keys":[],"ifVersion":1"#, 41),
        (r#""SH_END":{"ifVersion":1"#, 41),
        (r#""SH_TOUCH":{"ifVersion":1"#, 41),
        (r#""SH_INCR":{"by":1"#, 26),
        (r#""SH_INCR":{"key":5"#, 41),
        (r#""SH_INCR":{"key":"a","by":"1""#, 41),
        (r#""SH_INCR":{"key":"a","by":1.0"#, 41),
        (r#""SH_INCR":{"key":"a","by":9223372036854775808"#, 41),
        (r#""SH_INCR":{"key":"a","by":-9223372036854775809"#, 41),
        (
            r#""SH_INCR":{"key":"a","by":123456789012345678901234567890"#,
            41,
        ),
        (r#""SH_INCR":{"key":"a","key":"b""#, 13),
        (r#""SH_NEW":{"withVersion":0"#, 41),
        (r#""SH_OPEN":{"name":"x","withVersion":0"#, 41),
    ] {
        let (name, rest) = params.split_once(':').unwrap();
        let rest = rest.trim_start_matches('{');
        let text = format!(r#"{{{name}:{{"tkn":{tkn},{rest}}}}}"#);
        let r = c.call(&text);
        assert_eq!(st(&r), status, "{text}: {r}");
        if status == 41 && name != r#""SH_NEW""# && name != r#""SH_OPEN""# {
            assert_eq!(r["tkn"].as_u64(), Some(tkn), "{text}: {r}");
            assert!(r["m"].as_str().is_some(), "{text}: {r}");
        }
    }
    assert_eq!(version_of(&mut c, tkn), 1, "nothing ran");
}

#[test]
fn incr_handles_every_edge() {
    let server = two_shards(&[]);
    let (mut near, mut far, tkn) = crossing(&server);
    let value = |r: &OwnedValue| (st(r), r["value"].as_i64());
    let r = incr(&mut far, tkn, "n", "");
    assert_eq!(value(&r), (1, Some(1)), "absent counts as 0: {r}");
    assert_eq!(r["key"].as_str(), Some("n"));
    assert_eq!(r["tkn"].as_u64(), Some(tkn));
    assert_eq!(r.as_object().map(|o| o.len()), Some(4), "{r}");
    assert_eq!(
        value(&incr(&mut far, tkn, "n", r#","by":-5"#)),
        (1, Some(-4))
    );
    assert_eq!(
        value(&incr(&mut far, tkn, "n", r#","by":0"#)),
        (1, Some(-4))
    );
    assert_eq!(
        value(&incr(&mut far, tkn, "zero", r#","by":0"#)),
        (1, Some(0))
    );
    let r = near.call(&format!(
        r#"{{"SH_CONTAINS":{{"tkn":{tkn},"keys":["zero"]}}}}"#
    ));
    assert_eq!(
        r["contains"].as_array().map(Vec::len),
        Some(0),
        "by 0 creates nothing"
    );
    assert_eq!(get(&mut near, tkn, "n").as_i64(), Some(-4), "round trip");

    // Overflow both ways: 44, nothing changed.
    let max = i64::MAX;
    near.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"hi":{max},"lo":{}}}}}}}"#,
        i64::MIN
    ));
    let before = version_of(&mut near, tkn);
    assert_eq!(st(&incr(&mut far, tkn, "hi", "")), 44);
    assert_eq!(st(&incr(&mut far, tkn, "lo", r#","by":-1"#)), 44);
    let r = incr(&mut far, tkn, "hi", &format!(r#","by":{}"#, i64::MIN));
    assert_eq!(value(&r), (1, Some(-1)));
    assert_eq!(
        value(&incr(&mut far, tkn, "lo", &format!(r#","by":{max}"#))),
        (1, Some(-1))
    );
    let r = incr(&mut far, tkn, "fresh", &format!(r#","by":{}"#, i64::MIN));
    assert_eq!(value(&r), (1, Some(i64::MIN)));
    assert_eq!(get(&mut near, tkn, "fresh").as_i64(), Some(i64::MIN));
    assert_eq!(version_of(&mut near, tkn), before + 3);

    // Not integers: 43, value kept exactly.
    for stored in [
        "1.5",
        "1.0",
        "1E2",
        "-0.0",
        r#""12""#,
        r#"{"a":1}"#,
        "[1]",
        "true",
        "null",
        "9223372036854775808",
        "123456789012345678901234567890",
    ] {
        near.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"x":{stored}}}}}}}"#
        ));
        let before = version_of(&mut near, tkn);
        let r = incr(&mut far, tkn, "x", "");
        assert_eq!(st(&r), 43, "{stored}: {r}");
        assert!(r["m"].as_str().is_some());
        assert_eq!(near_text_of(&mut near, tkn, "x"), stored);
        assert_eq!(version_of(&mut near, tkn), before);
    }
    // Big numbers round-trip exactly after increments next to them.
    for (start, by, end) in [
        ("9223372036854775806", "1", "9223372036854775807"),
        ("-9223372036854775807", "-1", "-9223372036854775808"),
        ("-0", "0", "-0"),
        ("-0", "1", "1"),
        ("99", "1", "100"),
        ("100", "-1", "99"),
    ] {
        near.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"y":{start}}}}}}}"#
        ));
        let r = incr(&mut far, tkn, "y", &format!(r#","by":{by}"#));
        assert_eq!(st(&r), 1, "{start} + {by}: {r}");
        assert_eq!(near_text_of(&mut near, tkn, "y"), end, "{start} + {by}");
    }
    let r = incr(&mut far, 1, "n", "");
    assert_eq!(st(&r), 100, "{r}");
}

/// The stored JSON text of one key, exactly as the server sends it.
fn near_text_of(c: &mut Client, tkn: u64, key: &str) -> String {
    c.send_text(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["{key}"]}}}}"#));
    let text = c.recv_text();
    let start = format!(r#""keys":{{"{key}":"#);
    let at = text.find(&start).expect("the key") + start.len();
    // The value ends where the keys object and the body close.
    text[at..text.len() - 3].to_string()
}

#[test]
fn incr_is_refused_at_the_memory_limit_and_slides() {
    let server = two_shards(&["--max-memory", "4096"]);
    let mut c = server.client();
    let tkn =
        c.new_session(r#"{"expiry":{"duration":2,"deleteSession":true,"extendOnSetAdd":true}}"#);
    assert_eq!(st(&incr(&mut c, tkn, "n", "")), 1);
    // Fill the shard's share with ever smaller values, down to keys that
    // cost less than the one SH_INCR would add.
    let mut i = 0;
    for size in [1000, 100, 10, 1] {
        let value = "x".repeat(size);
        loop {
            i += 1;
            let r = c.call(&format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"f{i:03}":"{value}"}}}}}}"#
            ));
            if st(&r) == 150 {
                break;
            }
            assert!(i < 500, "the limit is reached");
        }
    }
    let before = version_of(&mut c, tkn);
    let r = incr(&mut c, tkn, "new-key", "");
    assert_eq!(st(&r), 150, "a new key grows the store: {r}");
    assert_eq!(version_of(&mut c, tkn), before);
    // Same width: no growth, so it still runs; and it slides the deadline.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(800));
        let r = incr(&mut c, tkn, "n", r#","by":0"#);
        assert_eq!(st(&r), 1, "{r}");
    }
    assert_eq!(
        st(&incr(&mut c, tkn, "n", r#","by":-1"#)),
        1,
        "1 -> 0, same width"
    );
    assert_eq!(get(&mut c, tkn, "n").as_i64(), Some(0));
}

/// 50 clients, 200 compare-and-set increments each, of one counter in a
/// shared session: read with its version, write with `ifVersion`, retry on
/// 104. Not one increment is lost or counted twice.
#[test]
fn concurrent_compare_and_set_loses_nothing() {
    const CLIENTS: usize = 50;
    const INCREMENTS: u64 = 200;
    let server = two_shards(&[]);
    let mut setup = server.client();
    let tkn = setup.new_session(r#"{"name":"counter","shared":true,"keys":{"n":0}}"#);
    let addr = server.addr;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = c.call(r#"{"SH_OPEN":{"name":"counter"}}"#);
                let tkn = r["tkn"].as_u64().expect("tkn");
                let mut retries = 0u64;
                for _ in 0..INCREMENTS {
                    loop {
                        let r = c.call(&format!(
                            r#"{{"SH_GET":{{"tkn":{tkn},"keys":["n"],"withVersion":true}}}}"#
                        ));
                        let n = r["keys"]["n"].as_u64().expect("n");
                        let version = r["version"].as_u64().expect("version");
                        let r = c.call(&format!(
                            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"n":{}}},"ifVersion":{version}}}}}"#,
                            n + 1
                        ));
                        match st(&r) {
                            1 => break,
                            104 => retries += 1,
                            other => panic!("unexpected {other}: {r}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let total = CLIENTS as u64 * INCREMENTS;
    assert_eq!(
        get(&mut setup, tkn, "n").as_u64(),
        Some(total),
        "{retries} retries"
    );
    assert_eq!(version_of(&mut setup, tkn), total + 1);
}

/// Concurrent `SH_INCR`s from connections on both shards: every one counts.
#[test]
fn concurrent_increments_all_count() {
    let server = two_shards(&[]);
    let mut setup = server.client();
    let tkn = setup.new_session("{}");
    let addr = server.addr;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..250 {
                    c.queue_text(format!(r#"{{"SH_INCR":{{"tkn":{tkn},"key":"n","by":2}}}}"#));
                }
                c.flush();
                for _ in 0..250 {
                    let r = c.recv_json();
                    assert_eq!(r["SH_INCR_RSP"]["st"].as_u64(), Some(1), "{r}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(get(&mut setup, tkn, "n").as_u64(), Some(4000));
    assert_eq!(version_of(&mut setup, tkn), 2001);
}

#[test]
fn an_idle_expiry_that_clears_keys_counts_as_a_change() {
    let server = two_shards(&[]);
    let (mut near, mut far, _) = crossing(&server);
    let tkn = near.new_session(r#"{"expiry":{"duration":1,"deleteSession":false}}"#);
    far.call(&format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":1}}}}}}"#));
    assert_eq!(version_of(&mut far, tkn), 2);
    std::thread::sleep(Duration::from_millis(2600));
    // Cleared once (two periods passed, but only the first had keys).
    assert_eq!(version_of(&mut far, tkn), 3);
    let r = far.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":1}},"ifVersion":3}}}}"#
    ));
    assert_eq!((st(&r), r["version"].as_u64()), (1, Some(4)), "{r}");
}

#[test]
fn versions_survive_a_save_and_a_load() {
    let dir = TempDir::new("versions-save");
    let args = ["--shards", "2", "--persist-path", dir.arg()];
    let (tkn, owned) = {
        let server = Server::start(&args);
        let mut c = server.client();
        let tkn = c.new_session(r#"{"keys":{"n":1}}"#);
        let owned = c.new_session(r#"{"owner":"ann"}"#);
        for _ in 0..299 {
            assert_eq!(st(&incr(&mut c, tkn, "n", "")), 1);
        }
        assert_eq!(st(&incr(&mut c, owned, "n", "")), 1);
        let r = c.call(r#"{"SH_SAVE":{"name":"v"}}"#);
        assert_eq!(st(&r), 121, "{r}");
        (tkn, owned)
    };
    let mut load_args = args.to_vec();
    load_args.extend(["--load-name", "v"]);
    let server = Server::start(&load_args);
    let mut c = server.client();
    assert_eq!(version_of(&mut c, tkn), 300);
    assert_eq!(version_of(&mut c, owned), 2);
    assert_eq!(get(&mut c, tkn, "n").as_u64(), Some(300));
    let r = c.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{tkn},"key":"n","ifVersion":300}}}}"#
    ));
    assert_eq!(
        (st(&r), r["value"].as_u64(), r["version"].as_u64()),
        (1, Some(301), Some(301))
    );
}

/// A dataset written by the server before versions existed (snapshot
/// format version 2, kept in tests/it/fixtures) loads at version 1.
#[test]
fn a_version_2_snapshot_loads_at_version_1() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/v2");
    let dir = TempDir::new("v2-snapshot");
    crate::owners::copy_dir(&fixture, dir.path());
    let server = Server::start(&[
        "--shards",
        "2",
        "--persist-path",
        dir.arg(),
        "--load-name",
        "before-versions",
    ]);
    let mut c = server.client();
    let r = c.call(r#"{"SH_OWNER_SESSIONS":{"owner":"ann"}}"#);
    let owned = crate::support::tokens(&r["tkns"]);
    assert_eq!(owned.len(), 2, "{r}");
    let r = c.call(r#"{"SH_OPEN":{"name":"basket","withVersion":true}}"#);
    assert_eq!((st(&r), r["version"].as_u64()), (1, Some(1)), "{r}");
    let basket = r["tkn"].as_u64().unwrap();
    assert_eq!(get(&mut c, basket, "count").as_u64(), Some(41));
    let r = c.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{basket},"key":"count","ifVersion":1}}}}"#
    ));
    assert_eq!(
        (st(&r), r["value"].as_u64(), r["version"].as_u64()),
        (1, Some(42), Some(2))
    );
    for tkn in owned {
        assert_eq!(version_of(&mut c, tkn), 1);
    }
}
