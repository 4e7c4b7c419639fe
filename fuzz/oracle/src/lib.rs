//! The protocol oracle: what the `dispatch` fuzz target (`fuzz/`) and the
//! integration tests (`tests/it/props.rs`, `tests/it/hostile.rs`) all
//! check. [`check`] holds one response against the request it answers,
//! whatever the transport; a [`Harness`] feeds messages
//! to a `LocalDispatcher` (decoding and commands exactly as a one-shard
//! server runs them) and checks, after every message, what docs/PROTOCOL.md
//! promises for any request however malformed:
//!
//! - the response is valid JSON: an object with one member, `ERR` or the
//!   request's command name plus `_RSP`, whose body is an object;
//! - its `st` is in the status table, never 1000, and one the command can
//!   answer with; the frame table's rows get exactly their status;
//! - a successful body holds exactly its command's fields (`version` only
//!   when asked for); a 104 holds `st`, `tkn` and `version`; any other body
//!   only `st`, `tkn` and `m`; a `tkn` echoes the one the request gave;
//! - a response that is not Ok changed nothing: the totals and what the
//!   seeded sessions hold are the same before and after;
//! - `SH_SET`/`SH_CLEAR_SET` values come back from `SH_GET` as the same
//!   JSON, and so does the `value` of an `SH_INCR` (unless `by` was 0 on
//!   an absent key); a session's version, probed before and after, moves
//!   only on a successful write; `SH_INFO_ALL`/`SV_INFO` counts match the store's totals;
//!   `SH_EXISTS` lists found tokens in request order.
//!
//! [`Harness::finish`] then ends every session it saw created and checks the
//! store's accounting returns to zero and every name is released.
//!
//! The hostile inputs the tests share ([`VALID`], [`SLOTS`], [`LITERALS`],
//! [`STRING_PIECES`]) live here too. Every broken promise is a panic, which
//! is how libFuzzer, proptest and the integration tests all learn of it.
//!
//! It must not touch the server's internals: of `nemesisdb` it uses only
//! [`LocalDispatcher`]'s public API (`new`, `handle`, `advance`, `totals`,
//! `set_memory_limit`), and its tables ([`COMMANDS`], [`STATUSES`]) are
//! written from docs/PROTOCOL.md, not taken from the server, so a server
//! change that drifts from the document shows up as a failure here.

use std::collections::HashSet;

use nemesisdb::router::LocalDispatcher;
use simd_json::prelude::*;
use simd_json::value::tape::Node;
use simd_json::{OwnedValue, StaticNode};

/// The status table of docs/PROTOCOL.md, without Unknown (1000).
pub const STATUSES: [u64; 28] = [
    1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 26, 41, 42, 43, 44, 100, 101, 102, 103, 104, 121, 122,
    123, 141, 142, 150, 160,
];

/// Every command of docs/PROTOCOL.md, for generators; see
/// [`allowed_statuses`]. Kept by hand, apart from the server's own command
/// table, so a test can hold the two against each other.
pub const COMMANDS: [&str; 26] = [
    "SH_NEW",
    "SH_OPEN",
    "SH_END",
    "SH_END_ALL",
    "SH_EXISTS",
    "SH_INFO",
    "SH_INFO_ALL",
    "SH_SAVE",
    "SH_LOAD",
    "SH_SET",
    "SH_ADD",
    "SH_GET",
    "SH_RMV",
    "SH_CONTAINS",
    "SH_COUNT",
    "SH_KEYS",
    "SH_CLEAR",
    "SH_CLEAR_SET",
    "SV_INFO",
    "SH_TOUCH",
    "SH_OWNER_SESSIONS",
    "SH_OWNER_END",
    "SH_INCR",
    "SH_SUBSCRIBE",
    "SH_UNSUBSCRIBE",
    "SV_AUTH",
];

/// The dispatcher's seed: fixed, so the tokens it mints (and `$N` in a
/// corpus file) are the same on every run.
pub const SEED: u64 = 0x6e65_6d65;

/// Requests that create the seeded sessions. Session 0 is shared (name
/// "alpha"), session 1 expires (keys only, 30 s, never extended by a read,
/// so probing it changes nothing).
const SEED_SESSIONS: [&str; 2] = [
    r#"{"SH_NEW":{"name":"alpha","shared":true}}"#,
    r#"{"SH_NEW":{"name":"beta","expiry":{"duration":30,"extendOnSetAdd":true}}}"#,
];

/// Keys each seeded session holds, as SH_SET's `keys` object.
const SEED_KEYS: &str = r#"{"k":"v","n":1E2,"z":-0,"o":{"x":[1.0,"\u00e9",null,true]}}"#;

/// Names of [`SEED_KEYS`], for the probe.
const SEED_KEY_NAMES: &str = r#"["k","n","z","o","absent"]"#;

