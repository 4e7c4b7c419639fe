//! Property tests of request decoding and dispatch: random bytes, valid
//! requests of every command with bytes flipped, inserted, deleted or cut
//! off, and hostile JSON (every JSON type, odd escapes, lone surrogates,
//! huge numbers, duplicate keys, deep nesting) in every parameter of every
//! command, thrown at a `LocalDispatcher`.
//!
//! The checks are the fuzz target's (the oracle crate, `fuzz/oracle/`):
//! every response is one JSON object named `ERR` or `<CMD>_RSP`, its status
//! is in the protocol table, fits the command and is never 1000; nothing
//! panics; a response that is not Ok leaves the totals and the seeded
//! sessions exactly as they were; values set come back as the same JSON;
//! and once every session is ended the accounting is back at zero.

use nemesisdb::shard::LocalDispatcher;
use nemesisdb_oracle::{COMMANDS, Harness, LITERALS, NAMES, SLOTS, STRING_PIECES, VALID};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use simd_json::prelude::*;

fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(select(STRING_PIECES), 0..6)
            .prop_map(|pieces| format!("\"{}\"", pieces.concat())),
        any::<String>().prop_map(|s| simd_json::OwnedValue::from(s).encode()),
        (257usize..300).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(LITERALS).prop_map(str::to_string),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        2 => string_literal(),
    ]
}

/// Deeper than simd-json's limit (1024) and just within it.
fn deep() -> impl Strategy<Value = String> {
    (1000usize..1100, any::<bool>()).prop_map(|(n, arrays)| {
        if arrays {
            format!("{}{}", "[".repeat(n), "]".repeat(n))
        } else {
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
        }
    })
}

/// Any hostile value: scalars, arrays and objects of them (duplicate
/// member names included), deep nesting.
fn hostile() -> impl Strategy<Value = String> {
    let nested = scalar().prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((select(NAMES), inner), 0..5).prop_map(|members| {
                let body: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    });
    prop_oneof![9 => nested, 1 => deep()]
}

/// A message: bytes and whether it is a text frame.
type Message = (Vec<u8>, bool);

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        (
            any::<Index>(),
            select(&b"{}[]\":,\\0-9eE.ntfu \x00\xc3\xff"[..])
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip(i, bit) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Mutation::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
            Mutation::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i.index(bytes.len()));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

fn mutated_valid() -> impl Strategy<Value = Message> {
    (
        select(VALID),
        prop::collection::vec(mutation(), 1..4),
        prop::bool::weighted(0.95),
    )
        .prop_map(|(request, mutations, text)| {
            (mutate(request.as_bytes().to_vec(), &mutations), text)
        })
}

fn random_bytes() -> impl Strategy<Value = Message> {
    let jsonish = prop::collection::vec(
        select(&b"{}[]\":,\\0123456789-+.eEtrufalsn $ \t\n"[..]),
        0..60,
    );
    (
        prop_oneof![prop::collection::vec(any::<u8>(), 0..80), jsonish],
        any::<bool>(),
    )
}

fn hostile_request() -> impl Strategy<Value = Message> {
    (select(SLOTS), hostile(), hostile()).prop_map(|(slot, a, b)| {
        (
            slot.replacen('@', &a, 1).replacen('@', &b, 1).into_bytes(),
            true,
        )
    })
}

/// Something a client might do between hostile requests.
#[derive(Clone, Debug)]
enum Step {
    Send(Message),
    Valid(&'static str),
    Advance(u64),
    LimitMemory(Option<u64>),
}

fn run(steps: &[Step]) {
    let mut h = Harness::new();
    for step in steps {
        match step {
            Step::Send((bytes, text)) => {
                h.run(bytes, *text);
            }
            Step::Valid(request) => {
                h.run(request.as_bytes(), true);
            }
            Step::Advance(ms) => h.advance(*ms),
            Step::LimitMemory(headroom) => h.limit_memory(*headroom),
        }
    }
    h.finish();
}

fn steps(message: impl Strategy<Value = Message> + 'static) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => message.prop_map(Step::Send),
        2 => select(VALID).prop_map(Step::Valid),
        1 => prop_oneof![Just(1_000u64), Just(5_000), Just(31_000), Just(3_600_000)].prop_map(Step::Advance),
        1 => prop_oneof![Just(None), Just(Some(64u64)), Just(Some(400))].prop_map(Step::LimitMemory),
    ];
    prop::collection::vec(step, 1..8)
}

