//! Session events through the real binary on two shards: every kind with
//! and without keys, filters, order, both shards into one subscriber,
//! unsubscribing, resuming after a disconnect (exactly the missed events),
//! a ring overflowed by a stalled subscriber, a cursor from before a
//! restart, and bad parameters.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{Client, Server, one_client_per_shard, st};
use simd_json::OwnedValue;
use simd_json::prelude::*;

fn two_shards(extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Subscribes `c` with `params`; returns the answer's body.
fn subscribe(c: &mut Client, params: &str) -> OwnedValue {
    c.call(&format!(r#"{{"SH_SUBSCRIBE":{params}}}"#))
}

/// The next pushed event within `wait`, or None.
fn next_event(c: &mut Client, wait: Duration) -> Option<OwnedValue> {
    c.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let message = match c.ws.read() {
        Ok(tungstenite::Message::Text(t)) => t.to_string(),
        Ok(other) => panic!("unexpected message {other:?}"),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return None;
        }
        Err(e) => panic!("read: {e}"),
    };
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = message.into_bytes();
    let v = simd_json::to_owned_value(&mut bytes).expect("an event is JSON");
    Some(v["SH_EVENT"].clone())
}

/// Every event that arrives until none has for `quiet`.
fn drain(c: &mut Client, quiet: Duration) -> Vec<OwnedValue> {
    let mut events = Vec::new();
    while let Some(e) = next_event(c, quiet) {
        events.push(e);
    }
    events
}

fn kind(e: &OwnedValue) -> &str {
    e["event"].as_str().expect("event")
}

fn tkn(e: &OwnedValue) -> u64 {
    e["tkn"].as_u64().expect("tkn")
}

const QUIET: Duration = Duration::from_millis(400);

#[test]
fn every_kind_with_and_without_keys() {
    let server = two_shards(&[]);
    let mut with = server.client();
    let mut without = server.client();
    assert_eq!(st(&subscribe(&mut with, r#"{"withKeys":true}"#)), 1);
    let r = subscribe(&mut without, "{}");
    assert_eq!(st(&r), 1);
    assert!(r["cursor"].as_str().is_some_and(|c| !c.is_empty()), "{r}");
    let mut c = server.client();
    let ended = c.new_session(r#"{"name":"e","owner":"ann","keys":{"cart":[1,2]}}"#);
    let expires =
        c.new_session(r#"{"keys":{"k":"v"},"expiry":{"duration":1,"deleteSession":true}}"#);
    let clears = c.new_session(r#"{"keys":{"k":1},"expiry":{"duration":1}}"#);
    let lifetime = c.new_session(r#"{"keys":{"k":2},"expiry":{"duration":0,"maxLifetime":1}}"#);
    assert_eq!(
        st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{ended}}}}}"#))),
        1
    );
    std::thread::sleep(Duration::from_millis(1300));
    for (sub, keys) in [(&mut with, true), (&mut without, false)] {
        let events = drain(sub, QUIET);
        let find = |k: &str, t: u64| {
            events
                .iter()
                .find(|e| kind(e) == k && tkn(e) == t)
                .unwrap_or_else(|| panic!("no {k} of {t} in {events:?}"))
                .clone()
        };
        for t in [ended, expires, clears, lifetime] {
            let created = find("created", t);
            assert!(created.get("keys").is_none(), "created carries no keys");
        }
        let e = find("ended", ended);
        assert_eq!(e["name"].as_str(), Some("e"));
        assert_eq!(e["owner"].as_str(), Some("ann"));
        assert_eq!(e.get("keys").is_some(), keys, "{e}");
        if keys {
            assert_eq!(e["keys"]["cart"][1].as_u64(), Some(2));
        }
        let e = find("expired", expires);
        assert_eq!(e["reason"].as_str(), Some("idle"));
        assert!(
            e["deadline"]
                .as_u64()
                .is_some_and(|d| d <= e["at"].as_u64().unwrap())
        );
        assert_eq!(e.get("keys").is_some(), keys, "{e}");
        let e = find("keysExpired", clears);
        assert!(e.get("reason").is_none());
        assert_eq!(e.get("keys").is_some(), keys, "{e}");
        let e = find("expired", lifetime);
        assert_eq!(e["reason"].as_str(), Some("lifetime"), "{e}");
        // Sent when due, not when something next looked: nothing touched
        // these sessions after they were made (the manual-clock test in
        // src/router/events.rs pins the tick).
        // Cursors move on with every event.
        let cursors: HashSet<&str> = events
            .iter()
            .map(|e| e["cursor"].as_str().unwrap())
            .collect();
        assert_eq!(cursors.len(), events.len());
        assert_eq!(events.len(), 8, "{events:?}");
    }
    // The session cleared by expiry lives on: nothing more once it is empty.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(drain(&mut without, QUIET).is_empty());
}

#[test]
fn filters_and_both_shards_into_one_subscriber() {
    let server = two_shards(&[]);
    let mut clients = one_client_per_shard(&server, 2);
    let mut sub = server.client();
    let r = subscribe(&mut sub, r#"{"events":["ended"],"owner":"bob"}"#);
    assert_eq!(st(&r), 1);
    let mut all = server.client();
    assert_eq!(
        st(&subscribe(&mut all, r#"{"events":["created","ended"]}"#)),
        1
    );
    let mut made = Vec::new();
    for (c, _) in clients.iter_mut() {
        for owner in ["bob", "ann"] {
            made.push((owner, c.new_session(&format!(r#"{{"owner":"{owner}"}}"#))));
        }
        made.push(("", c.new_session("{}")));
    }
    for (i, &(_, t)) in made.iter().enumerate() {
        let c = &mut clients[i % 2].0;
        assert_eq!(st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{t}}}}}"#))), 1);
    }
    let events = drain(&mut sub, QUIET);
    let bobs: HashSet<u64> = made
        .iter()
        .filter(|(o, _)| *o == "bob")
        .map(|&(_, t)| t)
        .collect();
    assert_eq!(events.len(), bobs.len(), "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| kind(e) == "ended" && bobs.contains(&tkn(e)))
    );
    // Both shards' events reach one subscriber; per session, in order.
    let events = drain(&mut all, QUIET);
    assert_eq!(events.len(), 2 * made.len(), "{events:?}");
    for &(_, t) in &made {
        let kinds: Vec<&str> = events.iter().filter(|e| tkn(e) == t).map(kind).collect();
        assert_eq!(kinds, ["created", "ended"]);
    }
    let shards: HashSet<usize> = made
        .iter()
        .map(|&(_, t)| nemesisdb::mesh::shard_of(t, 2))
        .collect();
    assert_eq!(shards.len(), 2, "sessions on both shards");
}

#[test]
fn unsubscribe_and_replace_stop_the_old_stream() {
    let server = two_shards(&[]);
    let mut sub = server.client();
    let mut c = server.client();
    assert_eq!(st(&subscribe(&mut sub, "{}")), 1);
    c.new_session("{}");
    // The answer comes after the events already due; none follows it.
    sub.send_text(r#"{"SH_UNSUBSCRIBE":{}}"#);
    loop {
        let mut text = sub.recv_text().into_bytes();
        let v = simd_json::to_owned_value(&mut text).unwrap();
        if let Some(r) = v.get("SH_UNSUBSCRIBE_RSP") {
            assert_eq!(r.as_object().map(|o| o.len()), Some(1), "{v}");
            assert_eq!(st(r), 1);
            break;
        }
        assert!(v.get("SH_EVENT").is_some(), "{v}");
    }
    c.new_session("{}");
    assert!(drain(&mut sub, QUIET).is_empty());
    assert_eq!(
        st(&sub.call(r#"{"SH_UNSUBSCRIBE":{}}"#)),
        1,
        "again: still 1"
    );
    // A second subscribe replaces the first: only the new filter applies.
    assert_eq!(st(&subscribe(&mut sub, "{}")), 1);
    assert_eq!(st(&subscribe(&mut sub, r#"{"events":["ended"]}"#)), 1);
    let t = c.new_session("{}");
    c.call(&format!(r#"{{"SH_END":{{"tkn":{t}}}}}"#));
    let events = drain(&mut sub, QUIET);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(kind(&events[0]), "ended");
}

#[test]
fn resuming_after_a_disconnect_delivers_exactly_the_missed_events() {
    let server = two_shards(&[]);
    let mut clients = one_client_per_shard(&server, 2);
    let mut sub = server.client();
    let cursor0 = subscribe(&mut sub, "{}")["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut made = Vec::new();
    for i in 0..10 {
        made.push(clients[i % 2].0.new_session("{}"));
    }
    // Read half, keep the last cursor, drop the connection.
    let mut seen = Vec::new();
    let mut cursor = cursor0.clone();
    for _ in 0..5 {
        let e = next_event(&mut sub, Duration::from_secs(5)).expect("an event");
        seen.push(tkn(&e));
        cursor = e["cursor"].as_str().unwrap().to_string();
    }
    drop(sub);
    for i in 0..6 {
        made.push(clients[i % 2].0.new_session("{}"));
    }
    let mut again = server.client();
    let r = subscribe(&mut again, &format!(r#"{{"after":"{cursor}"}}"#));
    assert_eq!(st(&r), 1, "{r}");
    let rest: Vec<u64> = drain(&mut again, QUIET).iter().map(tkn).collect();
    seen.extend(&rest);
    let mut sorted_seen = seen.clone();
    sorted_seen.sort_unstable();
    let mut sorted_made = made.clone();
    sorted_made.sort_unstable();
    assert_eq!(sorted_seen, sorted_made, "none twice, none missing");
    // From the very first cursor: all of them again.
    let mut third = server.client();
    assert_eq!(
        st(&subscribe(
            &mut third,
            &format!(r#"{{"after":"{cursor0}"}}"#)
        )),
        1
    );
    assert_eq!(drain(&mut third, QUIET).len(), made.len());
}

#[test]
fn a_small_ring_reports_what_a_late_subscriber_lost() {
    let server = two_shards(&["--event-retention", "100"]);
    let mut clients = one_client_per_shard(&server, 2);
    let mut sub = server.client();
    let cursor = subscribe(&mut sub, r#"{"events":["ended"]}"#)["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    drop(sub);
    // 300 events per shard (created and ended of 150 sessions): 200 of
    // each ring are gone, 100 kept, 50 of them `ended`.
    for (c, _) in clients.iter_mut() {
        for _ in 0..150 {
            let t = c.new_session("{}");
            assert_eq!(st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{t}}}}}"#))), 1);
        }
    }
    let mut late = server.client();
    let r = subscribe(
        &mut late,
        &format!(r#"{{"events":["ended"],"after":"{cursor}"}}"#),
    );
    assert_eq!(st(&r), 160, "{r}");
    // The two sessions made by one_client_per_shard add a created each.
    let lost = r["lost"].as_i64().unwrap();
    assert!((400..=402).contains(&lost), "{r}");
    let events = drain(&mut late, QUIET);
    assert_eq!(events.len(), 100, "the 50 ended events each ring kept");
    assert!(events.iter().all(|e| kind(e) == "ended"));
}

/// A subscriber that stops reading while events pour in: the server stops
/// sending to it, the rings move on, and when it reads again it is told
/// exactly how many it lost: what it got plus what it lost is everything.
#[test]
fn a_stalled_subscriber_gets_lost_with_the_count() {
    let server = two_shards(&["--event-retention", "100", "--max-output-buffer", "65536"]);
    let mut sub = server.client();
    assert_eq!(
        st(&subscribe(
            &mut sub,
            r#"{"events":["ended"],"withKeys":true}"#
        )),
        1
    );
    let mut c = server.client();
    // 6000 x 10 KB: 60 MB of events, with keys, that it does not read.
    let big = "x".repeat(10_000);
    let total = 6000;
    for _ in 0..total / 100 {
        for _ in 0..100 {
            c.queue_text(format!(r#"{{"SH_NEW":{{"keys":{{"v":"{big}"}}}}}}"#));
        }
        c.flush();
        let mut made = Vec::new();
        for _ in 0..100 {
            let r = c.recv_json();
            made.push(r["SH_NEW_RSP"]["tkn"].as_u64().unwrap());
        }
        for t in made {
            c.queue_text(format!(r#"{{"SH_END":{{"tkn":{t}}}}}"#));
        }
        c.flush();
        for _ in 0..100 {
            assert_eq!(c.recv_json()["SH_END_RSP"]["st"].as_u64(), Some(1));
        }
    }
    // Held for it: positions and credit, not copies.
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    assert!(rss_kib < 48 * 1024, "resident {rss_kib} KiB");
    let (mut got, mut lost) = (0u64, 0u64);
    while let Some(e) = next_event(&mut sub, Duration::from_millis(1500)) {
        match kind(&e) {
            "lost" => lost += e["lost"].as_u64().unwrap(),
            "ended" => got += 1,
            other => panic!("{other}"),
        }
    }
    assert!(lost > 0, "the rings moved past it (got {got})");
    assert_eq!(got + lost, total, "got {got}, lost {lost}");
}

#[test]
fn a_cursor_from_before_a_restart_answers_160_with_unknown_loss() {
    let cursor = {
        let server = two_shards(&[]);
        let mut sub = server.client();
        subscribe(&mut sub, "{}")["cursor"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let server = two_shards(&[]);
    let mut c = server.client();
    let t = c.new_session("{}");
    let mut sub = server.client();
    let r = subscribe(&mut sub, &format!(r#"{{"after":"{cursor}"}}"#));
    assert_eq!((st(&r), r["lost"].as_i64()), (160, Some(-1)), "{r}");
    assert_ne!(r["cursor"].as_str(), Some(cursor.as_str()));
    let events = drain(&mut sub, QUIET);
    assert_eq!(events.len(), 1, "from the oldest kept: {events:?}");
    assert_eq!(tkn(&events[0]), t);
}

#[test]
fn bad_parameters_are_refused_and_subscribe_nothing() {
    let server = two_shards(&[]);
    let mut sub = server.client();
    let mut c = server.client();
    for (params, status) in [
        (r#"{"events":"expired"}"#, 41),
        (r#"{"events":[1]}"#, 41),
        (r#"{"events":["nope"]}"#, 42),
        (r#"{"events":["ended","ended"]}"#, 42),
        (r#"{"events":[]}"#, 42),
        (r#"{"owner":5}"#, 41),
        (r#"{"owner":""}"#, 42),
        (r#"{"withKeys":"yes"}"#, 41),
        (r#"{"after":5}"#, 41),
        (r#"{"after":"garbage"}"#, 42),
        (r#"{"after":"0123456789abcdef"}"#, 42),
        (r#"{"after":"0123456789abcdef.1.x"}"#, 42),
        (r#"{"ifVersion":1}"#, 41),
    ] {
        let r = subscribe(&mut sub, params);
        assert_eq!(st(&r), status, "{params}: {r}");
    }
    // This server's own cursor, but for three shards.
    let mut other = server.client();
    let own = subscribe(&mut other, "{}")["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let r = subscribe(&mut sub, &format!(r#"{{"after":"{own}.0"}}"#));
    assert_eq!(st(&r), 42, "{r}");
    c.new_session("{}");
    assert!(
        drain(&mut sub, QUIET).is_empty(),
        "no subscription was made"
    );
    // A refused subscribe keeps the subscription there was.
    assert_eq!(st(&subscribe(&mut sub, r#"{"events":["created"]}"#)), 1);
    assert_eq!(st(&subscribe(&mut sub, r#"{"events":["nope"]}"#)), 42);
    let t = c.new_session("{}");
    let events = drain(&mut sub, QUIET);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(tkn(&events[0]), t);
}

/// With a small output limit, a backlog of events still flows: credit comes
/// back as soon as the connection has taken its events, not at the next
/// housekeeping tick (a quiet shard would otherwise send one credit's worth
/// every half second, and the drain below would stop short).
#[test]
fn a_backlog_flows_under_a_small_output_limit() {
    let server = two_shards(&["--max-output-buffer", "262144"]);
    let mut sub = server.client();
    assert_eq!(
        st(&subscribe(
            &mut sub,
            r#"{"events":["ended"],"withKeys":true}"#
        )),
        1
    );
    let mut c = server.client();
    let big = "x".repeat(5000);
    let mut made = Vec::new();
    for _ in 0..800 {
        c.queue_text(format!(r#"{{"SH_NEW":{{"keys":{{"v":"{big}"}}}}}}"#));
    }
    c.flush();
    for _ in 0..800 {
        made.push(c.recv_json()["SH_NEW_RSP"]["tkn"].as_u64().unwrap());
    }
    for t in &made {
        c.queue_text(format!(r#"{{"SH_END":{{"tkn":{t}}}}}"#));
    }
    c.flush();
    for _ in 0..800 {
        assert_eq!(c.recv_json()["SH_END_RSP"]["st"].as_u64(), Some(1));
    }
    let events = drain(&mut sub, QUIET);
    assert_eq!(events.len(), made.len(), "4 MB of events, none held back");
    assert!(
        events
            .iter()
            .all(|e| e["keys"]["v"].as_str().map(str::len) == Some(5000))
    );
}
