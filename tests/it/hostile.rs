//! Hostile clients through the real binary (two shards): every JSON type in
//! every parameter of every command, deep nesting, huge numbers, bad
//! escapes, lone surrogates, duplicate keys, invalid UTF-8, odd framing.
//! Each request gets a status from the protocol table (never 1000), the
//! connection stays open, stored data is untouched unless the answer is Ok,
//! and other clients notice nothing. Values come back exactly as sent.
//!
//! The response checks are the fuzz target's (the oracle crate,
//! `fuzz/oracle/`), so the binary and `LocalDispatcher` are held to the same
//! promises.
//!
//! The tests about framing and misbehaving peers run twice, over plain
//! WebSocket and over TLS (`<test>::plain`, `<test>::tls`): TLS records cut
//! frames at other places, and the server reads through rustls.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::{Client, Server, TempDir, Transport, body, raw, read_to_close, st};
use nemesisdb::mesh::shard_of;
use nemesisdb_oracle as oracle;
use simd_json::prelude::*;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

const SEEDED_KEYS: &str = r#"{"k":"v","n":1E2,"o":{"x":[1.0,"\u00e9",null]}}"#;

fn two_shards() -> Server {
    Server::start(&["--shards", "2"])
}

/// Declares `<test>::plain` and `<test>::tls`, which run the function
/// `<test>(transport)` over each transport.
macro_rules! over_each_transport {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            use crate::support::Transport;

            #[test]
            fn plain() {
                super::$test(Transport::Plain)
            }

            #[test]
            fn tls() {
                super::$test(Transport::Tls)
            }
        }
    )+};
}

over_each_transport!(
    a_hostile_client_does_not_disturb_others,
    framing_edge_cases_get_the_protocol_answers,
    invalid_utf8_in_fragments_gets_3_then_a_1007_close,
    protocol_violations_close_only_their_connection,
    frame_headers_claiming_huge_payloads_close_with_1009,
    a_request_sent_byte_by_byte_is_answered_and_blocks_nobody,
    a_client_that_half_closes_still_gets_its_answers,
);

/// One client per shard, each with a session on its own shard holding
/// [`SEEDED_KEYS`]: requests about the other client's session cross shards.
fn one_session_per_shard(server: &Server) -> Vec<(Client, u64)> {
    let mut found: Vec<Option<(Client, u64)>> = vec![None, None];
    for _ in 0..200 {
        let mut c = server.client();
        let tkn = c.new_session("{}");
        let shard = shard_of(tkn, 2);
        if found[shard].is_none() {
            let r = c.call(&format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{SEEDED_KEYS}}}}}"#
            ));
            assert_eq!(st(&r), 1);
            found[shard] = Some((c, tkn));
        } else {
            c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#));
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("the kernel never spread connections over both shards");
}

