//! Integration tests: the real binary on a free loopback port, spoken to over
//! WebSocket. Run with two shards unless a test is about shard counts.

use std::io::Read;
use std::time::Duration;

use crate::support::{
    Client, Server, body, one_client_per_shard, raw, read_to_close, st, tokens, write_all,
};
use nemesisdb::mesh::shard_of;
use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

fn two_shards() -> Server {
    Server::start(&["--shards", "2"])
}

fn strings(v: &OwnedValue) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

/// Every command with its success and failure statuses, on `shards` shards.
fn every_command(shards: &str) {
    let server = Server::start(&["--shards", shards]);
    let mut c = server.client();

    let tkn = c.new_session(r#"{"name":"basket"}"#);
    assert_ne!(tkn, 0);
    let r = c.call(r#"{"SH_NEW":{"name":"basket"}}"#);
    assert_eq!(st(&r), 1, "unshared names may repeat");
    assert_eq!(r["name"].as_str(), Some("basket"));
    assert_eq!(r.as_object().unwrap().len(), 3, "st, tkn, name: {r}");
    let bare = c.call(r#"{"SH_NEW":{}}"#);
    assert_eq!(bare.as_object().unwrap().len(), 2, "st, tkn: {bare}");

    let r = c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"user":"ann","cart":[1,2],"n":-5,"f":2.5,"big":18446744073709551615,"obj":{{"a":null,"b":true}},"esc":"q\"\\\n\u00e9"}}}}}}"#
    ));
    assert_eq!(r.as_object().unwrap().len(), 2);
    assert_eq!((st(&r), r["tkn"].as_u64()), (1, Some(tkn)));
    // Values come back exactly as sent, escapes and all (compact JSON).
    c.send_text(&format!(
        r#"{{"SH_GET":{{"tkn":{tkn},"keys":["big","f","n","obj","esc","user","missing"]}}}}"#
    ));
    assert_eq!(
        c.recv_text(),
        format!(
            r#"{{"SH_GET_RSP":{{"st":1,"tkn":{tkn},"keys":{{"big":18446744073709551615,"f":2.5,"n":-5,"obj":{{"a":null,"b":true}},"esc":"q\"\\\n\u00e9","user":"ann"}}}}}}"#
        )
    );
    let r = c.call(&format!(
        r#"{{"SH_ADD":{{"tkn":"{tkn}","keys":{{"user":"bob","extra":1}}}}}}"#
    ));
    assert_eq!(st(&r), 1);
    let r = c.call(&format!(
        r#"{{"SH_GET":{{"tkn":{tkn},"keys":["user","extra"]}}}}"#
    ));
    assert_eq!(r["keys"]["user"].as_str(), Some("ann"));
    assert_eq!(r["keys"]["extra"].as_u64(), Some(1));
    let r = c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#));
    assert_eq!(r["cnt"].as_u64(), Some(8));
    let r = c.call(&format!(
        r#"{{"SH_CONTAINS":{{"tkn":{tkn},"keys":["nope","cart",7,"user"]}}}}"#
    ));
    assert_eq!(strings(&r["contains"]), ["cart", "user"]);
    let r = c.call(&format!(
        r#"{{"SH_RMV":{{"tkn":{tkn},"keys":["cart","nope"]}}}}"#
    ));
    assert_eq!((st(&r), r.as_object().unwrap().len()), (1, 2));
    let r = c.call(&format!(r#"{{"SH_KEYS":{{"tkn":{tkn}}}}}"#));
    let mut keys = strings(&r["keys"]);
    keys.sort();
    assert_eq!(keys, ["big", "esc", "extra", "f", "n", "obj", "user"]);
    let r = c.call(&format!(
        r#"{{"SH_CLEAR_SET":{{"tkn":{tkn},"keys":{{"k":1}}}}}}"#
    ));
    assert_eq!(r["cnt"].as_u64(), Some(7));
    let r = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    assert_eq!(r["keyCnt"].as_u64(), Some(1));
    assert_eq!(r["name"].as_str(), Some("basket"));
    assert_eq!(r["shared"].as_bool(), Some(false));
    assert_eq!(r["expires"].as_bool(), Some(false));
    assert!(r.get("expiry").is_none());
    let r = c.call(&format!(r#"{{"SH_CLEAR":{{"tkn":{tkn}}}}}"#));
    assert_eq!(r["cnt"].as_u64(), Some(1));

    let exp = c.new_session(
        r#"{"expiry":{"duration":30,"deleteSession":true,"extendOnSetAdd":true,"extendOnGet":false}}"#,
    );
    let r = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{exp}}}}}"#));
    assert_eq!(r["expires"].as_bool(), Some(true));
    let e = &r["expiry"];
    assert_eq!(e["duration"].as_u64(), Some(30));
    assert!((29..=30).contains(&e["remaining"].as_u64().unwrap()));
    assert_eq!(e["deleteSession"].as_bool(), Some(true));
    assert_eq!(e["extendOnSetAdd"].as_bool(), Some(true));
    assert_eq!(e["extendOnGet"].as_bool(), Some(false));

    let r = c.call(&format!(
        r#"{{"SH_EXISTS":{{"tkns":[{tkn},"{exp}",1,"x",null]}}}}"#
    ));
    assert_eq!(tokens(&r["exist"]), [tkn, exp]);
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(4));
    assert_eq!(r["totalKeys"].as_u64(), Some(0));
    let r = c.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(r["shards"].as_u64(), Some(shards.parse().unwrap()));
    assert_eq!(r["sessions"].as_u64(), Some(4));
    assert_eq!(r["persistEnabled"].as_bool(), Some(false));
    assert!(r["connections"].as_u64().unwrap() >= 1);
    assert_eq!(r["serverVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert!(r["uptimeSeconds"].as_u64().is_some());
    assert_eq!(r["maxMemory"].as_u64(), Some(0));
    assert!(r["memoryUsed"].as_u64().unwrap() > 0);
    assert_eq!(r["sessionNotExist"].as_u64(), Some(0));
    assert_eq!(r.as_object().unwrap().len(), 11);

    let r = c.call(r#"{"SH_SAVE":{"name":"snap"}}"#);
    assert_eq!(st(&r), 14);
    let r = c.call(r#"{"SH_LOAD":{"name":"snap"}}"#);
    assert_eq!(st(&r), 14);

    let r = c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#));
    assert_eq!((st(&r), r["tkn"].as_u64()), (1, Some(tkn)));
    let r = c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#));
    assert_eq!((st(&r), r["tkn"].as_u64()), (100, Some(tkn)));
    for cmd in [
        r#""SH_GET":{"tkn":TKN,"keys":["a"]}"#,
        r#""SH_SET":{"tkn":TKN,"keys":{"a":1}}"#,
        r#""SH_ADD":{"tkn":TKN,"keys":{"a":1}}"#,
        r#""SH_RMV":{"tkn":TKN,"keys":["a"]}"#,
        r#""SH_CONTAINS":{"tkn":TKN,"keys":["a"]}"#,
        r#""SH_COUNT":{"tkn":TKN}"#,
        r#""SH_KEYS":{"tkn":TKN}"#,
        r#""SH_CLEAR":{"tkn":TKN}"#,
        r#""SH_CLEAR_SET":{"tkn":TKN,"keys":{}}"#,
        r#""SH_INFO":{"tkn":TKN}"#,
    ] {
        let r = c.call(&format!("{{{}}}", cmd.replace("TKN", &tkn.to_string())));
        assert_eq!(st(&r), 100, "{cmd}: {r}");
        assert_eq!(r["tkn"].as_u64(), Some(tkn));
        let r = c.call(&format!("{{{}}}", cmd.replace("TKN", "\"12x\"")));
        assert_eq!(st(&r), 101, "{cmd}: {r}");
    }
    let r = c.call(r#"{"SH_END_ALL":{}}"#);
    assert_eq!(r["cnt"].as_u64(), Some(3));
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(0));
}

#[test]
fn every_command_on_one_shard() {
    every_command("1");
}

#[test]
fn every_command_on_two_shards() {
    every_command("2");
}

#[test]
fn parameter_errors_get_their_statuses() {
    let server = two_shards();
    let mut c = server.client();
    let tkn = c.new_session("{}");
    let cases: &[(&str, u64)] = &[
        (r#"{"SH_NEW":{"name":""}}"#, 42),
        (r#"{"SH_NEW":{"name":7}}"#, 41),
        (r#"{"SH_NEW":{"shared":true}}"#, 26),
        (r#"{"SH_NEW":{"name":"a","shared":1}}"#, 41),
        (r#"{"SH_NEW":{"expiry":{"maxLifetime":0}}}"#, 42),
        (r#"{"SH_NEW":{"owner":""}}"#, 42),
        (r#"{"SH_NEW":{"owner":1}}"#, 41),
        (r#"{"SH_OWNER_END":{"owner":"a","except":[]}}"#, 101),
        (r#"{"SH_NEW":{"expiry":{}}}"#, 26),
        (r#"{"SH_NEW":{"expiry":{"duration":"5"}}}"#, 41),
        (r#"{"SH_NEW":{"expiry":"soon"}}"#, 41),
        (r#"{"SH_OPEN":{}}"#, 26),
        (r#"{"SH_OPEN":{"name":3}}"#, 41),
        (r#"{"SH_OPEN":{"name":"nobody"}}"#, 102),
        (r#"{"SH_EXISTS":{}}"#, 26),
        (r#"{"SH_EXISTS":{"tkns":"1"}}"#, 41),
        (r#"{"SH_END":{}}"#, 101),
        (r#"{"SH_END":{"tkn":null}}"#, 101),
        (r#"{"SH_END":{"tkn":-1}}"#, 101),
        (r#"{"SH_END":{"tkn":1.0}}"#, 101),
        (r#"{"SH_END":{"tkn":"18446744073709551616"}}"#, 101),
        (r#"{"SH_SAVE":{"name":"../x"}}"#, 42),
        (r#"{"SH_SAVE":{}}"#, 26),
    ];
    for (request, status) in cases {
        let r = c.call(request);
        assert_eq!(st(&r), *status, "{request}: {r}");
    }
    for (request, status) in [
        (format!(r#"{{"SH_SET":{{"tkn":{tkn}}}}}"#), 26),
        (format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":[1]}}}}"#), 41),
        (format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":{{}}}}}}"#), 41),
        (format!(r#"{{"SH_GET":{{"tkn":{tkn}}}}}"#), 26),
        (
            format!(r#"{{"SH_CLEAR_SET":{{"tkn":{tkn},"keys":"x"}}}}"#),
            41,
        ),
    ] {
        let r = c.call(&request);
        assert_eq!(st(&r), status, "{request}: {r}");
        assert_eq!(r["tkn"].as_u64(), Some(tkn), "errors echo a valid tkn");
        assert!(r["m"].as_str().is_some(), "errors name the problem: {r}");
    }
}

#[test]
fn tokens_as_numbers_and_strings_reach_the_same_session() {
    let server = two_shards();
    let mut c = server.client();
    let tkn = c.new_session("{}");
    c.call(&format!(
        r#"{{"SH_SET":{{"tkn":"{tkn}","keys":{{"a":1}}}}}}"#
    ));
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
    assert_eq!(r["keys"]["a"].as_u64(), Some(1));
    // Responses carry the token as a number, exactly.
    c.send_text(&format!(r#"{{"SH_COUNT":{{"tkn":"{tkn}"}}}}"#));
    assert_eq!(
        c.recv_text(),
        format!(r#"{{"SH_COUNT_RSP":{{"st":1,"tkn":{tkn},"cnt":1}}}}"#)
    );
}

#[test]
fn shared_names_across_connections_and_release() {
    let server = two_shards();
    let mut a = server.client();
    let mut b = server.client();
    let tkn = a.new_session(r#"{"name":"delivery-1","shared":true}"#);
    let r = b.call(r#"{"SH_NEW":{"name":"delivery-1","shared":true}}"#);
    assert_eq!(st(&r), 103);
    let r = b.call(r#"{"SH_OPEN":{"name":"delivery-1"}}"#);
    assert_eq!((st(&r), r["tkn"].as_u64()), (1, Some(tkn)));
    assert_eq!(r["name"].as_str(), Some("delivery-1"));
    b.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"driver":"sam"}}}}}}"#
    ));
    let r = a.call(&format!(
        r#"{{"SH_GET":{{"tkn":{tkn},"keys":["driver"]}}}}"#
    ));
    assert_eq!(r["keys"]["driver"].as_str(), Some("sam"));
    let r = b.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    assert_eq!(r["shared"].as_bool(), Some(true));
    b.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#));
    let r = a.call(r#"{"SH_OPEN":{"name":"delivery-1"}}"#);
    assert_eq!(st(&r), 102, "name released by SH_END");
    let again = a.new_session(r#"{"name":"delivery-1","shared":true}"#);
    assert_ne!(again, tkn);
    a.call(r#"{"SH_END_ALL":{}}"#);
    let r = b.call(r#"{"SH_OPEN":{"name":"delivery-1"}}"#);
    assert_eq!(st(&r), 102, "name released by SH_END_ALL");
}

#[test]
fn sessions_are_created_on_the_connections_own_shard() {
    let server = two_shards();
    let mut c = server.client();
    let first = shard_of(c.new_session("{}"), 2);
    for _ in 0..50 {
        assert_eq!(shard_of(c.new_session("{}"), 2), first);
    }
}

#[test]
fn pipelined_requests_across_shards_are_answered_in_order() {
    let server = two_shards();
    let mut clients = one_client_per_shard(&server, 2);
    let (mut other, _) = clients.pop().unwrap();
    let (mut c, _) = clients.pop().unwrap();
    // Sessions on both shards: c's own and other's.
    let mut sessions = Vec::new();
    for i in 0..20 {
        let owner = if i % 2 == 0 { &mut c } else { &mut other };
        sessions.push(owner.new_session("{}"));
    }
    let n = 2000;
    for i in 0..n {
        let tkn = sessions[(i / 4) % sessions.len()];
        let request = match i % 4 {
            0 => format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"k{i}":{i}}}}}}}"#),
            1 => format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k{}"]}}}}"#, i - 1),
            2 => r#"{"SH_INFO_ALL":{}}"#.to_string(),
            _ => format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#),
        };
        c.queue_text(request);
    }
    c.flush();
    for i in 0..n {
        let response = c.recv_json();
        let tkn = sessions[(i / 4) % sessions.len()];
        match i % 4 {
            0 => assert_eq!(body(&response, "SH_SET_RSP")["tkn"].as_u64(), Some(tkn)),
            1 => {
                let r = body(&response, "SH_GET_RSP");
                assert_eq!(r["tkn"].as_u64(), Some(tkn), "response {i} out of order");
                assert_eq!(
                    r["keys"][format!("k{}", i - 1).as_str()].as_u64(),
                    Some(i as u64 - 1)
                );
            }
            2 => assert_eq!(st(&body(&response, "SH_INFO_ALL_RSP")), 1),
            _ => assert_eq!(body(&response, "SH_COUNT_RSP")["tkn"].as_u64(), Some(tkn)),
        }
    }
}

#[test]
fn many_clients_read_each_others_sessions() {
    let server = two_shards();
    let addr = server.addr;
    let clients = 200;
    let mut owners: Vec<(Client, u64)> = (0..clients)
        .map(|i| {
            let mut c = Client::connect(addr);
            let tkn = c.new_session("{}");
            c.call(&format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"owner":{i}}}}}}}"#
            ));
            (c, tkn)
        })
        .collect();
    let all: Vec<u64> = owners.iter().map(|(_, t)| *t).collect();
    let threads: Vec<_> = owners
        .drain(..)
        .enumerate()
        .map(|(i, (mut c, _))| {
            let all = all.clone();
            std::thread::spawn(move || {
                for step in 1..=5 {
                    let j = (i + step * 37) % all.len();
                    let r = c.call(&format!(
                        r#"{{"SH_GET":{{"tkn":{},"keys":["owner"]}}}}"#,
                        all[j]
                    ));
                    assert_eq!(r["keys"]["owner"].as_u64(), Some(j as u64));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut c = server.client();
    let r = c.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(r["sessions"].as_u64(), Some(clients as u64));
}

#[test]
fn cross_shard_fan_out_commands_cover_every_shard() {
    let server = two_shards();
    let mut clients = one_client_per_shard(&server, 2);
    let (mut b, tb) = clients.pop().unwrap();
    let (mut a, ta) = clients.pop().unwrap();
    b.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tb},"keys":{{"x":1,"y":2}}}}}}"#
    ));
    let r = a.call(&format!(r#"{{"SH_EXISTS":{{"tkns":[{tb},{ta},5,{tb}]}}}}"#));
    assert_eq!(tokens(&r["exist"]), [tb, ta, tb]);
    let r = a.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(2));
    assert_eq!(r["totalKeys"].as_u64(), Some(2));
    let r = a.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(r["connections"].as_u64(), Some(2));
    let r = a.call(r#"{"SH_END_ALL":{}}"#);
    assert_eq!(r["cnt"].as_u64(), Some(2));
    let r = b.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tb}}}}}"#));
    assert_eq!(st(&r), 100);
}

#[test]
fn large_values_round_trip() {
    let server = two_shards();
    let mut c = server.client();
    let tkn = c.new_session("{}");
    let value = "v".repeat(512 * 1024);
    let r = c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"big":"{value}"}}}}}}"#
    ));
    assert_eq!(st(&r), 1);
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["big"]}}}}"#));
    assert_eq!(r["keys"]["big"].as_str().map(str::len), Some(value.len()));
}

#[test]
fn malformed_frames_get_the_protocol_answers() {
    let server = two_shards();
    let mut c = server.client();
    let err = |c: &mut Client| body(&c.recv_json(), "ERR");

    c.ws.send(Message::Binary(b"{\"SV_INFO\":{}}".to_vec().into()))
        .unwrap();
    let r = err(&mut c);
    assert_eq!(st(&r), 2);
    assert!(r["m"].as_str().is_some());
    c.send_text("{\"SV_INFO\":");
    assert_eq!(st(&err(&mut c)), 3);
    let invalid_utf8 = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(invalid_utf8)).unwrap();
    assert_eq!(st(&err(&mut c)), 3);
    for not_object in ["[]", "5", "\"SV_INFO\"", "null", "{}"] {
        c.send_text(not_object);
        assert_eq!(st(&err(&mut c)), 13, "{not_object}");
    }
    c.send_text(r#"{"SV_INFO":{},"SH_INFO_ALL":{}}"#);
    assert_eq!(st(&err(&mut c)), 11);
    c.send_text(r#"{"SH_NEW":[]}"#);
    assert_eq!(c.recv_text(), r#"{"SH_NEW_RSP":{"st":12}}"#);
    c.send_text(r#"{"NOT_A_CMD":5}"#);
    assert_eq!(c.recv_text(), r#"{"NOT_A_CMD_RSP":{"st":12}}"#);
    c.send_text(r#"{"NOT_A_CMD":{}}"#);
    assert_eq!(c.recv_text(), r#"{"NOT_A_CMD_RSP":{"st":10}}"#);
    c.ws.send(Message::Ping(b"hi".to_vec().into())).unwrap();
    loop {
        match c.ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
    // Still open and working after all of it.
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

#[test]
fn oversized_messages_close_with_1009() {
    let server = Server::start(&["--shards", "2", "--max-payload", "4096"]);
    let mut c = server.client();
    let tkn = c.new_session("{}");
    let fits = format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":"{}"}}}}}}"#,
        "x".repeat(3000)
    );
    assert_eq!(st(&c.call(&fits)), 1);
    c.send_text(&"x".repeat(5000));
    loop {
        match c.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Size);
                break;
            }
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
    // Everyone else is unaffected.
    let mut d = server.client();
    let r = d.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
    assert_eq!(r["keys"]["a"].as_str().map(str::len), Some(3000));
}

#[test]
fn http_that_is_not_an_upgrade_gets_400_and_garbage_is_closed() {
    let server = two_shards();
    let mut s = raw(server.addr);
    write_all(&mut s, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let reply = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    let mut s = raw(server.addr);
    write_all(
        &mut s,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(read_to_close(&mut s).is_empty());

    // The server still serves.
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

#[test]
fn a_half_sent_handshake_does_not_block_others() {
    let server = two_shards();
    let mut slow = raw(server.addr);
    write_all(&mut slow, b"GET / HTTP/1.1\r\nHost: x\r\n");
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        slow.read(&mut buf).is_err(),
        "no answer to a partial request"
    );
}

#[test]
fn sigterm_answers_what_was_read_then_exits_zero() {
    let mut server = two_shards();
    let mut c = server.client();
    let tkn = c.new_session("{}");
    for i in 0..200 {
        c.queue_text(format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"k{i}":{i}}}}}}}"#
        ));
    }
    c.flush();
    // The first answer proves the server has started on the batch.
    assert_eq!(st(&body(&c.recv_json(), "SH_SET_RSP")), 1);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let mut answered = 1;
    loop {
        match c.ws.read() {
            Ok(Message::Text(_)) => answered += 1,
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(answered, 200, "every request read was answered");
}

#[test]
fn sigint_stops_like_sigterm() {
    let mut server = two_shards();
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(server.wait_exit().success());
    match c.ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
}

#[test]
fn bad_flags_exit_with_status_2() {
    for args in [
        &["--pin-cores", "banana"][..],
        &["--pin-cores", "9999"],
        &["--shards", "0"],
        &["--port", "70000"],
    ] {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn pinned_shards_serve() {
    let server = Server::start(&["--shards", "1", "--pin-cores", "0"]);
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

#[test]
fn a_protocol_breach_closes_after_the_answers_already_due() {
    let server = Server::start(&["--shards", "4"]);
    for _ in 0..5 {
        let mut c = server.client();
        c.queue_text(r#"{"SV_INFO":{}}"#.to_string());
        c.queue_text(r#"{"SH_INFO_ALL":{}}"#.to_string());
        c.flush();
        // A masked, empty frame with reserved opcode 0x3.
        std::io::Write::write_all(c.ws.get_mut(), b"\x83\x80\x00\x00\x00\x00").unwrap();
        assert_eq!(st(&body(&c.recv_json(), "SV_INFO_RSP")), 1);
        assert_eq!(st(&body(&c.recv_json(), "SH_INFO_ALL_RSP")), 1);
        match c.ws.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Protocol),
            other => panic!("expected a 1002 close, got {other:?}"),
        }
    }
}

#[test]
fn clients_that_send_and_hang_up_at_once_are_not_kept() {
    let server = two_shards();
    for _ in 0..30 {
        let mut c = server.client();
        c.queue_text(r#"{"SV_INFO":{}}"#.to_string());
        c.flush();
        // Data and end of stream arrive together. A WebSocket peer that
        // hangs up without a close frame gets no more answers (the
        // WebSocket is over); what matters is that it is let go.
        c.ws.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        let _ = c.ws.read();
    }
    let mut watcher = server.client();
    let mut connections = u64::MAX;
    for _ in 0..100 {
        connections = watcher.call(r#"{"SV_INFO":{}}"#)["connections"]
            .as_u64()
            .unwrap();
        if connections == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connections, 1, "closed clients are still held");
}

#[test]
fn shared_names_held_on_another_shard() {
    let server = two_shards();
    let mut clients = one_client_per_shard(&server, 2);
    let (mut b, _) = clients.pop().unwrap();
    let (mut a, _) = clients.pop().unwrap();
    // Held by a live session on b's shard: a cannot take it.
    let held = b.new_session(r#"{"name":"live","shared":true}"#);
    let r = a.call(r#"{"SH_NEW":{"name":"live","shared":true}}"#);
    assert_eq!(st(&r), 103, "{r}");
    assert_eq!(st(&a.call(&format!(r#"{{"SH_END":{{"tkn":{held}}}}}"#))), 1);
    let r = a.call(r#"{"SH_NEW":{"name":"live","shared":true}}"#);
    assert_eq!(st(&r), 1, "{r}");
    // Held by a session past its deadline: see
    // expiry::real_time_expiry_across_shards.
}
