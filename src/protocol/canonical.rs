//! The fast path for the requests clients send most: `SH_GET` and `SH_SET`
//! written compactly, `tkn` first and `keys` second, as the Python,
//! TypeScript and loadtest clients write them:
//!
//! ```text
//! {"SH_GET":{"tkn":<token>,"keys":["<name>",...]}}
//! {"SH_SET":{"tkn":<token>,"keys":{"<name>":"<text>",...}}}
//! ```
//!
//! `<token>` is a JSON integer or a string of digits; names and values are
//! strings without escapes. Anything else (spaces, other members, escapes,
//! values that are not strings) is declined and goes to the general decoder.
//!
//! [`recognize`] either declines or yields exactly the command the general
//! decoder yields for the same text: the differential property test below and
//! the `canonical` fuzz target check that, input by input.

use super::Command;
use super::request::Versioning;
use crate::domain::{KeyValue, Token};

/// The command `text` stands for, when it has a canonical shape; None sends
/// it to the general decoder.
#[inline]
pub fn recognize(text: &[u8]) -> Option<Command> {
    let rest = text.strip_prefix(b"{\"SH_")?;
    let (is_get, rest) = if let Some(rest) = rest.strip_prefix(b"GET\":{\"tkn\":") {
        (true, rest)
    } else {
        (false, rest.strip_prefix(b"SET\":{\"tkn\":")?)
    };
    // The general decoder refuses text that is not UTF-8 wherever the bad
    // byte is; the shapes below only check the bytes that matter to JSON.
    // Most requests are ASCII, which is checked a word at a time.
    if !text.is_ascii() {
        std::str::from_utf8(text).ok()?;
    }
    let mut reader = Reader { text: rest, at: 0 };
    let tkn = reader.token()?;
    reader.literal(b",\"keys\":")?;
    let command = if is_get {
        Command::Get {
            tkn,
            keys: reader.names()?,
            v: Versioning::default(),
        }
    } else {
        Command::Set {
            tkn,
            keys: reader.key_values()?,
            v: Versioning::default(),
        }
    };
    reader.literal(b"}}")?;
    (reader.at == reader.text.len()).then_some(command)
}

/// A cursor over the text after `"tkn":`; every method declines (None) at
/// the first byte outside the canonical shape.
struct Reader<'t> {
    text: &'t [u8],
    at: usize,
}