/// Valid requests of every command; `$0` is the shared seeded session,
/// `$1` the expiring one, `$2` and on are sessions the case created.
pub const VALID: &[&str] = &[
    r#"{"SH_NEW":{}}"#,
    r#"{"SH_NEW":{"name":"n","shared":true,"expiry":{"duration":5,"deleteSession":true,"extendOnSetAdd":true,"extendOnGet":true}}}"#,
    r#"{"SH_OPEN":{"name":"alpha"}}"#,
    r#"{"SH_END":{"tkn":$1}}"#,
    r#"{"SH_END_ALL":{}}"#,
    r#"{"SH_EXISTS":{"tkns":[$0,"$1",3]}}"#,
    r#"{"SH_INFO":{"tkn":"$1"}}"#,
    r#"{"SH_INFO_ALL":{}}"#,
    r#"{"SH_SAVE":{"name":"snap","tkns":[$0]}}"#,
    r#"{"SH_LOAD":{"name":"snap"}}"#,
    r#"{"SH_SET":{"tkn":$0,"keys":{"a":1E2,"b":[-0, {"c" : "\u00e9\"\\"}],"k":null}}}"#,
    r#"{"SH_ADD":{"tkn":$1,"keys":{"k":true,"x":18446744073709551615}}}"#,
    r#"{"SH_GET":{"tkn":$0,"keys":["k","n","o","a"]}}"#,
    r#"{"SH_RMV":{"tkn":$1,"keys":["k","z"]}}"#,
    r#"{"SH_CONTAINS":{"tkn":$0,"keys":["k","nope"]}}"#,
    r#"{"SH_COUNT":{"tkn":$0}}"#,
    r#"{"SH_KEYS":{"tkn":$1}}"#,
    r#"{"SH_CLEAR":{"tkn":$0}}"#,
    r#"{"SH_CLEAR_SET":{"tkn":$1,"keys":{"q":-1.5e-3}}}"#,
    r#"{"SV_INFO":{}}"#,
    r#"{"SV_AUTH":{"user":"ann","password":"pw"}}"#,
    r#"{"SH_NEW":{"owner":"ann","keys":{"a":1,"b":[true]},"expiry":{"duration":0,"maxLifetime":60}}}"#,
    r#"{"SH_NEW":{"owner":"ann","expiry":{"duration":0}}}"#,
    r#"{"SH_TOUCH":{"tkn":$1}}"#,
    r#"{"SH_TOUCH":{"tkn":"$0","slide":false}}"#,
    r#"{"SH_OWNER_SESSIONS":{"owner":"ann"}}"#,
    r#"{"SH_OWNER_END":{"owner":"ann","except":$2}}"#,
    r#"{"SH_INCR":{"tkn":$0,"key":"c"}}"#,
    r#"{"SH_INCR":{"tkn":"$1","key":"z","by":-9223372036854775808,"withVersion":true}}"#,
    r#"{"SH_INCR":{"tkn":$0,"key":"k","by":0}}"#,
    r#"{"SH_GET":{"tkn":$0,"keys":["c"],"withVersion":true}}"#,
    r#"{"SH_SET":{"tkn":$0,"keys":{"c":1},"ifVersion":2}}"#,
    r#"{"SH_CLEAR":{"tkn":$1,"ifVersion":3,"withVersion":false}}"#,
    r#"{"SH_OPEN":{"name":"alpha","withVersion":true}}"#,
    r#"{"SH_SUBSCRIBE":{"events":["expired","ended"],"owner":"ann","withKeys":true}}"#,
    r#"{"SH_SUBSCRIBE":{"after":"0000000000000000.0.0"}}"#,
    r#"{"SH_UNSUBSCRIBE":{}}"#,
];

