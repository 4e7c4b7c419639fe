//! Redis RESP2 as a load generator needs it: encoding command arguments and
//! finding reply boundaries in received bytes.
//!
//! Owns: byte formats only. Knows nothing about workloads or connections.

use memchr::memchr;

/// Appends one argument as a bulk string.
pub fn bulk(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// What a reply says, as far as success counting goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`, a bulk string, an array, or nil.
    Value,
    /// `-...`.
    Error,
    /// `:n`.
    Integer(i64),
}

/// Received bytes that are not RESP.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Nesting allowed in one reply; our commands' replies nest at most once.
const MAX_DEPTH: usize = 8;

/// The reply at the start of `buf` and its length, `Ok(None)` while incomplete.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(usize, Reply)>, Malformed> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(usize, Reply)>, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let Some(nl) = memchr(b'\n', buf) else {
        return Ok(None);
    };
    if nl < 2 || buf[nl - 1] != b'\r' {
        return Err(Malformed);
    }
    let line = &buf[1..nl - 1];
    let after = nl + 1;
    match buf[0] {
        b'+' => Ok(Some((after, Reply::Value))),
        b'-' => Ok(Some((after, Reply::Error))),
        b':' => Ok(Some((after, Reply::Integer(int(line)?)))),
        b'$' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((after, Reply::Value)));
            }
            let end = after + n as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(Malformed);
            }
            Ok(Some((end, Reply::Value)))
        }
        b'*' => {
            let n = int(line)?;
            let mut at = after;
            for _ in 0..n.max(0) {
                match parse_at(&buf[at..], depth + 1)? {
                    Some((used, _)) => at += used,
                    None => return Ok(None),
                }
            }
            Ok(Some((at, Reply::Value)))
        }
        _ => Err(Malformed),
    }
}

/// Calls `each` with every element of a whole array reply of bulk strings
/// (SMEMBERS), in order. `None` when the reply is anything else, nil
/// elements included.
pub fn array_bulks<'a>(reply: &'a [u8], mut each: impl FnMut(&'a [u8])) -> Option<()> {
    let line = |at: usize| -> Option<(i64, usize)> {
        let nl = at + memchr(b'\n', reply.get(at..)?)?;
        let n = int(reply.get(at + 1..nl.checked_sub(1)?)?).ok()?;
        Some((n, nl + 1))
    };
    if reply.first() != Some(&b'*') {
        return None;
    }
    let (n, mut at) = line(0)?;
    for _ in 0..n.max(0) {
        if reply.get(at) != Some(&b'$') {
            return None;
        }
        let (len, start) = line(at)?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        each(reply.get(start..end)?);
        at = end + 2;
    }
    (at == reply.len()).then_some(())
}

/// A whole bulk string reply: `Some(Some(bytes))`, `Some(None)` for nil
/// (HGET of an absent field), `None` for any other reply.
pub fn bulk_string(reply: &[u8]) -> Option<Option<&[u8]>> {
    let nl = memchr(b'\n', reply)?;
    if reply.first() != Some(&b'$') || nl < 2 || reply[nl - 1] != b'\r' {
        return None;
    }
    let n = int(&reply[1..nl - 1]).ok()?;
    if n < 0 {
        return (reply.len() == nl + 1).then_some(None);
    }
    let start = nl + 1;
    let end = start.checked_add(usize::try_from(n).ok()?)?;
    (reply.len() == end + 2 && &reply[end..] == b"\r\n").then(|| Some(&reply[start..end]))
}

/// An EXEC reply: `Some(true)` when the transaction ran and each of its
/// commands answered an integer, `Some(false)` when it did not run because a
/// WATCHed key changed (a nil array), `None` for anything else (an error, an
/// error inside the array, EXECABORT).
pub fn exec_ran(reply: &[u8]) -> Option<bool> {
    if reply == b"*-1\r\n" {
        return Some(false);
    }
    let nl = memchr(b'\n', reply)?;
    if reply.first() != Some(&b'*') || nl < 2 || reply[nl - 1] != b'\r' {
        return None;
    }
    let n = int(&reply[1..nl - 1]).ok()?;
    let mut at = nl + 1;
    for _ in 0..n.max(0) {
        let (used, r) = parse_reply(reply.get(at..)?).ok()??;
        if !matches!(r, Reply::Integer(_)) {
            return None;
        }
        at += used;
    }
    (n >= 1 && at == reply.len()).then_some(true)
}