impl<'t> Reader<'t> {
    fn rest(&self) -> &'t [u8] {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn next_is(&self, byte: u8) -> bool {
        self.text.get(self.at) == Some(&byte)
    }

    fn byte(&mut self, byte: u8) -> Option<()> {
        self.next_is(byte).then(|| self.at += 1)
    }

    fn literal(&mut self, literal: &[u8]) -> Option<()> {
        self.rest()
            .starts_with(literal)
            .then(|| self.at += literal.len())
    }

    /// A token as a JSON integer (no leading zero, as JSON spells numbers)
    /// or as a string of digits (leading zeros allowed, as the general
    /// decoder allows them); either within u64.
    fn token(&mut self) -> Option<Token> {
        let quoted = self.next_is(b'"');
        if quoted {
            self.at += 1;
        }
        let digits = self.rest();
        let (tkn, len) = atoi_simd::parse_prefix_pos::<u64, false>(digits).ok()?;
        if len == 0 || (!quoted && len > 1 && digits[0] == b'0') {
            return None;
        }
        self.at += len;
        if quoted {
            self.byte(b'"')?;
        }
        // A fraction or exponent would make it no integer; a digit the
        // integer routine left would make it no token.
        (self.next_is(b',')).then_some(tkn)
    }

    /// A string without escapes or control characters: what lies between
    /// its quotes.
    fn plain_string(&mut self) -> Option<&'t [u8]> {
        self.byte(b'"')?;
        let rest = self.rest();
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        self.at += len;
        self.byte(b'"')?;
        rest.get(..len)
    }

    fn name(&mut self) -> Option<Box<str>> {
        // The whole text was checked to be UTF-8, and a string ends at a
        // quote, which is never inside a multi-byte character.
        std::str::from_utf8(self.plain_string()?)
            .ok()
            .map(Box::from)
    }

    /// `SH_GET`'s `keys`: a non-empty array of names.
    fn names(&mut self) -> Option<Vec<Box<str>>> {
        self.byte(b'[')?;
        let mut names = Vec::with_capacity(1);
        loop {
            names.push(self.name()?);
            if self.byte(b']').is_some() {
                return Some(names);
            }
            self.byte(b',')?;
        }
    }

    /// `SH_SET`'s `keys`: a non-empty object of string values, each kept
    /// with its quotes as the stored JSON text.
    fn key_values(&mut self) -> Option<Vec<KeyValue>> {
        self.byte(b'{')?;
        let mut keys = Vec::with_capacity(1);
        loop {
            let name = self.name()?;
            self.byte(b':')?;
            let start = self.at;
            self.plain_string()?;
            keys.push((name, Box::from(self.text.get(start..self.at)?)));
            if self.byte(b'}').is_some() {
                return Some(keys);
            }
            self.byte(b',')?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::request::RequestParser;
    use proptest::prelude::*;

    /// The general decoder alone, as the reference.
    fn general(text: &[u8]) -> Result<Command, crate::protocol::Rejection> {
        RequestParser::default().parse_general(text)
    }

    /// The property: declined, or exactly the general decoder's command.
    fn agrees(text: &[u8]) -> Result<(), TestCaseError> {
        if let Some(fast) = recognize(text) {
            prop_assert_eq!(
                Ok(fast),
                general(text),
                "text: {:?}",
                String::from_utf8_lossy(text)
            );
        }
        Ok(())
    }

    /// Whether `text` took the fast path; panics if it decoded otherwise
    /// than the general decoder.
    fn takes_the_fast_path_alike(text: &[u8]) -> bool {
        let Some(fast) = recognize(text) else {
            return false;
        };
        assert_eq!(Ok(fast), general(text), "{}", String::from_utf8_lossy(text));
        true
    }

    #[test]
    fn the_clients_requests_take_the_fast_path() {
        let tkn = 16351792548006066062_u64;
        for text in [
            format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["user"]}}}}"#),
            format!(r#"{{"SH_GET":{{"tkn":"{tkn}","keys":["user","cart"]}}}}"#),
            format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"user":"q7ZkR2mXb9LwT4sN"}}}}}}"#),
            format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"user":"ü","cart":""}}}}}}"#),
            r#"{"SH_GET":{"tkn":0,"keys":["k"]}}"#.to_string(),
            r#"{"SH_GET":{"tkn":"007","keys":["k"]}}"#.to_string(),
            r#"{"SH_GET":{"tkn":18446744073709551615,"keys":["k"]}}"#.to_string(),
        ] {
            let fast = recognize(text.as_bytes());
            assert!(fast.is_some(), "declined: {text}");
            assert_eq!(Ok(fast.unwrap()), general(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn other_shapes_are_declined() {
        for text in [
            r#"{"SH_GET":{"tkn":1,"keys":[]}}"#,
            r#"{"SH_GET":{"tkn":1,"keys":["a"]}} "#,
            r#"{"SH_GET":{"tkn":1, "keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":01,"keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":1.0,"keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":1e3,"keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":-1,"keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":18446744073709551616,"keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":"","keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":"1 ","keys":["a"]}}"#,
            r#"{"SH_GET":{"tkn":1,"keys":["a\n"]}}"#,
            r#"{"SH_GET":{"tkn":1,"keys":["a"],"withVersion":true}}"#,
            r#"{"SH_GET":{"keys":["a"],"tkn":1}}"#,
            r#"{"SH_SET":{"tkn":1,"keys":{"a":1}}}"#,
            r#"{"SH_SET":{"tkn":1,"keys":{"a":"b"},"ifVersion":3}}"#,
            r#"{"SH_SET":{"tkn":1,"keys":{}}}"#,
            r#"{"SH_ADD":{"tkn":1,"keys":{"a":"b"}}}"#,
            "{\"SH_GET\":{\"tkn\":1,\"keys\":[\"a\t\"]}}",
        ] {
            assert_eq!(recognize(text.as_bytes()), None, "{text}");
        }
        // Not UTF-8 in a name or a value: the general decoder refuses it.
        assert_eq!(
            recognize(b"{\"SH_GET\":{\"tkn\":1,\"keys\":[\"\xff\"]}}"),
            None
        );
        assert_eq!(
            recognize(b"{\"SH_SET\":{\"tkn\":1,\"keys\":{\"a\":\"\xc3\"}}}"),
            None
        );
    }

    /// Text near the canonical shapes: each part either canonical or one of
    /// the ways a client or an attacker might write it differently.
    fn near_canonical() -> impl Strategy<Value = Vec<u8>> {
        let command = prop_oneof![
            6 => Just("SH_GET"),
            6 => Just("SH_SET"),
            1 => Just("SH_ADD"),
            1 => Just("SH_GET "),
            1 => Just("sh_get"),
        ];
        let token = prop_oneof![
            4 => any::<u64>().prop_map(|n| n.to_string()),
            4 => any::<u64>().prop_map(|n| format!("\"{n}\"")),
            1 => "[0-9]{0,25}",
            1 => "\"[0-9]{0,25}\"",
            1 => "-?[0-9]{1,3}(\\.[0-9])?([eE][+-]?[0-9])?",
            1 => Just("null".to_string()),
            1 => Just("\"1\\u0030\"".to_string()),
        ];
        let text = prop_oneof![
            12 => "[a-z0-9]{0,6}",
            2 => "[ -~]{0,6}",
            2 => "\\PC{0,3}",
            1 => Just("\\n".to_string()),
            1 => Just("\\\"".to_string()),
            1 => Just("\\u00e9".to_string()),
        ];
        let string = text.clone().prop_map(|s| format!("\"{s}\""));
        let value = prop_oneof![
            8 => string.clone(),
            1 => Just("1".to_string()),
            1 => Just("{\"x\":\"y\"}".to_string()),
            1 => Just("null".to_string()),
            1 => text.clone(),
        ];
        let names = proptest::collection::vec(string.clone(), 0..3)
            .prop_map(|names| format!("[{}]", names.join(",")));
        let members = proptest::collection::vec((string, value), 0..3).prop_map(|members| {
            let members: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", members.join(","))
        });
        let keys = prop_oneof![names, members];
        let separator = prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\n")];
        let tail = prop_oneof![
            8 => Just(""),
            1 => Just(",\"withVersion\":true"),
            1 => Just(",\"ifVersion\":2"),
            1 => Just(",\"keys\":[\"a\"]"),
        ];
        let swap = prop_oneof![7 => Just(false), 1 => Just(true)];
        (command, token, keys, separator, tail, swap).prop_map(
            |(command, token, keys, separator, tail, swap)| {
                let params = if swap {
                    format!("\"keys\":{keys},{separator}\"tkn\":{token}{tail}")
                } else {
                    format!("\"tkn\":{token},{separator}\"keys\":{keys}{tail}")
                };
                format!("{{\"{command}\":{{{params}}}}}").into_bytes()
            },
        )
    }

    /// One byte changed, inserted or removed somewhere: the edits that
    /// turn a canonical request into one that only looks like it.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (near_canonical(), any::<usize>(), any::<u8>(), 0..3_u8).prop_map(
            |(mut text, at, byte, edit)| {
                let at = at % (text.len() + 1);
                match edit {
                    0 if at < text.len() => text[at] = byte,
                    1 => text.insert(at, byte),
                    _ if at < text.len() => {
                        text.remove(at);
                    }
                    _ => text.push(byte),
                }
                text
            },
        )
    }

    /// The property tests would pass if everything were declined: check
    /// that near-canonical text takes the fast path often, and agrees.
    #[test]
    fn near_canonical_text_often_takes_the_fast_path() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = near_canonical();
        let mut taken = 0;
        for _ in 0..2000 {
            let text = strategy.new_tree(&mut runner).expect("a value").current();
            taken += usize::from(takes_the_fast_path_alike(&text));
        }
        assert!(taken >= 40, "only {taken} of 2000 took the fast path");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn near_canonical_text_is_declined_or_decoded_alike(text in near_canonical()) {
            agrees(&text)?;
        }

        #[test]
        fn mutated_text_is_declined_or_decoded_alike(text in mutated()) {
            agrees(&text)?;
        }
    }

    /// Every one-byte substitution, insertion and deletion of the clients'
    /// requests: each is declined or decoded alike, and some still take
    /// the fast path (the edits that keep them canonical).
    #[test]
    fn every_one_byte_edit_of_a_canonical_request_is_declined_or_decoded_alike() {
        let requests = [
            &br#"{"SH_GET":{"tkn":16351792548006066062,"keys":["user"]}}"#[..],
            br#"{"SH_GET":{"tkn":"90","keys":["user","cart"]}}"#,
            br#"{"SH_SET":{"tkn":16351792548006066062,"keys":{"user":"q7Zk"}}}"#,
            "{\"SH_SET\":{\"tkn\":7,\"keys\":{\"é\":\"ü\",\"b\":\"\"}}}".as_bytes(),
        ];
        let mut taken = 0;
        for request in requests {
            for at in 0..=request.len() {
                let mut edits = Vec::new();
                if at < request.len() {
                    let mut deleted = request.to_vec();
                    deleted.remove(at);
                    edits.push(deleted);
                }
                for byte in 0..=255u8 {
                    let mut inserted = request.to_vec();
                    inserted.insert(at, byte);
                    edits.push(inserted);
                    if at < request.len() {
                        let mut replaced = request.to_vec();
                        replaced[at] = byte;
                        edits.push(replaced);
                    }
                }
                for text in edits {
                    taken += usize::from(takes_the_fast_path_alike(&text));
                }
            }
        }
        assert!(taken > 1000, "only {taken} edits took the fast path");
    }
}