/// Every parameter (and nested expiry field) of every command, with `@`
/// where a hostile value goes. Extra parameters are ignored by the
/// protocol, so commands without parameters get one.
pub const SLOTS: &[&str] = &[
    r#"@"#,
    r#"{@:{}}"#,
    r#"{"SH_NEW":@}"#,
    r#"{"SH_NEW":{"name":@}}"#,
    r#"{"SH_NEW":{"name":@,"shared":true}}"#,
    r#"{"SH_NEW":{"name":"s","shared":@}}"#,
    r#"{"SH_NEW":{"expiry":@}}"#,
    r#"{"SH_NEW":{"expiry":{"duration":@}}}"#,
    r#"{"SH_NEW":{"expiry":{"duration":5,"deleteSession":@}}}"#,
    r#"{"SH_NEW":{"expiry":{"duration":5,"extendOnSetAdd":@}}}"#,
    r#"{"SH_NEW":{"expiry":{"duration":5,"extendOnGet":@}}}"#,
    r#"{"SH_NEW":{"name":"alpha","shared":true,"expiry":{"duration":@}}}"#,
    r#"{"SH_OPEN":@}"#,
    r#"{"SH_OPEN":{"name":@}}"#,
    r#"{"SH_END":{"tkn":@}}"#,
    r#"{"SH_END_ALL":{"x":@}}"#,
    r#"{"SH_END_ALL":@}"#,
    r#"{"SH_EXISTS":{"tkns":@}}"#,
    r#"{"SH_EXISTS":{"tkns":[$0,@,"$1"]}}"#,
    r#"{"SH_INFO":{"tkn":@}}"#,
    r#"{"SH_INFO_ALL":{"x":@}}"#,
    r#"{"SH_SAVE":{"name":@}}"#,
    r#"{"SH_SAVE":{"name":"snap","tkns":@}}"#,
    r#"{"SH_LOAD":{"name":@}}"#,
    r#"{"SH_SET":{"tkn":@,"keys":{"a":1}}}"#,
    r#"{"SH_SET":{"tkn":$0,"keys":@}}"#,
    r#"{"SH_SET":{"tkn":$0,"keys":{"a":@,"b":2}}}"#,
    r#"{"SH_SET":{"tkn":$1,"keys":{@:1}}}"#,
    r#"{"SH_SET":{"keys":{"a":1},"tkn":$0,"x":@}}"#,
    r#"{"SH_ADD":{"tkn":@,"keys":{"a":1}}}"#,
    r#"{"SH_ADD":{"tkn":$1,"keys":@}}"#,
    r#"{"SH_ADD":{"tkn":$0,"keys":{"k":@,"new":@}}}"#,
    r#"{"SH_GET":{"tkn":@,"keys":["k"]}}"#,
    r#"{"SH_GET":{"tkn":$0,"keys":@}}"#,
    r#"{"SH_GET":{"tkn":$1,"keys":["k",@,"n"]}}"#,
    r#"{"SH_RMV":{"tkn":@,"keys":["k"]}}"#,
    r#"{"SH_RMV":{"tkn":$0,"keys":@}}"#,
    r#"{"SH_RMV":{"tkn":$0,"keys":[@]}}"#,
    r#"{"SH_CONTAINS":{"tkn":@,"keys":["k"]}}"#,
    r#"{"SH_CONTAINS":{"tkn":$1,"keys":@}}"#,
    r#"{"SH_CONTAINS":{"tkn":$1,"keys":[@,"k"]}}"#,
    r#"{"SH_COUNT":{"tkn":@}}"#,
    r#"{"SH_KEYS":{"tkn":@}}"#,
    r#"{"SH_CLEAR":{"tkn":@}}"#,
    r#"{"SH_CLEAR_SET":{"tkn":@,"keys":{}}}"#,
    r#"{"SH_CLEAR_SET":{"tkn":$1,"keys":@}}"#,
    r#"{"SH_CLEAR_SET":{"tkn":$0,"keys":{"a":@}}}"#,
    r#"{"SV_INFO":{"x":@}}"#,
    r#"{"SV_AUTH":{"user":@,"password":"pw"}}"#,
    r#"{"SV_AUTH":{"user":"ann","password":@}}"#,
    r#"{"SV_INFO":@}"#,
    r#"{"SH_NEW":{"owner":@}}"#,
    r#"{"SH_NEW":{"keys":@}}"#,
    r#"{"SH_NEW":{"owner":"ann","keys":{"a":@}}}"#,
    r#"{"SH_NEW":{"expiry":{"maxLifetime":@}}}"#,
    r#"{"SH_NEW":{"expiry":{"duration":@,"maxLifetime":5}}}"#,
    r#"{"SH_TOUCH":{"tkn":@}}"#,
    r#"{"SH_TOUCH":{"tkn":$1,"slide":@}}"#,
    r#"{"SH_OWNER_SESSIONS":{"owner":@}}"#,
    r#"{"SH_OWNER_END":{"owner":@}}"#,
    r#"{"SH_OWNER_END":{"owner":"ann","except":@}}"#,
    r#"{"SH_INCR":{"tkn":@,"key":"n"}}"#,
    r#"{"SH_INCR":{"tkn":$0,"key":@}}"#,
    r#"{"SH_INCR":{"tkn":$1,"key":"n","by":@}}"#,
    r#"{"SH_INCR":{"tkn":$0,"key":"c","by":@}}"#,
    r#"{"SH_SET":{"tkn":$0,"keys":{"c":@}}}"#,
    r#"{"SH_GET":{"tkn":$0,"keys":["c"],"withVersion":@}}"#,
    r#"{"SH_SET":{"tkn":$1,"keys":{"v":1},"ifVersion":@}}"#,
    r#"{"SH_INCR":{"tkn":$0,"key":"n","ifVersion":@}}"#,
    r#"{"SH_RMV":{"tkn":$0,"keys":["k"],"ifVersion":@}}"#,
    r#"{"SH_END":{"tkn":$1,"ifVersion":@}}"#,
    r#"{"SH_NEW":{"withVersion":@}}"#,
    r#"{"SH_END_ALL":{"ifVersion":@}}"#,
    r#"{"SH_SUBSCRIBE":{"events":@}}"#,
    r#"{"SH_SUBSCRIBE":{"events":["created",@]}}"#,
    r#"{"SH_SUBSCRIBE":{"owner":@}}"#,
    r#"{"SH_SUBSCRIBE":{"withKeys":@}}"#,
    r#"{"SH_SUBSCRIBE":{"after":@}}"#,
    r#"{"SH_UNSUBSCRIBE":{"x":@}}"#,
];

/// Scalars that are hostile somewhere: every JSON type, numbers at and
/// past every limit, and things that look like JSON but are not.
pub const LITERALS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1",
    "-1",
    "1.0",
    "-0.0",
    "1E2",
    "1e-2",
    "1E+2",
    "0.5",
    "1.5",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "1e308",
    "1e309",
    "1e400",
    "-1e400",
    "1e-400",
    "2.2250738585072014e-308",
    "4.9e-324",
    "1e-99999",
    "1e99999",
    "-0e0",
    "0e+1",
    "1E-0",
    "0.12345678901234567890123456789",
    "123456789012345678901234567890e-10",
    "12345678901234567890.5",
    "-12345678901234567890123",
    "\"\"",
    "\"0\"",
    "\"5\"",
    "\"18446744073709551615\"",
    "\"18446744073709551616\"",
    "\"-1\"",
    "\" 5\"",
    "\"+5\"",
    "\"$0\"",
    "$1",
    "\"alpha\"",
    "\"keys\"",
    "[]",
    "{}",
    "[null]",
    "{\"duration\":5}",
    // Not JSON.
    "01",
    "-",
    "+1",
    ".5",
    "1.",
    "1e",
    "NaN",
    "Infinity",
    "0x10",
    "nul",
    "tru",
    "'a'",
    "",
    "\"unterminated",
    "[1,]",
    "{\"a\"}",
    "{\"a\":1,}",
];