/// Decimal digits only, as a u64 (a counter stored in a hash field).
pub fn unsigned(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &d| {
        d.is_ascii_digit()
            .then(|| v.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

fn int(s: &[u8]) -> Result<i64, Malformed> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(Malformed);
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(Malformed);
        }
        v = v * 10 + (d - b'0') as i64;
    }
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            bulk(&mut out, a);
        }
        out
    }

    #[test]
    fn commands_encode() {
        assert_eq!(
            command(&[b"HGET", b"s:1", b"user"]),
            b"*3\r\n$4\r\nHGET\r\n$3\r\ns:1\r\n$4\r\nuser\r\n"
        );
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let cases: &[(&[u8], Reply)] = &[
            (b"+OK\r\n", Reply::Value),
            (b"-ERR wrong\r\n", Reply::Error),
            (b":1\r\n", Reply::Integer(1)),
            (b":-2\r\n", Reply::Integer(-2)),
            (b"$-1\r\n", Reply::Value),
            (b"$5\r\nhello\r\n", Reply::Value),
            (b"*-1\r\n", Reply::Value),
            (b"*2\r\n$4\r\nuser\r\n$3\r\nabc\r\n", Reply::Value),
        ];
        for (bytes, want) in cases {
            let (n, r) = parse_reply(bytes).unwrap().unwrap();
            assert_eq!((n, &r), (bytes.len(), want));
            for cut in 0..bytes.len() {
                assert_eq!(parse_reply(&bytes[..cut]), Ok(None), "{bytes:?} cut {cut}");
            }
        }
        let two = b":1\r\n+OK\r\n";
        assert_eq!(parse_reply(two).unwrap().unwrap().0, 4);
    }

    #[test]
    fn array_elements_are_listed() {
        let mut got = Vec::new();
        let r = b"*2\r\n$4\r\nls:7\r\n$5\r\nls:10\r\n";
        assert_eq!(array_bulks(r, |b| got.push(b.to_vec())), Some(()));
        assert_eq!(got, [b"ls:7".to_vec(), b"ls:10".to_vec()]);
        assert_eq!(array_bulks(b"*0\r\n", |_| panic!("no elements")), Some(()));
        assert_eq!(array_bulks(b"*1\r\n$-1\r\n", |_| {}), None);
        assert_eq!(array_bulks(b":1\r\n", |_| {}), None);
        assert_eq!(array_bulks(b"*1\r\n:5\r\n", |_| {}), None);
    }

    #[test]
    fn bulk_strings_and_exec_replies_are_read() {
        assert_eq!(bulk_string(b"$2\r\n17\r\n"), Some(Some(&b"17"[..])));
        assert_eq!(bulk_string(b"$0\r\n\r\n"), Some(Some(&b""[..])));
        assert_eq!(bulk_string(b"$-1\r\n"), Some(None));
        assert_eq!(bulk_string(b"+OK\r\n"), None);
        assert_eq!(bulk_string(b"$3\r\n17\r\n"), None);
        assert_eq!(exec_ran(b"*1\r\n:0\r\n"), Some(true));
        assert_eq!(exec_ran(b"*2\r\n:1\r\n:-3\r\n"), Some(true));
        assert_eq!(exec_ran(b"*-1\r\n"), Some(false));
        assert_eq!(exec_ran(b"*0\r\n"), None);
        assert_eq!(exec_ran(b"*1\r\n-WRONGTYPE x\r\n"), None);
        assert_eq!(exec_ran(b"-EXECABORT x\r\n"), None);
        assert_eq!(unsigned(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(unsigned(b"18446744073709551616"), None);
        assert_eq!(unsigned(b""), None);
        assert_eq!(unsigned(b"1.5"), None);
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(parse_reply(b"hello\r\n"), Err(Malformed));
        assert_eq!(parse_reply(b":x\r\n"), Err(Malformed));
        assert_eq!(parse_reply(b"$3\r\nabcde\r\n"), Err(Malformed));
    }
}
