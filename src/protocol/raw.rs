//! Values exactly as the client wrote them.
//!
//! simd-json validates a request and gives us its structure (a tape), but a parsed
//! value re-encoded is not always the value that came (`1E2` would come back
//! as `100.0`, `-0` as `0`). So once simd-json has accepted the text, the
//! members of the `keys` object are located again in the original bytes and
//! copied as they are, minus insignificant whitespace.
//!
//! The walker trusts that the text is valid JSON (simd-json said so) but
//! never indexes past the end: on anything unexpected it returns `None` and
//! the caller falls back to re-encoding the parsed values.

/// Position in the original text.
struct Walker<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Walker<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string literal, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.skip_ws();
        let start = self.at;
        if self.peek()? != b'"' {
            return None;
        }
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return self.text.get(start..self.at);
                }
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }

    /// Any value; its text from first to last byte.
    fn value(&mut self) -> Option<&'a [u8]> {
        self.skip_ws();
        let start = self.at;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.at += 1;
                }
            }
        }
        self.text.get(start..self.at)
    }

    /// Calls `member` for each member of the object starting here.
    fn object(&mut self, mut member: impl FnMut(&'a [u8], &mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let name = self.string()?;
            self.expect(b':')?;
            member(name, self)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// The name a string literal stands for: without quotes, escapes resolved.
pub fn unescape_name(literal: &[u8]) -> Option<Box<str>> {
    let inner = literal.get(1..literal.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Box::from);
    }
    // Escapes are rare in key names: let simd-json resolve them.
    let mut owned = literal.to_vec();
    let value = simd_json::to_borrowed_value(&mut owned).ok()?;
    simd_json::prelude::ValueAsScalar::as_str(&value).map(Box::from)
}

/// Copies a value's text without the whitespace between tokens.
pub fn compact(value: &[u8]) -> Box<[u8]> {
    // Most values (strings, numbers, small flat objects as clients send
    // them) hold no whitespace at all: one copy. A fold, not an early
    // exit, so the compiler can check many bytes at a time.
    let has_space = value.iter().fold(false, |any, &b| {
        any | (b == b' ') | (b == b'\t') | (b == b'\n') | (b == b'\r')
    });
    if !has_space {
        return Box::from(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in value {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    out.into_boxed_slice()
}

/// Whether `text` is a number as JSON spells it:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &[u8]) -> bool {
    let digits = |at: &mut usize| {
        let start = *at;
        while text.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at > start
    };
    let mut at = usize::from(text.first() == Some(&b'-'));
    if text.get(at) == Some(&b'0') {
        at += 1;
    } else if !digits(&mut at) {
        return false;
    }
    if text.get(at) == Some(&b'.') {
        at += 1;
        if !digits(&mut at) {
            return false;
        }
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(text.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if !digits(&mut at) {
            return false;
        }
    }
    at == text.len()
}

/// Whether a JSON number's text fits what simd-json represents: an i64 or
/// u64 integer, or a finite double.
fn number_fits(text: &str) -> bool {
    if text.contains(['.', 'e', 'E']) {
        text.parse::<f64>().is_ok_and(f64::is_finite)
    } else {
        text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok()
    }
}

/// A copy of `text` where every number simd-json cannot hold (beyond 64
/// bits, or overflowing a double) is overwritten by `1.0` and spaces, or
/// None if there is none. Such numbers are valid JSON: with them out of
/// the way simd-json can check the rest, a parameter holding one is then
/// simply of the wrong type (a float), and stored values are still taken
/// from the original text, exactly as sent.
pub fn neutralize_big_numbers(text: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    while at < text.len() {
        match text[at] {
            b'"' => {
                let mut walker = Walker { text, at };
                walker.string()?;
                at = walker.at;
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < text.len()
                    && matches!(text[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    at += 1;
                }
                let number = std::str::from_utf8(&text[start..at]).ok()?;
                // Malformed numbers stay: the request is invalid JSON.
                if is_json_number(number.as_bytes()) && !number_fits(number) && number.len() >= 3 {
                    let copy = out.get_or_insert_with(|| text.to_vec());
                    copy[start..at].fill(b' ');
                    copy[start..start + 3].copy_from_slice(b"1.0");
                }
            }
            _ => at += 1,
        }
    }
    out
}

/// The raw members of `{"CMD":{..., "keys":{...}}}`: each key's literal and
/// its value's text, in document order. With several `keys` members the
/// first one counts, as it does for the parsed request's lookup.
pub fn keys_members(request: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut walker = Walker {
        text: request,
        at: 0,
    };
    let mut found = None;
    walker.object(|_command, w| {
        w.object(|name, w| {
            // The raw name is compared first: unescaping allocates.
            let is_keys = name == b"\"keys\""
                || (name.contains(&b'\\') && unescape_name(name)?.as_ref() == "keys");
            if found.is_none() && is_keys {
                w.skip_ws();
                if w.peek()? != b'{' {
                    w.value()?;
                    return Some(());
                }
                let mut members = Vec::new();
                w.object(|key, w| {
                    members.push((key, w.value()?));
                    Some(())
                })?;
                found = Some(members);
            } else {
                w.value()?;
            }
            Some(())
        })
    })?;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Vec<(String, String)> {
        keys_members(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                (
                    unescape_name(k).unwrap().to_string(),
                    String::from_utf8(compact(v).to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn values_keep_their_exact_text() {
        let got = members(
            r#" { "SH_SET" : { "tkn" : "5", "keys" : { "a" : 1E2 , "b":-0,"c" : [ 1.0, "x \" ]}" , {"d" : null} ] , "k\u0065y":  true } } } "#,
        );
        assert_eq!(
            got,
            [
                ("a".to_string(), "1E2".to_string()),
                ("b".into(), "-0".into()),
                ("c".into(), r#"[1.0,"x \" ]}",{"d":null}]"#.into()),
                ("key".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn the_first_keys_member_counts_and_others_are_skipped() {
        let got = members(
            r#"{"SH_SET":{"x":{"keys":{"nested":2}},"keys":{"first":"v"},"keys":{"second":1},"tkn":1}}"#,
        );
        assert_eq!(got, [("first".to_string(), "\"v\"".to_string())]);
        assert_eq!(members(r#"{"SH_SET":{"keys":{}}}"#), []);
    }

    #[test]
    fn numbers_beyond_64_bits_are_neutralized_outside_strings_only() {
        let text = br#"{"A":{"tkn":18446744073709551616,"s":"99999999999999999999999","f":1e400,"ok":[-5,18446744073709551615,2.5e10]}}"#;
        let clean = String::from_utf8(neutralize_big_numbers(text).unwrap()).unwrap();
        assert_eq!(
            clean,
            r#"{"A":{"tkn":1.0                 ,"s":"99999999999999999999999","f":1.0  ,"ok":[-5,18446744073709551615,2.5e10]}}"#
        );
        assert!(neutralize_big_numbers(br#"{"A":{"x":[1,-2,3.5]}}"#).is_none());
        for malformed in [
            "1e+",
            "01",
            "1.",
            "-",
            "--1",
            "1e5.5",
            "99999999999999999999e",
        ] {
            let text = format!(r#"{{"A":{{"x":{malformed}}}}}"#);
            assert!(
                neutralize_big_numbers(text.as_bytes()).is_none(),
                "{malformed}"
            );
        }
    }

    #[test]
    fn anything_unexpected_is_none_not_a_panic() {
        for text in [
            "",
            "{",
            r#"{"SH_SET":{"keys":{"a":"#,
            r#"{"SH_SET":{"keys":{"a":"unterminated}}}"#,
            r#"{"SH_SET":{"keys":[1]}}"#,
            r#"{"SH_SET":5}"#,
            r#"{"SH_SET":{"keys":{"a" 1}}}"#,
        ] {
            let _ = keys_members(text.as_bytes());
        }
        assert!(keys_members(br#"{"SH_SET":{"tkn":1}}"#).is_none());
        assert!(keys_members(br#"{"SH_SET":{"keys":[1]}}"#).is_none());
    }
}