/// Pieces of string bodies: escapes valid and not, lone surrogates, raw
/// control characters (invalid inside a JSON string), multi-byte UTF-8.
pub const STRING_PIECES: &[&str] = &[
    "a",
    " ",
    "é",
    "😀",
    "\\u0000",
    "\\u001f",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\udbff",
    "\\udc00",
    "\\ud800\\u0041",
    "\\ud800\\ud800",
    "\\\"",
    "\\\\",
    "\\/",
    "\\b\\f\\n\\r\\t",
    "\\x",
    "\\u12",
    "\\uZZZZ",
    "\\U0041",
    "\\",
    "\t",
    "\u{1}",
    "\u{7f}",
    "}",
    "]",
    ",",
    ":",
];

/// Member names chosen so that duplicates are common.
pub const NAMES: &[&str] = &[
    "\"a\"",
    "\"a\"",
    "\"tkn\"",
    "\"keys\"",
    "\"name\"",
    "\"\\u0061\"",
    "\"\"",
];

/// The statuses a command may answer with (persistence on or off). A
/// command whose value is not an object gets 12.
pub fn allowed_statuses(command: &str) -> &'static [u64] {
    match command {
        "SH_NEW" => &[1, 12, 26, 41, 42, 103, 150],
        "SH_OPEN" => &[1, 12, 26, 41, 42, 102],
        "SH_END" | "SH_INFO" | "SH_COUNT" | "SH_KEYS" => &[1, 12, 41, 100, 101],
        "SH_CLEAR" => &[1, 12, 41, 100, 101, 104],
        "SH_END_ALL" | "SH_INFO_ALL" | "SV_INFO" => &[1, 12, 41],
        "SH_EXISTS" => &[1, 12, 26, 41],
        "SH_SAVE" => &[12, 14, 26, 41, 42, 121, 122, 123],
        "SH_LOAD" => &[12, 14, 26, 41, 42, 141, 142],
        "SH_SET" | "SH_ADD" | "SH_CLEAR_SET" => &[1, 12, 26, 41, 100, 101, 104, 150],
        "SH_RMV" => &[1, 12, 26, 41, 100, 101, 104],
        "SH_GET" | "SH_CONTAINS" => &[1, 12, 26, 41, 100, 101],
        "SH_INCR" => &[1, 12, 26, 41, 43, 44, 100, 101, 104, 150],
        "SH_SUBSCRIBE" => &[1, 12, 41, 42, 160],
        "SH_UNSUBSCRIBE" => &[1, 12, 41],
        "SH_TOUCH" => &[1, 12, 41, 100, 101],
        "SH_OWNER_SESSIONS" => &[1, 12, 26, 41, 42],
        "SH_OWNER_END" => &[1, 12, 26, 41, 42, 101],
        // The harness is a server without users: anyone authenticates.
        "SV_AUTH" => &[1, 12, 26, 41, 42],
        _ => &[10, 12],
    }
}

/// The fields a successful body (status 1, or 121 / 141 for save / load)
/// holds besides `st`: (always, sometimes).
fn ok_fields(command: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match command {
        "SH_NEW" => (&["tkn"], &["name", "version"]),
        "SH_OPEN" => (&["tkn", "name"], &["version"]),
        "SH_END" => (&["tkn"], &[]),
        "SH_SET" | "SH_ADD" | "SH_RMV" => (&["tkn"], &["version"]),
        "SH_INCR" => (&["tkn", "key", "value"], &["version"]),
        "SH_SUBSCRIBE" => (&["cursor"], &[]),
        "SH_UNSUBSCRIBE" => (&[], &[]),
        "SH_END_ALL" => (&["cnt"], &[]),
        "SH_SAVE" => (&["name", "duration", "sessions", "keys"], &[]),
        "SH_LOAD" => (&["name", "sessions", "keys"], &[]),
        "SH_EXISTS" => (&["exist"], &[]),
        "SH_INFO" => (
            &["tkn", "shared", "keyCnt", "expires"],
            &["name", "owner", "expiry", "version"],
        ),
        "SH_TOUCH" => (&["tkn", "ttlMs"], &["version"]),
        "SH_OWNER_SESSIONS" => (&["owner", "tkns"], &[]),
        "SH_OWNER_END" => (&["owner", "cnt"], &[]),
        "SH_INFO_ALL" => (&["totalSessions", "totalKeys"], &[]),
        "SV_AUTH" => (&["user", "role"], &[]),
        "SH_GET" | "SH_KEYS" => (&["tkn", "keys"], &["version"]),
        "SH_CONTAINS" => (&["tkn", "contains"], &["version"]),
        "SH_COUNT" | "SH_CLEAR" | "SH_CLEAR_SET" => (&["tkn", "cnt"], &["version"]),
        "SV_INFO" => (
            &[
                "serverVersion",
                "persistEnabled",
                "shards",
                "sessions",
                "keys",
                "connections",
                "uptimeSeconds",
                "memoryUsed",
                "maxMemory",
                "sessionNotExist",
            ],
            &[],
        ),
        _ => (&[], &[]),
    }
}

/// Commands that take `tkn` and echo it unless it is invalid (101).
fn takes_token(command: &str) -> bool {
    matches!(
        command,
        "SH_END"
            | "SH_INFO"
            | "SH_SET"
            | "SH_ADD"
            | "SH_GET"
            | "SH_RMV"
            | "SH_CONTAINS"
            | "SH_COUNT"
            | "SH_KEYS"
            | "SH_CLEAR"
            | "SH_CLEAR_SET"
            | "SH_TOUCH"
            | "SH_INCR"
    )
}