proptest! {
    // Failures become named cases in `hostile_cases_get_their_statuses`
    // rather than a seed file.
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_get_protocol_answers(steps in steps(random_bytes())) {
        run(&steps);
    }

    #[test]
    fn mutated_requests_get_protocol_answers(steps in steps(mutated_valid())) {
        run(&steps);
    }

    #[test]
    fn hostile_json_in_every_parameter_gets_protocol_answers(steps in steps(hostile_request())) {
        run(&steps);
    }
}

/// Whitespace JSON allows between tokens.
const WHITESPACE: &[&str] = &["", "", " ", "\t", "\n", "\r\n", "  "];

/// Number spellings that a parse and re-encode would change.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1E2",
    "1e-2",
    "-1.5E+3",
    "0.10",
    "1.0",
    "-0.0",
    "18446744073709551615",
    "-9223372036854775808",
    "123456789012345678",
    "1.7976931348623157e308",
    "5e-324",
    // Beyond 64 bits or a double: stored digit for digit all the same.
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1e400",
    "-1E+400",
    "1.5e-400",
];

/// Valid pieces of string bodies, escapes kept as written.
const VALID_STRING_PIECES: &[&str] = &[
    "a",
    " ",
    "é",
    "😀",
    "\\u0000",
    "\\u00e9",
    "\\u00E9",
    "\\ud83d\\ude00",
    "\\\"",
    "\\\\",
    "\\/",
    "\\b\\f\\n\\r\\t",
    "}",
    "]",
    ",",
    ":",
];