/// What other clients can see: totals, and the seeded sessions' keys.
fn state(c: &mut Client, tokens: &[u64]) -> String {
    let info = c.call(r#"{"SV_INFO":{}}"#);
    let mut out = format!(
        "sessions {} keys {} bytes {}",
        info["sessions"], info["keys"], info["memoryUsed"]
    );
    for tkn in tokens {
        c.send_text(&format!(
            r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k","n","o","absent"]}}}}"#
        ));
        out.push('\n');
        out.push_str(&c.recv_text());
    }
    out
}

/// Sends `request` as text on `c` and checks the answer as the fuzz target
/// does; returns its status.
fn send_checked(c: &mut Client, request: &str) -> u64 {
    c.send_text(request);
    let response = c.recv_text();
    oracle::check(request.as_bytes(), true, response.as_bytes()).status
}

/// Every hostile value in every parameter slot, plus deep nesting, each sent
/// to sessions on both shards from one connection.
#[test]
fn hostile_json_in_every_parameter_changes_nothing_unless_ok() {
    let server = two_shards();
    let mut owners = one_session_per_shard(&server);
    let mut tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    let mut c = server.client();
    // Reads the state from its own connection: other clients see no change.
    let mut watcher = server.client();
    let mut values: Vec<String> = oracle::LITERALS.iter().map(|l| l.to_string()).collect();
    values.extend(oracle::STRING_PIECES.iter().map(|p| format!("\"{p}\"")));
    values.push(format!("{}{}", "[".repeat(1020), "]".repeat(1020)));
    values.push(format!("{}{}", "[".repeat(1100), "]".repeat(1100)));
    values.push(format!("{}1{}", "{\"a\":".repeat(2000), "}".repeat(2000)));
    values.push(r#"{"a":1,"a":2,"\u0061":3}"#.to_string());

    let mut before = state(&mut watcher, &tokens);
    let mut answered = 0;
    for slot in oracle::SLOTS {
        for value in &values {
            let request = slot
                .replace('@', value)
                .replace("$0", &tokens[0].to_string())
                .replace("$1", &tokens[1].to_string());
            c.send_text(&request);
            let response = c.recv_text();
            let checked = oracle::check(request.as_bytes(), true, response.as_bytes());
            let status = checked.status;
            answered += 1;
            let after = state(&mut watcher, &tokens);
            if status != 1 {
                assert_eq!(before, after, "changed by {request} (status {status})");
                continue;
            }
            // A session this made goes at once: one that expired later, in
            // the middle of another request, would look changed by it.
            if checked.command == "SH_NEW" {
                let tkn = checked.body["tkn"].as_u64().expect("checked");
                assert_eq!(st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#))), 1);
            }
            // An Ok may have ended or cleared a seeded session: seed again.
            for (i, (owner, tkn)) in owners.iter_mut().enumerate() {
                let r = owner.call(&format!(r#"{{"SH_EXISTS":{{"tkns":[{tkn}]}}}}"#));
                if r["exist"].as_array().is_some_and(|a| a.is_empty()) {
                    *tkn = owner.new_session("{}");
                    tokens[i] = *tkn;
                }
                let set = format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{SEEDED_KEYS}}}}}"#);
                assert_eq!(st(&owner.call(&set)), 1);
            }
            before = state(&mut watcher, &tokens);
        }
    }
    assert!(answered > 4000);
    // The connection is still open and serving.
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

/// Fixed cases with the status each gets, through the binary, on both shards.
#[test]
fn hostile_cases_get_their_statuses() {
    let server = two_shards();
    let owners = one_session_per_shard(&server);
    let tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    let mut c = server.client();
    let before = state(&mut c, &tokens);
    for tkn in &tokens {
        let deep = |n: usize| {
            format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"d":{}{}}}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let cases: Vec<(String, u64)> = vec![
            (deep(1100), 3),
            (format!("{}{}", "{\"a\":".repeat(3000), "}".repeat(3000)), 3),
            (r#"{"SH_NEW":{"name":"\ud800"}}"#.into(), 3),
            (r#"{"SH_NEW":{"name":"\udc00x"}}"#.into(), 3),
            (r#"{"SH_NEW":{"name":"\q"}}"#.into(), 3),
            (r#"{"SH_NEW":{"name":"\u00G0"}}"#.into(), 3),
            (
                format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":1e}}}}}}"#),
                3,
            ),
            (
                format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":"\ud800"}}}}}}"#),
                3,
            ),
            (
                format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":01}}}}}}"#),
                3,
            ),
            (format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":[]}}}}"#), 41),
            (format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":null}}}}"#), 41),
            (format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":{{}}}}}}"#), 41),
            (
                format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":[1],"keys":{{"a":1}}}}}}"#),
                13,
            ),
            (r#"{"SH_END":{"tkn":18446744073709551616}}"#.into(), 101),
            (r#"{"SH_END":{"tkn":1e400}}"#.into(), 101),
            (format!(r#"{{"SH_END":{{"tkn":{tkn},"tkn":{tkn}}}}}"#), 13),
            (format!(r#"{{"SH_RMV":{{"tkn":{tkn},"keys":["k"],"keys":["k"]}}}}"#), 13),
            (r#"{"SH_NEW":{"expiry":{"duration":1,"deleteSession":true,"deleteSession":false}}}"#.into(), 13),
            (r#"{"SH_END":{"tkn":"18446744073709551616"}}"#.into(), 101),
            (r#"{"SH_END":{"tkn":-1}}"#.into(), 101),
            (r#"{"SH_END":{"tkn":1.0}}"#.into(), 101),
            (r#"{"SH_END":{"tkn":[1]}}"#.into(), 101),
            (r#"{"SH_END":{"tkn":{"tkn":1}}}"#.into(), 101),
            (r#"{"SH_END":{"tkn":true}}"#.into(), 101),
            (r#"{"SH_NEW":{"expiry":{"duration":1E2}}}"#.into(), 41),
            (r#"{"SH_NEW":{"expiry":{"duration":-5}}}"#.into(), 42),
            (
                r#"{"SH_NEW":{"expiry":{"duration":99999999999}}}"#.into(),
                42,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"duration":5,"deleteSession":"true"}}}"#.into(),
                41,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"duration":5,"extendOnGet":null}}}"#.into(),
                41,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"duration":5,"extendOnSetAdd":0}}}"#.into(),
                41,
            ),
            (r#"{"SH_NEW":{"name":"alpha","shared":"true"}}"#.into(), 41),
            (r#"{"SH_NEW":{"name":["alpha"]}}"#.into(), 41),
            (
                format!(r#"{{"SH_NEW":{{"name":"{}"}}}}"#, "é".repeat(129)),
                42,
            ),
            (r#"{"SH_OPEN":{"name":null}}"#.into(), 41),
            (r#"{"SH_EXISTS":{"tkns":{"0":1}}}"#.into(), 41),
            (r#"{"SH_SAVE":{"name":"a","tkns":"all"}}"#.into(), 41),
            (r#"{"SH_LOAD":{"name":"a/../b"}}"#.into(), 42),
            (r#"{"SH_NEW":{},"SH_NEW":{}}"#.into(), 11),
            (r#"{"SH_NEW":{},"sh_new":{}}"#.into(), 11),
            (r#"{"SH_NEW\u0000":{}}"#.into(), 10),
            (r#"{"":{}}"#.into(), 10),
            (r#"{"SH_NEW":"{}"}"#.into(), 12),
            (r#"{"SH_NEW":null}"#.into(), 12),
            (r#"{"SH_NEW":{}"#.into(), 3),
            ("\u{feff}{\"SV_INFO\":{}}".into(), 3),
        ];
        for (request, status) in cases {
            let got = send_checked(&mut c, &request);
            assert_eq!(got, status, "{}", &request[..request.len().min(100)]);
        }
    }
    assert_eq!(state(&mut c, &tokens), before);
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

/// Values are stored as written: number spelling, escapes and all; only the
/// whitespace between tokens goes. On the connection's own shard and across.
#[test]
fn values_come_back_exactly_as_sent() {
    let server = two_shards();
    let mut owners = one_session_per_shard(&server);
    let tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    let (c, _) = &mut owners[0];
    for tkn in tokens {
        let set = format!(
            "{{ \"SH_SET\" : {{ \"tkn\" : {tkn} ,\n\t\"keys\" : {{ \"a\" : 1E2 , \"b\":-0,\"c\" :\r\n1.0, \
             \"d\":\"\\u00e9\", \"e\" : [ 1 , {{ \"x\" : \" a\\tb \" }} , [ ] ] , \"f\":-1.5e-3, \
             \"g\":18446744073709551615, \"h\":-9223372036854775808, \"i\":\"\\ud83d\\ude00\", \
             \"j\":\"q\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"k\" : {{ }} , \"l\":1E+2, \"m\":0.10, \
             \"\\u006b\\u0065y\":true, \"\\u00e9t\\u00e9\":\"été\", \"big\": [ 18446744073709551616 , \
             -1e400 , 123456789012345678901234567890.5e-999 ] }} }} }}"
        );
        c.send_text(&set);
        assert_eq!(st(&body(&c.recv_json(), "SH_SET_RSP")), 1, "{set}");
        c.send_text(&format!(
            r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a","b","c","d","e","f","g","h","i","j","k","l","m","key","été","big"]}}}}"#
        ));
        assert_eq!(
            c.recv_text(),
            format!(
                r#"{{"SH_GET_RSP":{{"st":1,"tkn":{tkn},"keys":{{"a":1E2,"b":-0,"c":1.0,"d":"\u00e9","e":[1,{{"x":" a\tb "}},[]],"f":-1.5e-3,"g":18446744073709551615,"h":-9223372036854775808,"i":"\ud83d\ude00","j":"q\"\\\/\b\f\n\r\t","k":{{}},"l":1E+2,"m":0.10,"key":true,"été":"été","big":[18446744073709551616,-1e400,123456789012345678901234567890.5e-999]}}}}}}"#
            )
        );
        // SH_ADD and SH_CLEAR_SET keep the text the same way.
        let add = format!(r#"{{"SH_ADD":{{"tkn":{tkn},"keys":{{"added" : [ -0.0 , 2E-1 ]}}}}}}"#);
        assert_eq!(st(&c.call(&add)), 1);
        c.send_text(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["added"]}}}}"#));
        assert!(c.recv_text().contains(r#""keys":{"added":[-0.0,2E-1]}"#));
        let clear_set = format!(r#"{{"SH_CLEAR_SET":{{"tkn":{tkn},"keys":{{"p" : "\/" }}}}}}"#);
        assert_eq!(st(&c.call(&clear_set)), 1);
        c.send_text(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["p","a"]}}}}"#));
        assert!(c.recv_text().contains(r#""keys":{"p":"\/"}"#));
    }
}

/// A client sending garbage as fast as it can: another client's requests
/// keep being answered correctly, and the garbage sender's connection stays
/// open.
fn a_hostile_client_does_not_disturb_others(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2"]);
    let owners = one_session_per_shard(&server);
    let tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    drop(owners);
    let done = Arc::new(AtomicBool::new(false));
    let connector = server.connector();
    let reader = {
        let done = done.clone();
        let tokens = tokens.clone();
        std::thread::spawn(move || {
            let mut c = connector.client();
            let mut rounds = 0u64;
            while !done.load(Ordering::Relaxed) || rounds < 50 {
                for tkn in &tokens {
                    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k","n"]}}}}"#));
                    assert_eq!(r["keys"]["k"].as_str(), Some("v"));
                    assert_eq!(r["keys"]["n"].as_f64(), Some(100.0));
                }
                rounds += 1;
            }
            rounds
        })
    };
    let mut hostile = server.client();
    // A deterministic stream of garbage: xorshift bytes, half of them
    // shaped like JSON, pipelined.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b"{}[]\":,\\0123456789-+.eEtrufalsnSH_GETKYNW ";
    // Every message sent, to check each answer against its request, in
    // order; valid requests about both shards' sessions are mixed in.
    let mut sent: Vec<(Vec<u8>, bool)> = Vec::new();
    for round in 0..600 {
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if round % 2 == 0 {
                    alphabet[(r % alphabet.len() as u64) as usize]
                } else {
                    r as u8
                }
            })
            .collect();
        let text = round % 7 != 3;
        let opcode = if text { TEXT } else { BINARY };
        hostile.ws.write(frame(&bytes, opcode, true)).unwrap();
        sent.push((bytes, text));
        if round % 5 == 0 {
            let tkn = tokens[round % 2];
            let get = format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#);
            hostile.queue_text(get.clone());
            sent.push((get.into_bytes(), true));
        }
    }
    for n in [1100, 50_000] {
        for deep in [
            format!("{}{}", "[".repeat(n), "]".repeat(n)),
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)),
        ] {
            hostile.queue_text(deep.clone());
            sent.push((deep.into_bytes(), true));
        }
    }
    hostile.flush();
    for (request, text) in &sent {
        let response = hostile.recv_text();
        let checked = oracle::check(request, *text, response.as_bytes());
        if checked.command == "SH_COUNT" {
            assert_eq!(checked.body["cnt"].as_u64(), Some(3), "{response}");
        }
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().expect("reader") >= 50);
    assert_eq!(st(&hostile.call(r#"{"SV_INFO":{}}"#)), 1);
}

fn frame(data: &[u8], opcode: OpCode, fin: bool) -> Message {
    Message::Frame(Frame::message(data.to_vec(), opcode, fin))
}

const TEXT: OpCode = OpCode::Data(Data::Text);
const BINARY: OpCode = OpCode::Data(Data::Binary);
const CONTINUE: OpCode = OpCode::Data(Data::Continue);

/// Framing cases [`crate::server`] does not cover: empty and blank text,
/// fragmented messages (one answer per message, UTF-8 checked over the
/// whole message, pings answered in between), a message of exactly
/// `maxPayload` bytes.
fn framing_edge_cases_get_the_protocol_answers(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2", "--max-payload", "4096"]);
    let mut c = server.client();
    let err = |c: &mut Client| body(&c.recv_json(), "ERR");

    c.send_text("");
    assert_eq!(st(&err(&mut c)), 3, "empty text");
    c.send_text(" \t\r\n");
    assert_eq!(st(&err(&mut c)), 3, "blank text");
    c.send_text(" \"SV_INFO\" ");
    assert_eq!(st(&err(&mut c)), 13);
    c.send_text("\0");
    assert_eq!(st(&err(&mut c)), 3);

    // A request in three fragments, split inside "é" (0xC3 0xA9).
    let request = "{\"SH_NEW\":{\"name\":\"caf\u{e9}\"}}".as_bytes();
    let split = request.iter().position(|&b| b == 0xc3).unwrap() + 1;
    c.ws.write(frame(&request[..5], TEXT, false)).unwrap();
    c.ws.write(frame(&request[5..split], CONTINUE, false))
        .unwrap();
    c.ws.write(Message::Ping(b"p".to_vec().into())).unwrap();
    c.ws.write(frame(&request[split..], CONTINUE, true))
        .unwrap();
    c.ws.write(Message::Text(r#"{"SH_INFO_ALL":{}}"#.into()))
        .unwrap();
    c.flush();
    // Two answers, in order, and a pong somewhere among them.
    let (mut texts, mut pong) = (Vec::new(), false);
    while texts.len() < 2 || !pong {
        match c.ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"p");
                pong = true;
            }
            Message::Text(t) => texts.push(t.to_string().into_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let first = simd_json::to_owned_value(&mut texts[0]).unwrap();
    let r = body(&first, "SH_NEW_RSP");
    assert_eq!((st(&r), r["name"].as_str()), (1, Some("café")));
    let second = simd_json::to_owned_value(&mut texts[1]).unwrap();
    assert_eq!(st(&body(&second, "SH_INFO_ALL_RSP")), 1);

    // A fragmented binary message is one binary message.
    c.ws.write(frame(b"{\"SV_", BINARY, false)).unwrap();
    c.ws.write(frame(b"INFO\":{}}", CONTINUE, true)).unwrap();
    c.flush();
    assert_eq!(st(&err(&mut c)), 2);

    // Exactly maxPayload bytes is a message; one byte more is not.
    let at_limit = format!("{{\"SV_INFO\":{{\"x\":\"{}\"}}}}", "y".repeat(4096 - 20));
    assert_eq!(at_limit.len(), 4096);
    assert_eq!(st(&c.call(&at_limit)), 1);
    let hostile_at_limit = "[".repeat(4096);
    c.send_text(&hostile_at_limit);
    assert_eq!(st(&err(&mut c)), 3);
    // In fragments, the limit is on the whole message.
    c.ws.write(frame(&[b'['; 3000], TEXT, false)).unwrap();
    c.ws.write(frame(&[b']'; 1097], CONTINUE, true)).unwrap();
    c.flush();
    loop {
        match c.ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Size);
                break;
            }
            Ok(Message::Pong(_)) => continue,
            other => panic!("expected close 1009, got {other:?}"),
        }
    }
    // Others are unaffected.
    let mut d = server.client();
    assert_eq!(st(&d.call(r#"{"SH_INFO_ALL":{}}"#)), 1);
}

/// Text that is not UTF-8 gets status 3 and the connection stays open,
/// however the message is fragmented: the bad bytes in the first fragment,
/// in a later one, or only bad once the fragments are joined.
/// Invalid UTF-8 split over fragments: tungstenite cannot resync after it,
/// so the server answers 3 and then ends the connection with 1007 (RFC 6455
/// §8.1) instead of dropping it mid-stream; nothing stored changes.
fn invalid_utf8_in_fragments_gets_3_then_a_1007_close(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2"]);
    let cases: [&[&[u8]]; 3] = [
        // Bad in the first fragment.
        &[b"\"\xff", b"\""],
        // Valid so far, bad once the next fragment arrives (0xC3 then '"').
        &[b"\"\xc3", b"\""],
        // Bad in a middle fragment.
        &[b"\"a", b"\xfe", b"b\""],
    ];
    for fragments in cases {
        let mut c = server.client();
        for (i, part) in fragments.iter().enumerate() {
            let opcode = if i == 0 { TEXT } else { CONTINUE };
            c.ws.write(frame(part, opcode, i + 1 == fragments.len()))
                .unwrap();
        }
        c.flush();
        assert_eq!(st(&body(&c.recv_json(), "ERR")), 3, "{fragments:?}");
        // Then the close, before anything else.
        loop {
            match c.ws.read() {
                Ok(Message::Close(frame)) => {
                    assert_eq!(
                        frame.map(|f| f.code),
                        Some(CloseCode::Invalid),
                        "{fragments:?}"
                    );
                    break;
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("{fragments:?}: expected a 1007 close, got {other:?}"),
            }
        }
    }
    let mut other = server.client();
    assert_eq!(st(&other.call(r#"{"SV_INFO":{}}"#)), 1);
}

/// Frames that break RFC 6455 itself (unmasked, reserved opcode, oversized
/// control frame): the connection may be closed, but the server keeps
/// serving everyone else and their data.
fn protocol_violations_close_only_their_connection(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2"]);
    let owners = one_session_per_shard(&server);
    let tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    let mut watcher = server.client();
    let before = state(&mut watcher, &tokens);
    let violations: [&[u8]; 5] = [
        // Unmasked text frame.
        b"\x81\x0e{\"SV_INFO\":{}}",
        // Reserved opcode 0x3, masked, empty.
        b"\x83\x80\x00\x00\x00\x00",
        // Ping with a 126-byte payload (control frames hold at most 125).
        &[0x89, 0xfe, 0x00, 0x7e, 0, 0, 0, 0],
        // Continuation with no message started.
        b"\x80\x80\x00\x00\x00\x00",
        // RSV1 set without an extension.
        b"\xc1\x80\x00\x00\x00\x00",
    ];
    for bytes in violations {
        let mut c = server.client();
        let stream = c.ws.get_mut();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        if bytes[1] == 0xfe {
            stream.write_all(&[b'x'; 126]).unwrap();
        }
        // Whatever the server answers, it must end with the connection
        // closed (or stop reading from it) rather than crash.
        let mut closed = false;
        for _ in 0..4 {
            match c.ws.read() {
                Ok(Message::Close(_)) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
            }
        }
        assert!(closed, "{bytes:?}: connection left open");
        assert_eq!(state(&mut watcher, &tokens), before, "{bytes:?}");
    }
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// With persistence on, hostile dataset names and token lists in `SH_SAVE`
/// and `SH_LOAD` get statuses from the table, never write outside the
/// persist path, and never change stored data (loading over sessions that
/// exist leaves them as they are).
#[test]
fn hostile_save_and_load_requests_stay_inside_the_persist_path() {
    let scratch = TempDir::new("hostile-persist");
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data_arg = data.to_str().expect("UTF-8 temp path");
    let server = Server::start(&["--shards", "2", "--persist-path", data_arg]);
    let owners = one_session_per_shard(&server);
    let tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    let mut c = server.client();
    let before = state(&mut c, &tokens);

    let mut names: Vec<String> = oracle::LITERALS.iter().map(|l| l.to_string()).collect();
    names.extend(oracle::STRING_PIECES.iter().map(|p| format!("\"{p}\"")));
    for name in [
        ".",
        "..",
        "...",
        "../x",
        "..\\\\x",
        "/tmp",
        "a/b",
        "a\\u002fb",
        "a\\u0000b",
        "%2e%2e",
        "~",
        "-",
        ".hidden",
        "ok_1.2-3",
        "é",
    ] {
        names.push(format!("\"{name}\""));
    }
    names.push(format!("\"{}\"", "n".repeat(128)));
    names.push(format!("\"{}\"", "n".repeat(129)));
    let mut saved = 0;
    for name in &names {
        let tkn = tokens[0];
        for request in [
            format!(r#"{{"SH_SAVE":{{"name":{name}}}}}"#),
            format!(r#"{{"SH_SAVE":{{"name":"subset","tkns":[{tkn},{name}]}}}}"#),
            format!(r#"{{"SH_SAVE":{{"name":"subset","tkns":{name}}}}}"#),
            format!(r#"{{"SH_LOAD":{{"name":{name}}}}}"#),
        ] {
            let status = send_checked(&mut c, &request);
            saved += usize::from(status == 121);
            assert_eq!(
                state(&mut c, &tokens),
                before,
                "{request} (status {status})"
            );
        }
    }
    assert!(saved > 0, "some names are valid");
    let r = c.call(r#"{"SH_LOAD":{"name":"ok_1.2-3"}}"#);
    assert_eq!(st(&r), 141, "{r}");
    assert_eq!(
        entries(scratch.path()),
        ["data"],
        "nothing written beside the persist path"
    );
    for dataset in entries(&data) {
        assert!(
            !dataset.is_empty() && dataset != "." && dataset != "..",
            "{dataset}"
        );
    }
    assert_eq!(state(&mut c, &tokens), before);
}

/// A frame header claiming an enormous payload (up to 2^63 bytes, and the
/// 2^64 - 1 the RFC forbids) is refused at once with 1009, before any of
/// it is buffered; other clients carry on.
fn frame_headers_claiming_huge_payloads_close_with_1009(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2"]);
    let mut other = server.client();
    for length in [
        [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        [0xff; 8],
        [0, 0, 0, 1, 0, 0, 0, 0],
    ] {
        let mut c = server.client();
        let mut header = vec![0x81, 0xff];
        header.extend_from_slice(&length);
        header.extend_from_slice(&[0, 0, 0, 0]); // mask key
        c.ws.get_mut().write_all(&header).unwrap();
        match c.ws.read() {
            Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Size, "{length:x?}"),
            other => panic!("{length:x?}: expected close 1009, got {other:?}"),
        }
        assert_eq!(st(&other.call(r#"{"SV_INFO":{}}"#)), 1);
    }
}

/// A request trickling in a byte at a time (mid-frame for a while) is
/// answered once complete, and nobody waits for it meanwhile.
fn a_request_sent_byte_by_byte_is_answered_and_blocks_nobody(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2"]);
    let mut slow = server.client();
    let mut other = server.client();
    let payload = br#"{"SH_NEW":{"name":"trickle"}}"#;
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0x12, 0x34, 0x56, 0x78];
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    for (i, byte) in frame.iter().enumerate() {
        slow.ws.get_mut().write_all(&[*byte]).unwrap();
        if i % 8 == 0 {
            // Served while the slow frame is incomplete.
            assert_eq!(st(&other.call(r#"{"SH_INFO_ALL":{}}"#)), 1);
        }
    }
    let r = body(&slow.recv_json(), "SH_NEW_RSP");
    assert_eq!((st(&r), r["name"].as_str()), (1, Some("trickle")));
}

/// Opening handshakes that are HTTP but not an acceptable upgrade get 400
/// and a close (the server.rs test covers a plain GET and non-HTTP bytes).
#[test]
fn bad_upgrade_requests_get_400_and_a_close() {
    let server = two_shards();
    let upgrade = |extra: &str, skip: &str| {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for line in [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ] {
            if !line.starts_with(skip) || skip.is_empty() {
                head.push_str(line);
                head.push_str("\r\n");
            }
        }
        head.push_str(extra);
        head.push_str("\r\n");
        head.into_bytes()
    };
    let many_headers: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "y".repeat(9000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no key", upgrade("", "Sec-WebSocket-Key")),
        ("no version", upgrade("", "Sec-WebSocket-Version")),
        ("no Upgrade header", upgrade("", "Upgrade")),
        ("no Connection header", upgrade("", "Connection")),
        ("version 8", {
            let mut h = upgrade("", "Sec-WebSocket-Version");
            h.truncate(h.len() - 2);
            h.extend_from_slice(b"Sec-WebSocket-Version: 8\r\n\r\n");
            h
        }),
        ("POST", {
            let mut h = upgrade("", "");
            h.splice(0..3, b"POST".iter().copied());
            h
        }),
        ("HTTP/1.0", {
            let h = String::from_utf8(upgrade("", "")).unwrap();
            h.replacen("HTTP/1.1", "HTTP/1.0", 1).into_bytes()
        }),
        ("70 headers", upgrade(&many_headers, "")),
        ("9 KB head", upgrade(&big_header, "")),
        ("key not UTF-8", {
            let mut h = upgrade("", "Sec-WebSocket-Key");
            h.truncate(h.len() - 2);
            h.extend_from_slice(b"Sec-WebSocket-Key: \xff\xfe\r\n\r\n");
            h
        }),
    ];
    for (what, head) in cases {
        let mut s = raw(server.addr);
        // A 9 KB head may be refused before it is all sent.
        let _ = s.write_all(&head);
        let reply = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
        assert!(reply.starts_with("HTTP/1.1 400"), "{what}: {reply:?}");
    }
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

/// A masked client frame (final), as raw bytes.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Server frames (unmasked, short) as (opcode, payload).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (opcode, len) = (bytes[0] & 0x0f, usize::from(bytes[1] & 0x7f));
        let (len, at) = match len {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            n => (n, 2),
        };
        frames.push((opcode, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    frames
}

/// A client that sends its requests and then half-closes (with or without
/// a close frame first) still gets every answer, from this shard or the
/// other, and then our close frame, before the connection ends.
fn a_client_that_half_closes_still_gets_its_answers(transport: Transport) {
    let server = Server::start_over(transport, &["--shards", "2"]);
    let owners = one_session_per_shard(&server);
    let tokens: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    for with_close_frame in [true, false] {
        for _ in 0..5 {
            let mut c = server.client();
            let stream = c.ws.get_mut();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut bytes = Vec::new();
            for tkn in &tokens {
                let request = format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#);
                bytes.extend(masked(0x1, request.as_bytes()));
            }
            bytes.extend(masked(0x1, br#"{"SH_NEW":{"name":"half"}}"#));
            if with_close_frame {
                bytes.extend(masked(0x8, &1000u16.to_be_bytes()));
            }
            stream.write_all(&bytes).unwrap();
            stream.end_writing().unwrap();
            let frames = server_frames(&read_to_close(stream));
            let texts: Vec<String> = frames
                .iter()
                .filter(|(op, _)| *op == 0x1)
                .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
                .collect();
            assert_eq!(texts.len(), 3, "{with_close_frame}: {texts:?}");
            for (text, tkn) in texts.iter().zip(&tokens) {
                assert!(
                    text.starts_with(&format!(r#"{{"SH_COUNT_RSP":{{"st":1,"tkn":{tkn},"#)),
                    "{text}"
                );
            }
            assert!(
                texts[2].starts_with(r#"{"SH_NEW_RSP":{"st":1,"#),
                "{}",
                texts[2]
            );
            let last = frames.last().expect("frames");
            assert_eq!((last.0, &last.1[..2]), (0x8, &1000u16.to_be_bytes()[..]));
        }
    }
}