/// A checked response: the command it answered (`ERR` for the frame
/// rows), its status and its body.
pub struct Checked {
    pub command: String,
    pub status: u64,
    pub body: Json,
    /// The response exactly as sent.
    pub response: Vec<u8>,
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A JSON document as the protocol sees it: members in order with
/// duplicates kept, numbers of any size. Floats carry no value: a number
/// simd-json cannot hold is checked by its spelling, not its value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// An integer that fits i64 or u64.
    Int(i128),
    /// Any other number: a fraction, an exponent, or beyond 64 bits.
    Float,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    /// The first member named `key`.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.as_object()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(members) => Some(members),
            _ => None,
        }
    }

    /// Whether an object holds some member name twice.
    pub fn has_duplicate_members(&self) -> bool {
        self.as_object().is_some_and(|members| {
            let names: HashSet<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
            names.len() != members.len()
        })
    }

    /// Compact text; floats print as `0.5` (their value is not kept).
    pub fn encode(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Int(n) => n.to_string(),
            Json::Float => "0.5".into(),
            Json::Str(s) => OwnedValue::from(s.clone()).encode(),
            Json::Array(items) => {
                let items: Vec<String> = items.iter().map(Json::encode).collect();
                format!("[{}]", items.join(","))
            }
            Json::Object(members) => {
                let members: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Json::Str(k.clone()).encode(), v.encode()))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;

    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Whether `n` is a JSON number by RFC 8259's grammar:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(n: &[u8]) -> bool {
    let digits = |s: &[u8], at: &mut usize| {
        let start = *at;
        while s.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at > start
    };
    let mut at = usize::from(n.first() == Some(&b'-'));
    match n.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => {
            digits(n, &mut at);
        }
        _ => return false,
    }
    if n.get(at) == Some(&b'.') {
        at += 1;
        if !digits(n, &mut at) {
            return false;
        }
    }
    if matches!(n.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(n.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if !digits(n, &mut at) {
            return false;
        }
    }
    at == n.len()
}

/// `text` with every number that is not a 64-bit integer (by the grammar;
/// malformed ones stay for the parser to refuse) overwritten by `0.5` and
/// spaces: the protocol takes numbers of any size, simd-json does not, and
/// the checks only need to know such a number is a float.
fn floats_blanked(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    let mut at = 0;
    while at < text.len() {
        match text[at] {
            b'"' => {
                at += 1;
                while at < text.len() && text[at] != b'"' {
                    at += if text[at] == b'\\' { 2 } else { 1 };
                }
                at += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < text.len()
                    && matches!(text[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    at += 1;
                }
                let n = &text[start..at];
                let int = std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| s.parse::<i128>().ok())
                    .is_some_and(|v| v >= i128::from(i64::MIN) && v <= i128::from(u64::MAX));
                if is_json_number(n) && !int {
                    out[start..at].fill(b' ');
                    out[start..start + 3].copy_from_slice(b"0.5");
                }
            }
            _ => at += 1,
        }
    }
    out
}

/// Parses JSON as the protocol defines it (simd-json's syntax, depth limit
/// and string rules; numbers of any size). None when it is not JSON.
pub fn parse(bytes: &[u8]) -> Option<Json> {
    let mut blanked = floats_blanked(bytes);
    let tape = simd_json::to_tape(&mut blanked).ok()?;
    let mut at = 0;
    Some(from_tape(&tape.0, &mut at))
}