/// A valid JSON value as (text with whitespace between tokens, the same
/// text without it).
fn spaced_value() -> impl Strategy<Value = (String, String)> {
    let string = prop::collection::vec(select(VALID_STRING_PIECES), 0..5)
        .prop_map(|pieces| format!("\"{}\"", pieces.concat()));
    let leaf = prop_oneof![
        select(NUMBERS).prop_map(str::to_string),
        select(&["true", "false", "null"][..]).prop_map(str::to_string),
        string.clone(),
    ]
    .prop_map(|t| (t.clone(), t));
    leaf.prop_recursive(4, 24, 4, move |inner| {
        let ws = || select(WHITESPACE);
        let member = (ws(), string.clone(), ws(), ws(), inner.clone(), ws());
        prop_oneof![
            (prop::collection::vec((ws(), inner, ws()), 0..4), ws()).prop_map(|(items, empty)| {
                let spaced: Vec<String> = items
                    .iter()
                    .map(|(a, (t, _), b)| format!("{a}{t}{b}"))
                    .collect();
                let compact: Vec<String> = items.iter().map(|(_, (_, c), _)| c.clone()).collect();
                let inside = if items.is_empty() {
                    empty.to_string()
                } else {
                    spaced.join(",")
                };
                (format!("[{inside}]"), format!("[{}]", compact.join(",")))
            }),
            (prop::collection::vec(member, 0..4), ws()).prop_map(|(members, empty)| {
                let spaced: Vec<String> = members
                    .iter()
                    .map(|(a, k, b, c, (t, _), d)| format!("{a}{k}{b}:{c}{t}{d}"))
                    .collect();
                let compact: Vec<String> = members
                    .iter()
                    .map(|(_, k, _, _, (_, v), _)| format!("{k}:{v}"))
                    .collect();
                let inside = if members.is_empty() {
                    empty.to_string()
                } else {
                    spaced.join(",")
                };
                (
                    format!("{{{inside}}}"),
                    format!("{{{}}}", compact.join(",")),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A value comes back from SH_GET exactly as sent, minus the whitespace
    /// between tokens: number spellings, escapes, duplicate members and all.
    #[test]
    fn values_come_back_exactly_as_sent(
        (spaced, compact) in spaced_value(),
        ws in prop::collection::vec(select(WHITESPACE), 4),
        command in select(&["SH_SET", "SH_ADD", "SH_CLEAR_SET"][..]),
    ) {
        let mut h = Harness::new();
        let tkn = h.tokens()[0];
        let request = format!(
            r#"{{"{command}":{{"tkn":{tkn},"keys":{{{}"n\u0065w"{}:{}{spaced}{}}}}}}}"#,
            ws[0], ws[1], ws[2], ws[3]
        );
        prop_assert_eq!(h.run(request.as_bytes(), true).status, 1, "{}", request);
        let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["new"]}}}}"#);
        let got = String::from_utf8(h.run(get.as_bytes(), true).response).expect("UTF-8");
        let expected = format!(r#"{{"SH_GET_RSP":{{"st":1,"tkn":{tkn},"keys":{{"new":{compact}}}}}}}"#);
        prop_assert_eq!(got, expected, "{}", request);
        h.finish();
    }
}

/// Every slot with every literal, no randomness: each type in each
/// parameter of each command is tried at least once on every run.
#[test]
fn every_literal_in_every_slot() {
    let strings = STRING_PIECES.iter().map(|p| format!("\"{p}\""));
    let values: Vec<String> = LITERALS
        .iter()
        .map(|l| l.to_string())
        .chain(strings)
        .collect();
    let mut h = Harness::new();
    for slot in SLOTS {
        for value in &values {
            h.run(slot.replace('@', value).as_bytes(), true);
        }
    }
    h.finish();
}

#[test]
fn every_command_name_is_covered() {
    for command in COMMANDS {
        assert!(
            VALID
                .iter()
                .any(|r| r.starts_with(&format!("{{\"{command}\""))),
            "{command}"
        );
    }
}

/// Fixed cases the generators only reach by luck, with the statuses the
/// protocol table gives them.
#[test]
fn hostile_cases_get_their_statuses() {
    let mut h = Harness::new();
    let deep_ok = format!(
        r#"{{"SH_SET":{{"tkn":$0,"keys":{{"d":{}{}}}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let deep_bad = format!(
        r#"{{"SH_SET":{{"tkn":$0,"keys":{{"d":{}{}}}}}}}"#,
        "[".repeat(1100),
        "]".repeat(1100)
    );
    let cases: Vec<(String, u64)> = vec![
        (deep_ok, 1),
        (deep_bad, 3),
        (format!("{}{}", "[".repeat(5000), "]".repeat(5000)), 3),
        (r#"{"SH_NEW":{"name":"\ud800"}}"#.into(), 3),
        (r#"{"SH_NEW":{"name":"\udc00"}}"#.into(), 3),
        (r#"{"SH_NEW":{"name":"\ud83d\ude00"}}"#.into(), 1),
        (r#"{"SH_NEW":{"name":"\x"}}"#.into(), 3),
        (r#"{"SH_NEW":{"name":"\u00"}}"#.into(), 3),
        // Numbers of any size are JSON: stored as sent, the wrong type for
        // a token or a count.
        (
            r#"{"SH_SET":{"tkn":$0,"keys":{"a":1e400,"b":-1e400}}}"#.into(),
            1,
        ),
        (
            r#"{"SH_SET":{"tkn":$0,"keys":{"c":18446744073709551616}}}"#.into(),
            1,
        ),
        (
            r#"{"SH_SET":{"tkn":$0,"keys":{"d":-9223372036854775809}}}"#.into(),
            1,
        ),
        (
            r#"{"SH_SET":{"tkn":$0,"keys":{"e":[99999999999999999999999]}}}"#.into(),
            1,
        ),
        (r#"{"SH_END":{"tkn":1e400}}"#.into(), 101),
        (r#"{"SH_END":{"tkn":18446744073709551616}}"#.into(), 101),
        (
            r#"{"SH_EXISTS":{"tkns":[18446744073709551616,$0]}}"#.into(),
            1,
        ),
        (r#"{"SH_NEW":{"expiry":{"duration":1e400}}}"#.into(), 41),
        (
            r#"{"SH_NEW":{"expiry":{"duration":99999999999999999999}}}"#.into(),
            41,
        ),
        (r#"{"SH_END":{"tkn":-0}}"#.into(), 100),
        (r#"{"SH_END":{"tkn":1E2}}"#.into(), 101),
        (r#"{"SH_END":{"tkn":"-0"}}"#.into(), 101),
        (r#"{"SH_NEW":{"expiry":{"duration":1E2}}}"#.into(), 41),
        (r#"{"SH_NEW":{"expiry":{"duration":-0}}}"#.into(), 42),
        (
            r#"{"SH_NEW":{"expiry":{"duration":18446744073709551615}}}"#.into(),
            42,
        ),
        (r#"{"SH_NEW":{},"SH_NEW":{}}"#.into(), 11),
        // A parameter or expiry setting given twice is ambiguous: 13.
        (r#"{"SH_COUNT":{"tkn":$0,"tkn":"x"}}"#.into(), 13),
        (r#"{"SH_COUNT":{"tkn":"x","tkn":$0}}"#.into(), 13),
        (r#"{"SH_COUNT":{"tkn":$0,"tkn":$0}}"#.into(), 13),
        (r#"{"SH_COUNT":{"tkn":$0,"t\u006bn":$0}}"#.into(), 13),
        (
            r#"{"SH_SET":{"tkn":$0,"keys":[1],"keys":{"a":1}}}"#.into(),
            13,
        ),
        (r#"{"SH_OPEN":{"name":"alpha","name":5}}"#.into(), 13),
        (
            r#"{"SH_NEW":{"expiry":{"duration":5,"duration":6}}}"#.into(),
            13,
        ),
        (r#"{"SV_INFO":{"x":1,"x":2}}"#.into(), 13),
        // In a keys object, a key given twice is set twice: the last wins.
        (
            r#"{"SH_SET":{"tkn":$0,"keys":{"k":1,"k":2,"k":[3]}}}"#.into(),
            1,
        ),
    ];
    for (request, status) in cases {
        let got = h.run(request.as_bytes(), true).status;
        assert_eq!(got, status, "{}", &request[..request.len().min(120)]);
    }
    h.finish();
}

/// The fuzz corpus replays here, so every seed stays a passing case.
#[test]
fn fuzz_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/dispatch");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read");
        nemesisdb_oracle::run_input(&data);
        n += 1;
    }
    assert!(n >= 20, "seed corpus has {n} files");
}

fn respond(d: &mut LocalDispatcher, request: &str) -> String {
    String::from_utf8(d.handle(request.as_bytes(), true)).expect("UTF-8 response")
}

fn new_token(d: &mut LocalDispatcher, params: &str) -> u64 {
    let r = respond(d, &format!(r#"{{"SH_NEW":{params}}}"#));
    r.split("\"tkn\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("SH_NEW failed: {r}"))
}

/// A parameter given twice is ambiguous (status 13), however many other
/// members the object has: past 32 members a parsed object becomes a hash
/// map that keeps only one of the two, which must not change the answer.
#[test]
fn a_duplicated_parameter_is_13_however_many_members() {
    let mut d = LocalDispatcher::new(1);
    let tkn = new_token(&mut d, "{}");
    let pad: String = (0..40).map(|i| format!(r#","p{i}":0"#)).collect();
    for pad in ["", pad.as_str()] {
        for request in [
            format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":1}},"keys":5{pad}}}}}"#),
            format!(r#"{{"SH_SET":{{"tkn":{tkn}{pad},"keys":{{"a":1}},"keys":{{"b":1}}}}}}"#),
            format!(r#"{{"SH_COUNT":{{"tkn":{tkn},"tkn":"x"{pad}}}}}"#),
            format!(r#"{{"SH_NEW":{{"expiry":{{"duration":5,"duration":6{pad}}}}}}}"#),
        ] {
            let r = respond(&mut d, &request);
            assert!(r.contains(r#""st":13"#), "{request}: {r}");
        }
    }
    assert_eq!(d.totals().1, 0, "nothing was set");
}

/// A shared session past its deadline is gone for every command (the
/// protocol's expiry guarantee), `SH_NEW` claiming its name included, even
/// while background expiry is behind on a mass expiry.
#[test]
fn a_shared_name_is_free_once_its_session_is_past_its_deadline() {
    let mut d = LocalDispatcher::new(1);
    // More sessions due at once than one background pass settles (4096),
    // shared ones spread among them.
    for i in 0..5000 {
        let name = if i % 500 == 0 {
            format!(r#""name":"n{i}","shared":true,"#)
        } else {
            String::new()
        };
        new_token(
            &mut d,
            &format!(r#"{{{name}"expiry":{{"duration":1,"deleteSession":true}}}}"#),
        );
    }
    d.advance(1000);
    // SH_NEW first: SH_OPEN would collect the session on its way.
    for i in (0..5000).step_by(500) {
        let new = respond(
            &mut d,
            &format!(r#"{{"SH_NEW":{{"name":"n{i}","shared":true}}}}"#),
        );
        assert!(new.contains(r#""st":1,"#), "n{i}: {new}");
    }
}
