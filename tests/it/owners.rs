//! Owners, lifetimes, SH_TOUCH and create-with-keys through the real binary
//! on two shards: listing and ending an owner's sessions from several
//! connections, an owner-end racing with creations, lifetimes against
//! sliding, the memory limit, snapshots (including one written by the
//! server before owners existed), and every new bad input.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Client, Server, TempDir, one_client_per_shard, st, tokens};
use simd_json::prelude::*;

fn two_shards(extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn owner_sessions(c: &mut Client, owner: &str) -> Vec<u64> {
    let r = c.call(&format!(r#"{{"SH_OWNER_SESSIONS":{{"owner":"{owner}"}}}}"#));
    assert_eq!(st(&r), 1, "{r}");
    assert_eq!(r["owner"].as_str(), Some(owner));
    tokens(&r["tkns"])
}

fn exists(c: &mut Client, tkn: u64) -> bool {
    st(&c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#))) == 1
}

#[test]
fn owners_are_listed_and_ended_from_every_connection() {
    let server = two_shards(&[]);
    // One connection served by each shard: half the owner requests cross.
    let mut clients: Vec<Client> = one_client_per_shard(&server, 2)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let mut created = Vec::new();
    for i in 0..6 {
        let c = &mut clients[i % 2];
        created.push(c.new_session(&format!(r#"{{"owner":"ann","keys":{{"i":{i}}}}}"#)));
        std::thread::sleep(Duration::from_millis(3));
    }
    let bob = clients[0].new_session(r#"{"owner":"bob"}"#);
    let plain = clients[1].new_session("{}");
    for c in &mut clients {
        assert_eq!(owner_sessions(c, "ann"), created, "oldest first");
        assert_eq!(owner_sessions(c, "nobody"), Vec::<u64>::new());
    }
    // Keys given at creation are there.
    let r = clients[1].call(&format!(
        r#"{{"SH_GET":{{"tkn":{},"keys":["i"]}}}}"#,
        created[3]
    ));
    assert_eq!(r["keys"]["i"].as_u64(), Some(3));
    let info = clients[0].call(&format!(r#"{{"SH_INFO":{{"tkn":{}}}}}"#, created[0]));
    assert_eq!(info["owner"].as_str(), Some("ann"));

    // Everywhere but here.
    let r = clients[1].call(&format!(
        r#"{{"SH_OWNER_END":{{"owner":"ann","except":"{}"}}}}"#,
        created[2]
    ));
    assert_eq!((st(&r), r["cnt"].as_u64()), (1, Some(5)));
    assert_eq!(owner_sessions(&mut clients[0], "ann"), [created[2]]);
    // Everywhere.
    let r = clients[0].call(r#"{"SH_OWNER_END":{"owner":"ann"}}"#);
    assert_eq!(r["cnt"].as_u64(), Some(1));
    for &tkn in &created {
        assert!(!exists(&mut clients[1], tkn));
    }
    assert!(exists(&mut clients[0], bob) && exists(&mut clients[1], plain));
    let r = clients[1].call(r#"{"SH_OWNER_END":{"owner":"ann"}}"#);
    assert_eq!(r["cnt"].as_u64(), Some(0));
}

/// Every session of the owner that existed when SH_OWNER_END was received
/// is gone when its answer is sent, whatever another connection creates
/// meanwhile.
#[test]
fn owner_end_leaves_no_session_created_before_it() {
    let server = two_shards(&[]);
    let addr = server.addr;
    let creator = std::thread::scope(|scope| {
        let creating = scope.spawn(move || {
            let mut c = Client::connect(addr);
            let mut made = Vec::new();
            for _ in 0..400 {
                made.push((Instant::now(), c.new_session(r#"{"owner":"racer"}"#)));
            }
            made
        });
        let mut ender = server.client();
        let mut ends = Vec::new();
        for _ in 0..40 {
            let asked = Instant::now();
            let r = ender.call(r#"{"SH_OWNER_END":{"owner":"racer"}}"#);
            assert_eq!(st(&r), 1);
            ends.push(asked);
            std::thread::sleep(Duration::from_millis(2));
        }
        (creating.join().expect("creator"), ends)
    });
    let (made, ends) = creator;
    let mut c = server.client();
    let last_end = *ends.last().expect("ends");
    for (answered, tkn) in made {
        // Created (answered) before the last owner-end was sent: gone.
        if answered < last_end {
            assert!(
                !exists(&mut c, tkn),
                "{tkn} survived an owner-end sent after it"
            );
        }
    }
}

#[test]
fn a_lifetime_ends_a_session_kept_alive_by_gets() {
    let server = two_shards(&[]);
    let (mut a, mut b) = {
        let mut both = one_client_per_shard(&server, 2).into_iter().map(|(c, _)| c);
        (both.next().expect("a"), both.next().expect("b"))
    };
    let kept = a.new_session(
        r#"{"keys":{"k":1},"expiry":{"duration":1,"extendOnGet":true,"deleteSession":true,"maxLifetime":2}}"#,
    );
    let keys_only = a.new_session(
        r#"{"keys":{"k":1},"expiry":{"duration":1,"deleteSession":false,"maxLifetime":2}}"#,
    );
    let info = b.call(&format!(r#"{{"SH_INFO":{{"tkn":{kept}}}}}"#));
    assert_eq!(info["expiry"]["maxLifetime"].as_u64(), Some(2));
    assert_eq!(info["expiry"]["lifetimeRemaining"].as_u64(), Some(2));
    let start = Instant::now();
    // A get every 200 ms from the other shard's connection: the idle
    // deadline never passes, the lifetime does.
    while start.elapsed() < Duration::from_millis(1700) {
        let r = b.call(&format!(r#"{{"SH_GET":{{"tkn":{kept},"keys":["k"]}}}}"#));
        assert_eq!(st(&r), 1, "alive before its lifetime: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // deleteSession:false: the keys went at the idle deadline, the session stays.
    let r = b.call(&format!(r#"{{"SH_COUNT":{{"tkn":{keys_only}}}}}"#));
    assert_eq!((st(&r), r["cnt"].as_u64()), (1, Some(0)));
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(start.elapsed()));
    assert!(!exists(&mut b, kept), "gone at its lifetime");
    assert!(
        !exists(&mut b, keys_only),
        "gone at its lifetime, deleteSession or not"
    );
}

#[test]
fn touch_reports_and_slides() {
    let server = two_shards(&[]);
    let mut c = server.client();
    let idle = c.new_session(r#"{"expiry":{"duration":60,"deleteSession":true}}"#);
    let never = c.new_session("{}");
    let ttl = |c: &mut Client, tkn: u64, slide: bool| {
        let r = c.call(&format!(
            r#"{{"SH_TOUCH":{{"tkn":{tkn},"slide":{slide}}}}}"#
        ));
        assert_eq!(st(&r), 1, "{r}");
        assert_eq!(r["tkn"].as_u64(), Some(tkn));
        r["ttlMs"].as_i64().expect("ttlMs")
    };
    std::thread::sleep(Duration::from_millis(300));
    let unslid = ttl(&mut c, idle, false);
    assert!((58_000..=59_800).contains(&unslid), "{unslid}");
    let slid = ttl(&mut c, idle, true);
    assert!(slid > unslid && slid <= 60_000, "{slid}");
    assert_eq!(ttl(&mut c, never, true), -1);
    assert_eq!(ttl(&mut c, never, false), -1);
    let r = c.call(r#"{"SH_TOUCH":{"tkn":12345}}"#);
    assert_eq!(st(&r), 100);
}

#[test]
fn duration_zero_means_no_idle_deadline() {
    let server = two_shards(&[]);
    let mut c = server.client();
    let never =
        c.new_session(r#"{"expiry":{"duration":0,"deleteSession":true,"extendOnGet":true}}"#);
    let info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{never}}}}}"#));
    assert_eq!(info["expires"].as_bool(), Some(false));
    assert!(info.get("expiry").is_none());
    let lifetime_only = c.new_session(r#"{"expiry":{"duration":0,"maxLifetime":100}}"#);
    let info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{lifetime_only}}}}}"#));
    assert_eq!(info["expires"].as_bool(), Some(true));
    assert_eq!(info["expiry"]["duration"].as_u64(), Some(0));
    assert_eq!(info["expiry"]["maxLifetime"].as_u64(), Some(100));
    assert_eq!(info["expiry"]["remaining"].as_u64(), Some(100));
    let r = c.call(&format!(r#"{{"SH_TOUCH":{{"tkn":{lifetime_only}}}}}"#));
    assert!(
        r["ttlMs"]
            .as_i64()
            .is_some_and(|t| t > 99_000 && t <= 100_000)
    );
    // Without new parameters, an answer is what it always was.
    let plain = c.new_session(r#"{"expiry":{"duration":5}}"#);
    let info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{plain}}}}}"#));
    let expiry = info["expiry"].as_object().expect("expiry");
    assert!(info.get("owner").is_none());
    assert!(!expiry.contains_key("maxLifetime") && !expiry.contains_key("lifetimeRemaining"));
}

#[test]
fn every_new_bad_input_gets_its_status_and_changes_nothing() {
    let server = two_shards(&[]);
    let mut c = server.client();
    let tkn = c.new_session(r#"{"owner":"ann"}"#);
    let long = "x".repeat(257);
    let cases = [
        (format!(r#"{{"SH_NEW":{{"owner":"{long}"}}}}"#), 42),
        (r#"{"SH_NEW":{"owner":""}}"#.to_string(), 42),
        (r#"{"SH_NEW":{"owner":7}}"#.to_string(), 41),
        (r#"{"SH_NEW":{"owner":"ann","keys":"a"}}"#.to_string(), 41),
        (
            r#"{"SH_NEW":{"owner":"ann","expiry":{"maxLifetime":0}}}"#.to_string(),
            42,
        ),
        (
            r#"{"SH_NEW":{"owner":"ann","expiry":{"maxLifetime":true}}}"#.to_string(),
            41,
        ),
        (
            r#"{"SH_NEW":{"owner":"ann","expiry":{"extendOnGet":true}}}"#.to_string(),
            26,
        ),
        (r#"{"SH_OWNER_SESSIONS":{"owner":1}}"#.to_string(), 41),
        (r#"{"SH_OWNER_END":{}}"#.to_string(), 26),
        (
            r#"{"SH_OWNER_END":{"owner":"ann","except":"me"}}"#.to_string(),
            101,
        ),
        (
            r#"{"SH_OWNER_END":{"owner":"ann","except":-1}}"#.to_string(),
            101,
        ),
        (
            format!(r#"{{"SH_TOUCH":{{"tkn":{tkn},"slide":"yes"}}}}"#),
            41,
        ),
        (r#"{"SH_TOUCH":{"tkn":"x"}}"#.to_string(), 101),
    ];
    for (request, status) in &cases {
        assert_eq!(st(&c.call(request)), *status, "{request}");
    }
    assert_eq!(owner_sessions(&mut c, "ann"), [tkn]);
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(1));
}

#[test]
fn create_with_keys_is_refused_whole_at_the_memory_limit() {
    let server = two_shards(&["--max-memory", "40000"]);
    let mut c = server.client();
    // Past the whole limit (the limit is server-wide, not per shard).
    let big = "v".repeat(45_000);
    let r = c.call(&format!(
        r#"{{"SH_NEW":{{"owner":"ann","keys":{{"a":1,"big":"{big}"}}}}}}"#
    ));
    assert_eq!(st(&r), 150, "{r}");
    assert_eq!(owner_sessions(&mut c, "ann"), Vec::<u64>::new());
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(
        (r["totalSessions"].as_u64(), r["totalKeys"].as_u64()),
        (Some(0), Some(0))
    );
    // Small enough: created with its keys.
    let tkn = c.new_session(r#"{"owner":"ann","keys":{"a":1}}"#);
    let r = c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#));
    assert_eq!(r["cnt"].as_u64(), Some(1));
}

#[test]
fn owners_and_lifetimes_survive_a_save_and_a_load_on_other_shard_counts() {
    let dir = TempDir::new("owners-snapshot");
    // No change log or periodic snapshots: each restart starts empty and
    // loads the dataset (recovery would bring back the last run instead).
    let quiet = ["--log-fsync", "off", "--snapshot-every", "0"];
    let mut server =
        Server::start(&[&["--shards", "2", "--persist-path", dir.arg()], &quiet[..]].concat());
    let mut c = server.client();
    let mut ann = Vec::new();
    for i in 0..5 {
        ann.push(c.new_session(&format!(
            r#"{{"owner":"ann","keys":{{"i":{i}}},"expiry":{{"duration":600,"maxLifetime":3600}}}}"#
        )));
        std::thread::sleep(Duration::from_millis(3));
    }
    let bob = c.new_session(r#"{"owner":"bob","expiry":{"duration":0,"maxLifetime":1}}"#);
    let r = c.call(r#"{"SH_SAVE":{"name":"owners"}}"#);
    assert_eq!(st(&r), 121, "{r}");
    server.terminate();
    // bob's lifetime (1 s from its creation) ends while the server is down.
    std::thread::sleep(Duration::from_millis(1100));
    for shards in ["3", "1"] {
        let server = Server::start(
            &[
                &[
                    "--shards",
                    shards,
                    "--persist-path",
                    dir.arg(),
                    "--load-name",
                    "owners",
                ],
                &quiet[..],
            ]
            .concat(),
        );
        let mut c = server.client();
        assert_eq!(owner_sessions(&mut c, "ann"), ann, "on {shards} shards");
        assert!(
            !exists(&mut c, bob),
            "a lifetime stays absolute across a load"
        );
        let info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{}}}}}"#, ann[1]));
        assert_eq!(info["owner"].as_str(), Some("ann"));
        assert_eq!(info["expiry"]["maxLifetime"].as_u64(), Some(3600));
        let left = info["expiry"]["lifetimeRemaining"]
            .as_u64()
            .expect("lifetime");
        assert!((3590..=3600).contains(&left), "{left}");
        let r = c.call(r#"{"SH_OWNER_END":{"owner":"ann"}}"#);
        assert_eq!(r["cnt"].as_u64(), Some(5), "on {shards} shards");
    }
}

/// A dataset written by the server before owners existed (snapshot format
/// version 1, kept in tests/it/fixtures) still loads, sessions and all.
#[test]
fn a_version_1_snapshot_still_loads() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/v1");
    let dir = TempDir::new("v1-snapshot");
    copy_dir(&fixture, dir.path());
    let server = Server::start(&[
        "--shards",
        "2",
        "--persist-path",
        dir.arg(),
        "--load-name",
        "legacy",
    ]);
    let mut c = server.client();
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(
        (r["totalSessions"].as_u64(), r["totalKeys"].as_u64()),
        (Some(3), Some(4))
    );
    let r = c.call(r#"{"SH_OPEN":{"name":"legacy-shared"}}"#);
    assert_eq!(st(&r), 1, "{r}");
    let tkn = r["tkn"].as_u64().expect("tkn");
    let r = c.call(&format!(
        r#"{{"SH_GET":{{"tkn":{tkn},"keys":["cart","n"]}}}}"#
    ));
    assert_eq!(r["keys"]["cart"][0].as_str(), Some("apple"));
    assert_eq!(r["keys"]["n"].as_u64(), Some(18446744073709551615));
    let info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    assert_eq!(info["expiry"]["duration"].as_u64(), Some(600));
    assert!(info.get("owner").is_none());
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