fn from_tape(nodes: &[Node<'_>], at: &mut usize) -> Json {
    let node = nodes[*at];
    *at += 1;
    match node {
        Node::String(s) => Json::Str(s.to_string()),
        Node::Static(StaticNode::Null) => Json::Null,
        Node::Static(StaticNode::Bool(b)) => Json::Bool(b),
        Node::Static(StaticNode::I64(n)) => Json::Int(i128::from(n)),
        Node::Static(StaticNode::U64(n)) => Json::Int(i128::from(n)),
        Node::Static(_) => Json::Float,
        Node::Array { len, .. } => Json::Array((0..len).map(|_| from_tape(nodes, at)).collect()),
        Node::Object { len, .. } => Json::Object(
            (0..len)
                .map(|_| {
                    let key = match nodes[*at] {
                        Node::String(k) => k.to_string(),
                        other => panic!("object key is not a string on the tape: {other:?}"),
                    };
                    *at += 1;
                    (key, from_tape(nodes, at))
                })
                .collect(),
        ),
    }
}

/// A token as the protocol reads one: an integer JSON number in u64, or a
/// decimal string of digits that fits in u64.
pub fn token_of(value: &Json) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let s = value.as_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Checks one response against the request it answers (see the module doc
/// for what is asserted). Panics, naming both, when a promise is broken.
pub fn check(request: &[u8], text: bool, response: &[u8]) -> Checked {
    let context = || {
        format!(
            "\nrequest ({}): {:?}\nresponse: {:?}",
            if text { "text" } else { "binary" },
            show(request),
            show(response)
        )
    };
    let parsed = parse(response).unwrap_or_else(|| panic!("response is not JSON{}", context()));
    let object = parsed
        .as_object()
        .unwrap_or_else(|| panic!("response is not an object{}", context()));
    assert_eq!(object.len(), 1, "response has one member{}", context());
    let (name, body) = &object[0];
    let body_object = body
        .as_object()
        .unwrap_or_else(|| panic!("response body is not an object{}", context()));
    let status = body
        .get("st")
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("body has no unsigned st{}", context()));
    assert_ne!(status, 1000, "status Unknown{}", context());
    assert!(
        STATUSES.contains(&status),
        "status not in the table{}",
        context()
    );

    // What the request was, read independently of the server's decoder.
    let frame_status = if !text {
        Some(2)
    } else if std::str::from_utf8(request).is_err() {
        Some(3)
    } else {
        match parse(request) {
            None => Some(3),
            Some(value) => match value.as_object() {
                None => Some(13),
                Some([]) => Some(13),
                Some(o) if o.len() > 1 => Some(11),
                Some(_) => None,
            },
        }
    };
    if let Some(expected) = frame_status {
        assert_eq!(name.as_str(), "ERR", "frame rows answer ERR{}", context());
        assert_eq!(status, expected, "frame row status{}", context());
        only_fields(body_object, &["st", "m"], &context);
        return Checked {
            command: "ERR".into(),
            status,
            body: body.clone(),
            response: response.to_vec(),
        };
    }
    let value = parse(request).expect("parsed above");
    let (command, params) = &value.as_object().expect("one member")[0];
    assert_eq!(
        name.as_str(),
        format!("{command}_RSP"),
        "response named after the command{}",
        context()
    );
    if params.as_object().is_none() {
        assert_eq!(status, 12, "command value not an object{}", context());
        only_fields(body_object, &["st"], &context);
        return Checked {
            command: command.clone(),
            status,
            body: body.clone(),
            response: response.to_vec(),
        };
    }
    let known = COMMANDS.contains(&command.as_str());
    if known && params.has_duplicate_members() {
        // A parameter given twice: ambiguous, status 13.
        assert_eq!(status, 13, "a parameter given twice{}", context());
    } else if !known && params.has_duplicate_members() {
        // Unknown command (10) whose parameters repeat one (13): the
        // protocol does not say which is checked first.
        assert!(matches!(status, 10 | 13), "unknown command{}", context());
    } else if command == "SH_NEW"
        && params
            .get("expiry")
            .is_some_and(Json::has_duplicate_members)
    {
        // An expiry setting given twice: 13, unless another parameter
        // was found wrong first.
        assert!(
            status != 1 && (status == 13 || allowed_statuses(command).contains(&status)),
            "an expiry setting given twice{}",
            context()
        );
    } else {
        assert!(
            allowed_statuses(command).contains(&status),
            "status {status} is not one {command} answers with{}",
            context()
        );
    }
    let success = matches!(
        (command.as_str(), status),
        (_, 1) | ("SH_SAVE", 121) | ("SH_LOAD", 141)
    );
    if success {
        let (always, sometimes) = ok_fields(command);
        for field in always {
            assert!(
                body.get(field).is_some(),
                "Ok body lacks {field}{}",
                context()
            );
        }
        let allowed: Vec<&str> = ["st"]
            .iter()
            .chain(always)
            .chain(sometimes)
            .copied()
            .collect();
        only_fields(body_object, &allowed, &context);
        // `version` only when asked for (or for a write with ifVersion).
        if let Some(params) = params.as_object()
            && !params.is_empty()
        {
            let reports = matches!(command.as_str(), "SH_NEW" | "SH_OPEN")
                || takes_token(command) && command != "SH_END";
            let guarded = matches!(
                command.as_str(),
                "SH_SET" | "SH_ADD" | "SH_RMV" | "SH_CLEAR" | "SH_CLEAR_SET" | "SH_INCR"
            );
            let asked = params.iter().any(|(k, v)| {
                k == "withVersion" && *v == Json::Bool(true) && reports
                    || k == "ifVersion" && guarded
            });
            assert_eq!(
                body.get("version").is_some(),
                asked,
                "version in the body exactly when asked for{}",
                context()
            );
        }
    } else if status == 160 {
        only_fields(body_object, &["st", "cursor", "lost"], &context);
        assert!(
            body.get("cursor").and_then(Json::as_str).is_some(),
            "160 says where delivery starts{}",
            context()
        );
    } else if status == 104 {
        only_fields(body_object, &["st", "tkn", "version"], &context);
        assert!(
            body.get("version").and_then(Json::as_u64).is_some(),
            "104 says the current version{}",
            context()
        );
    } else {
        only_fields(body_object, &["st", "tkn", "m"], &context);
    }
    if takes_token(command) && status != 13 {
        let given = params.get("tkn").and_then(token_of);
        let echoed = body.get("tkn").map(|t| t.as_u64());
        match echoed {
            Some(Some(t)) => assert_eq!(Some(t), given, "tkn echoed{}", context()),
            Some(None) => panic!("tkn is not a u64{}", context()),
            None => assert!(
                status == 101 && given.is_none(),
                "only an invalid tkn goes unechoed{}",
                context()
            ),
        }
        if status == 101 {
            assert_eq!(given, None, "101 for a valid tkn{}", context());
        }
    }
    Checked {
        command: command.clone(),
        status,
        body: body.clone(),
        response: response.to_vec(),
    }
}

fn only_fields(body: &[(String, Json)], allowed: &[&str], context: &dyn Fn() -> String) {
    for (field, _) in body {
        assert!(
            allowed.contains(&field.as_str()),
            "unexpected field {field}{}",
            context()
        );
    }
    let distinct: HashSet<&str> = body.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        distinct.len(),
        body.len(),
        "a field appears twice{}",
        context()
    );
}

/// Equal JSON, duplicate members and their order included (a stored value
/// is its text: it comes back with every member as sent).
fn same_json(a: &Json, b: &Json) -> bool {
    a == b
}

/// What the seeded sessions look like from outside, and the store's totals.
#[derive(PartialEq)]
struct Snapshot {
    totals: (u64, u64, u64),
    probes: Vec<Vec<u8>>,
}

impl Snapshot {
    fn describe(&self) -> String {
        let probes: Vec<String> = self.probes.iter().map(|p| show(p)).collect();
        format!("totals {:?}, probes {}", self.totals, probes.join(" "))
    }
}

/// A `LocalDispatcher` with two seeded sessions, checking every response.
pub struct Harness {
    dispatcher: LocalDispatcher,
    /// Every token SH_NEW answered with, seeded sessions first. In a text
    /// message, `$` and a digit `d` stand for `tokens[d % len]`.
    tokens: Vec<u64>,
    /// Every name SH_NEW answered with; all released once all sessions end.
    names: Vec<String>,
    /// Taken before a message when None; dropped after an Ok response (or
    /// a clock move), which may change what it shows.
    snapshot: Option<Snapshot>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let mut h = Harness {
            dispatcher: LocalDispatcher::with_shards(SEED, 2),
            tokens: Vec::new(),
            names: Vec::new(),
            snapshot: None,
        };
        for new in SEED_SESSIONS {
            let response = h.raw(new);
            let tkn = parse(&response).expect("checked")["SH_NEW_RSP"]["tkn"].as_u64();
            h.tokens.push(tkn.expect("seeded session"));
        }
        h.names.extend(["alpha".to_string(), "beta".to_string()]);
        for tkn in h.tokens.clone() {
            let set = format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{SEED_KEYS}}}}}"#);
            assert!(show(&h.raw(&set)).contains(r#""st":1,"#));
        }
        h
    }

    /// Tokens of sessions created so far (seeded first).
    pub fn tokens(&self) -> &[u64] {
        &self.tokens
    }

    /// Moves the clock on (background expiry runs).
    pub fn advance(&mut self, ms: u64) {
        self.dispatcher.advance(ms);
        self.snapshot = None;
    }

    /// Sets the memory limit to what is used now plus `headroom` bytes
    /// (None: no limit).
    pub fn limit_memory(&mut self, headroom: Option<u64>) {
        let limit = headroom.map_or(0, |h| self.dispatcher.totals().2 + h.max(1));
        self.dispatcher.set_memory_limit(limit);
        self.snapshot = None;
    }

    /// `$d` -> a known token, in decimal.
    fn substitute(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + 16);
        let mut i = 0;
        while i < message.len() {
            match (message[i], message.get(i + 1)) {
                (b'$', Some(d)) if d.is_ascii_digit() && !self.tokens.is_empty() => {
                    let tkn = self.tokens[usize::from(d - b'0') % self.tokens.len()];
                    out.extend_from_slice(tkn.to_string().as_bytes());
                    i += 2;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn raw(&mut self, request: &str) -> Vec<u8> {
        let response = self.dispatcher.handle(request.as_bytes(), true);
        check(request.as_bytes(), true, &response);
        response
    }

    /// Our own requests, answered as any other but not checked again: the
    /// snapshot runs before and after every message, so it must be cheap.
    fn take_snapshot(&mut self) -> Snapshot {
        let totals = self.dispatcher.totals();
        let mut probes = Vec::new();
        for i in 0..SEED_SESSIONS.len() {
            let tkn = self.tokens[i];
            for request in [
                format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":{SEED_KEY_NAMES}}}}}"#),
                format!(r#"{{"SH_INFO":{{"tkn":{tkn},"withVersion":true}}}}"#),
            ] {
                probes.push(self.dispatcher.handle(request.as_bytes(), true));
            }
        }
        probes.push(
            self.dispatcher
                .handle(br#"{"SH_OPEN":{"name":"alpha"}}"#, true),
        );
        Snapshot { totals, probes }
    }

    /// Sends one message (`$d` substituted in text) and checks its response.
    pub fn run(&mut self, message: &[u8], text: bool) -> Checked {
        let message = if text {
            self.substitute(message)
        } else {
            message.to_vec()
        };
        let before = match self.snapshot.take() {
            Some(s) => s,
            None => self.take_snapshot(),
        };
        let response = self.dispatcher.handle(&message, text);
        let checked = check(&message, text, &response);
        if checked.status == 1 {
            self.after_ok(&message, &checked);
        } else {
            let after = self.take_snapshot();
            assert!(
                before == after,
                "a response that is not Ok changed stored data\nrequest: {:?}\nresponse: {:?}\nbefore: {}\nafter: {}",
                show(&message),
                show(&response),
                before.describe(),
                after.describe()
            );
            self.snapshot = Some(after);
        }
        checked
    }

    fn after_ok(&mut self, message: &[u8], checked: &Checked) {
        let context = || {
            format!(
                "\nrequest: {:?}\nresponse body: {}",
                show(message),
                checked.body
            )
        };
        match checked.command.as_str() {
            "SH_NEW" => {
                let tkn = checked.body["tkn"].as_u64().expect("checked");
                assert_ne!(tkn, 0, "token 0{}", context());
                assert!(!self.tokens.contains(&tkn), "token reused{}", context());
                self.tokens.push(tkn);
                if let Some(name) = checked.body.get("name").and_then(|n| n.as_str()) {
                    self.names.push(name.to_string());
                }
            }
            "SH_SET" | "SH_CLEAR_SET" => self.verify_round_trip(message, checked),
            "SH_INCR" => self.verify_increment(message, checked),
            "SH_INFO_ALL" | "SV_INFO" => {
                // Counts come from the same settled store as `totals`.
                let (sessions, keys, bytes) = self.dispatcher.totals();
                let b = &checked.body;
                let (s, k) = if checked.command == "SV_INFO" {
                    assert_eq!(b["memoryUsed"].as_u64(), Some(bytes), "{}", context());
                    ("sessions", "keys")
                } else {
                    ("totalSessions", "totalKeys")
                };
                assert_eq!(b[s].as_u64(), Some(sessions), "{}", context());
                assert_eq!(b[k].as_u64(), Some(keys), "{}", context());
            }
            "SH_EXISTS" => {
                // Tokens found, in request order: a subsequence of those given.
                let request = parse(message).expect("it was Ok");
                let given: Vec<u64> = request
                    .as_object()
                    .and_then(|o| o.first())
                    .and_then(|(_, p)| p.get("tkns"))
                    .and_then(|t| t.as_array())
                    .map(|a| a.iter().filter_map(token_of).collect())
                    .unwrap_or_default();
                let mut rest = given.iter();
                let exist = checked.body["exist"].as_array().expect("checked");
                for t in exist.iter() {
                    let t = t.as_u64().expect("tokens are numbers");
                    assert!(
                        rest.any(|g| *g == t),
                        "exist is not in request order{}",
                        context()
                    );
                }
            }
            _ => {}
        }
    }

    /// After an Ok SH_SET / SH_CLEAR_SET: each key sent comes back from
    /// SH_GET as the same JSON value; a key sent twice has its last value.
    fn verify_round_trip(&mut self, message: &[u8], checked: &Checked) {
        let request = parse(message).expect("it was Ok");
        let params = &request.as_object().expect("one command")[0].1;
        let Some(keys) = params.get("keys").and_then(Json::as_object) else {
            return;
        };
        let mut expected: Vec<(String, Json)> = Vec::new();
        for (k, v) in keys {
            match expected.iter_mut().find(|(e, _)| e == k) {
                Some(entry) => entry.1 = v.clone(),
                None => expected.push((k.clone(), v.clone())),
            }
        }
        let tkn = checked.body["tkn"].as_u64().expect("checked");
        let names = Json::Array(expected.iter().map(|(k, _)| Json::Str(k.clone())).collect());
        let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":{names}}}}}"#);
        let response = self.raw(&get);
        let got = parse(&response).expect("checked");
        let got = Json::Object(
            got["SH_GET_RSP"]["keys"]
                .as_object()
                .expect("SH_GET returns keys")
                .to_vec(),
        );
        assert!(
            same_json(&got, &Json::Object(expected)),
            "SH_GET after {}\nrequest: {:?}\nget: {:?}",
            checked.command,
            show(message),
            show(&response)
        );
        self.snapshot = None;
    }

    /// After an Ok SH_INCR: `value` is an i64 and is what the key now holds
    /// (a `by` of 0 on an absent key creates nothing).
    fn verify_increment(&mut self, message: &[u8], checked: &Checked) {
        let value = match checked.body.get("value") {
            Some(Json::Int(n)) if i64::try_from(*n).is_ok() => *n,
            other => panic!("SH_INCR value {other:?} is not an i64: {}", show(message)),
        };
        let tkn = checked.body["tkn"].as_u64().expect("checked");
        let key = checked.body["key"].clone();
        let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":[{key}]}}}}"#);
        let response = self.raw(&get);
        let got = parse(&response).expect("checked");
        let stored = got["SH_GET_RSP"]["keys"].get(key.as_str().expect("a name"));
        let by_zero = parse(message)
            .and_then(|r| r.as_object().map(|o| o[0].1.clone()))
            .and_then(|p| p.get("by").cloned())
            == Some(Json::Int(0));
        match stored {
            Some(stored) => assert_eq!(
                stored,
                &Json::Int(value),
                "SH_GET after SH_INCR\nrequest: {:?}\nget: {:?}",
                show(message),
                show(&response)
            ),
            None => assert!(
                by_zero && value == 0,
                "SH_INCR left no key\nrequest: {:?}",
                show(message)
            ),
        }
        self.snapshot = None;
    }

    /// Ends every session seen created; the store must then be empty with
    /// its accounting at zero, and every name free again.
    pub fn finish(mut self) {
        for tkn in self.tokens.clone() {
            let r = show(&self.raw(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#)));
            assert!(
                r.contains(r#""st":1,"#) || r.contains(r#""st":100,"#),
                "SH_END of a known token: {r}"
            );
        }
        assert_eq!(
            self.dispatcher.totals(),
            (0, 0, 0),
            "sessions, keys and accounted bytes after ending every session"
        );
        for name in self.names.clone() {
            let open = Json::Str(name.clone());
            let r = self.raw(&format!(r#"{{"SH_OPEN":{{"name":{open}}}}}"#));
            assert!(
                show(&r).contains(r#""st":102"#),
                "name {name:?} still open after its session ended: {}",
                show(&r)
            );
        }
    }
}

/// Runs a fuzz input: messages separated by 0xFF (never valid UTF-8, so no
/// text message loses anything), each led by a control byte:
/// `b` binary frame; `0`-`9` advance the clock that many seconds first;
/// `A`-`Z` advance that many minutes first; `m` limit memory to what is
/// used plus 300 bytes; `u` lift the limit; anything else: plain text.
pub fn run_input(data: &[u8]) {
    let mut h = Harness::new();
    for chunk in data.split(|&b| b == 0xff).take(64) {
        let Some((&control, message)) = chunk.split_first() else {
            continue;
        };
        let mut text = true;
        match control {
            b'b' => text = false,
            b'0'..=b'9' => h.advance(u64::from(control - b'0') * 1000),
            b'A'..=b'Z' => h.advance(u64::from(control - b'A' + 1) * 60_000),
            b'm' => h.limit_memory(Some(300)),
            b'u' => h.limit_memory(None),
            _ => {}
        }
        h.run(message, text);
    }
    h.finish();
}
