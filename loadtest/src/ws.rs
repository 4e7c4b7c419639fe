//! The client side of WebSocket (RFC 6455) as a load generator needs it, and
//! the scan of NemesisDB responses.
//!
//! Owns: the upgrade handshake, masked frame encoding, frame boundaries in
//! received bytes, and reading `st` / `tkn` out of a response body. Knows
//! nothing about workloads or connections' state.
//!
//! Framing is written here rather than driven through tungstenite's
//! `WebSocket`: that type owns the socket, copies every message into an owned
//! `Message`, and masks frame by frame, while the generator wants to append
//! many requests to one write buffer (one `write` per batch), mask them in
//! 8-byte words while copying, and look at responses in place in its read
//! buffer. The handshake is a one-time, blocking step, so it uses
//! tungstenite's helpers for the key and the accept check.

use std::io::{self, Read, Write};

use memchr::memmem;

use crate::config::Credentials;
use crate::rng::Rng;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Upgrades a connected, blocking stream (plain or TLS; the caller sets its
/// timeouts). `auth` goes in an `Authorization: Basic` header. Returns bytes
/// the server sent after its 101 response (normally none), which belong to
/// the frame stream.
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
    auth: Option<&Credentials>,
) -> io::Result<Vec<u8>> {
    let key = tungstenite::handshake::client::generate_key();
    stream.write_all(upgrade_request(host, path, &key, auth).as_bytes())?;
    stream.flush()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed during the WebSocket handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(bad("handshake response headers over 16 KiB"));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("handshake response is not HTTP")),
    }
    match (response.code, auth) {
        (Some(101), _) => {}
        (Some(401), Some(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the server refused --user/--password (HTTP 401)",
            ));
        }
        (Some(401), None) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the server wants credentials (HTTP 401): pass --user and --password",
            ));
        }
        (code, _) => {
            return Err(bad(&format!(
                "handshake answered {} instead of 101",
                code.unwrap_or(0)
            )));
        }
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value);
    if accept != Some(expected.as_bytes()) {
        return Err(bad("handshake Sec-WebSocket-Accept is missing or wrong"));
    }
    Ok(buf[end..].to_vec())
}

/// The HTTP/1.1 upgrade request.
fn upgrade_request(host: &str, path: &str, key: &str, auth: Option<&Credentials>) -> String {
    let authorization = match auth {
        Some(a) => format!("Authorization: {}\r\n", a.basic()),
        None => String::new(),
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{authorization}\r\n"
    )
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Appends one masked client frame (FIN set) whose payload is the
/// concatenation of `parts`: the pre-encoded pieces of a request plus its
/// per-request bits (a token), so no payload is ever assembled twice.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]], rng: &mut Rng) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = (rng.next_u64() as u32).to_ne_bytes();
    out.extend_from_slice(&key);
    let mut offset = 0;
    for p in parts {
        mask_into(out, p, key, offset);
        offset += p.len();
    }
}

/// Appends `src` XORed with the mask `key` as if `src` started `offset` bytes
/// into the payload. Works in 8-byte words: the mask repeats every 4 bytes, so
/// one rotated 64-bit mask covers every whole word.
fn mask_into(out: &mut Vec<u8>, src: &[u8], key: [u8; 4], offset: usize) {
    let r = offset % 4;
    let rotated = [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    out.reserve(src.len());
    let mut chunks = src.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        out.extend_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.remainder().iter().enumerate() {
        out.push(b ^ rotated[i % 4]);
    }
}

/// One complete server frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub fin: bool,
    /// Bytes before the payload.
    pub header_len: usize,
    pub payload_len: usize,
}

impl Frame {
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Why received bytes are not a frame stream a client accepts.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Servers must not mask (RFC 6455 5.1).
    Masked,
    /// A 64-bit length beyond what this client buffers.
    TooLong,
}

/// The frame at the start of `buf`, `Ok(None)` while it is incomplete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (header_len, payload_len) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n > 1 << 30 {
                return Err(FrameError::TooLong);
            }
            (10, n as usize)
        }
        n => (2, n as usize),
    };
    if buf.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode,
        fin,
        header_len,
        payload_len,
    }))
}

/// Finds the members `st`, `tkn`, `ttlMs`, `cnt`, `value` and `version` in
/// a response body without building a JSON tree. Our requests never put a
/// quote inside a value, so the first `"st"` key in a response is the status.
pub struct Scanner {
    st: memmem::Finder<'static>,
    tkn: memmem::Finder<'static>,
    ttl: memmem::Finder<'static>,
    cnt: memmem::Finder<'static>,
    user: memmem::Finder<'static>,
    cart: memmem::Finder<'static>,
    value: memmem::Finder<'static>,
    version: memmem::Finder<'static>,
    counter: memmem::Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            st: memmem::Finder::new(b"\"st\""),
            tkn: memmem::Finder::new(b"\"tkn\""),
            ttl: memmem::Finder::new(b"\"ttlMs\""),
            cnt: memmem::Finder::new(b"\"cnt\""),
            user: memmem::Finder::new(b"\"user\""),
            cart: memmem::Finder::new(b"\"cart\""),
            value: memmem::Finder::new(b"\"value\""),
            version: memmem::Finder::new(b"\"version\""),
            counter: memmem::Finder::new(b"\"counter\""),
        }
    }
}

impl Scanner {
    /// The `st` value, `None` when there is none.
    pub fn status(&self, body: &[u8]) -> Option<u64> {
        let at = self.st.find(body)? + 4;
        number_after_colon(&body[at..])
    }

    /// The `tkn` value (a number, or a decimal string).
    pub fn token(&self, body: &[u8]) -> Option<u64> {
        let at = self.tkn.find(body)? + 5;
        number_after_colon(&body[at..])
    }

    /// The `ttlMs` value (SH_TOUCH); `None` for -1 (no expiry) or none.
    pub fn ttl_ms(&self, body: &[u8]) -> Option<u64> {
        let at = self.ttl.find(body)? + 7;
        number_after_colon(&body[at..])
    }

    /// Whether both keys `user` and `cart` have a string value (an SH_GET of
    /// a filled session).
    pub fn has_both_keys(&self, body: &[u8]) -> bool {
        let string_after = |f: &memmem::Finder, len: usize| {
            f.find(body).is_some_and(|at| {
                let rest = &body[at + len..];
                let mut i = 0;
                while i < rest.len() && rest[i].is_ascii_whitespace() {
                    i += 1;
                }
                rest.get(i) == Some(&b':')
                    && rest[i + 1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'"')
            })
        };
        string_after(&self.user, 6) && string_after(&self.cart, 6)
    }

    /// The `cnt` value (SH_OWNER_END).
    pub fn count(&self, body: &[u8]) -> Option<u64> {
        let at = self.cnt.find(body)? + 5;
        number_after_colon(&body[at..])
    }

    /// The `value` value (SH_INCR); `None` when negative or none.
    pub fn value(&self, body: &[u8]) -> Option<u64> {
        let at = self.value.find(body)? + 7;
        number_after_colon(&body[at..])
    }

    /// The `version` value (`withVersion`, `ifVersion`).
    pub fn version(&self, body: &[u8]) -> Option<u64> {
        let at = self.version.find(body)? + 9;
        number_after_colon(&body[at..])
    }

    /// The value of key `counter` in an SH_GET reply (incr and cas count
    /// in it): 0 when the reply has no such key (an absent key counts as 0),
    /// `None` when its value is not an unsigned integer.
    pub fn counter(&self, body: &[u8]) -> Option<u64> {
        match self.counter.find(body) {
            None => Some(0),
            Some(at) => {
                let rest = &body[at + 9..];
                // A number, not a string of digits.
                let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
                let after = rest[colon + 1..].iter().find(|b| !b.is_ascii_whitespace());
                if after == Some(&b'"') {
                    return None;
                }
                number_after_colon(rest)
            }
        }
    }
}

/// The name of a reply's one member (`SH_GET_RSP` in `{"SH_GET_RSP":{...}}`).
pub fn reply_name(body: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while i < body.len() && (body[i].is_ascii_whitespace() || body[i] == b'{') {
        i += 1;
    }
    let rest = body.get(i..)?.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// Parses `\s*:\s*"?DIGITS` into a u64.
fn number_after_colon(s: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    if s.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    if s.get(i) == Some(&b'"') {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((s[i] - b'0') as u64)?;
        i += 1;
    }
    (i > start).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let opcode = frame[0] & 0x0F;
        assert!(frame[1] & 0x80 != 0, "client frames are masked");
        let (len, at) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let key = &frame[at..at + 4];
        let payload: Vec<u8> = frame[at + 4..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(payload.len(), len);
        (opcode, payload)
    }

    #[test]
    fn upgrade_request_carries_basic_auth() {
        let plain = upgrade_request("h:1", "/p", "k==", None);
        assert!(
            plain.starts_with("GET /p HTTP/1.1\r\nHost: h:1\r\n"),
            "{plain}"
        );
        assert!(
            plain.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"),
            "{plain}"
        );
        assert!(!plain.contains("Authorization"));
        let auth = Credentials {
            user: "Aladdin".into(),
            password: "open sesame".into(),
        };
        // RFC 7617's example.
        assert_eq!(auth.basic(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        let with = upgrade_request("h:1", "/", "k==", Some(&auth));
        assert!(
            with.ends_with(
                "Sec-WebSocket-Version: 13\r\nAuthorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
            ),
            "{with}"
        );
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(with.as_bytes()).unwrap().is_complete());
    }

    #[test]
    fn frames_mask_and_unmask_for_every_split() {
        let mut rng = Rng::new(1, 1);
        let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 300] {
            for split in 0..len.min(13) {
                let mut out = Vec::new();
                let (a, b) = text[..len].split_at(split);
                write_frame(&mut out, OP_TEXT, &[a, b], &mut rng);
                let (op, payload) = unmask(&out);
                assert_eq!(op, OP_TEXT);
                assert_eq!(payload, &text[..len]);
            }
        }
        let big = vec![b'x'; 70_000];
        let mut out = Vec::new();
        write_frame(&mut out, OP_TEXT, &[&big], &mut rng);
        assert_eq!(unmask(&out).1, big);
    }

    #[test]
    fn server_frames_parse_only_when_complete() {
        let mut f = vec![0x81, 5];
        f.extend_from_slice(b"hello");
        assert_eq!(parse_frame(&f[..3]), Ok(None));
        let fr = parse_frame(&f).unwrap().unwrap();
        assert_eq!(
            (fr.opcode, fr.fin, fr.header_len, fr.payload_len),
            (1, true, 2, 5)
        );
        let mut g = vec![0x81, 126, 0x01, 0x00];
        g.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(parse_frame(&g[..200]), Ok(None));
        assert_eq!(parse_frame(&g).unwrap().unwrap().total_len(), 260);
        assert_eq!(
            parse_frame(&[0x81, 0x85, 0, 0, 0, 0]),
            Err(FrameError::Masked)
        );
    }

    #[test]
    fn scanner_reads_status_and_token() {
        let s = Scanner::default();
        assert_eq!(
            s.status(br#"{"SH_GET_RSP":{"st":1,"tkn":5,"keys":{}}}"#),
            Some(1)
        );
        assert_eq!(s.status(br#"{"ERR":{"st" : 13,"m":"x"}}"#), Some(13));
        assert_eq!(s.status(br#"{"SH_GET_RSP":{"tkn":5}}"#), None);
        assert_eq!(
            s.token(br#"{"SH_NEW_RSP":{"st":1,"tkn":18446744073709551615}}"#),
            Some(u64::MAX)
        );
        assert_eq!(s.token(br#"{"SH_NEW_RSP":{"tkn":"42","st":1}}"#), Some(42));
        assert_eq!(
            s.token(br#"{"SH_NEW_RSP":{"tkn":18446744073709551616}}"#),
            None
        );
        assert_eq!(s.token(br#"{"SH_NEW_RSP":{"tkn":null}}"#), None);
        let touch = br#"{"SH_TOUCH_RSP":{"st":1,"tkn":5,"ttlMs":3599998}}"#;
        assert_eq!(s.ttl_ms(touch), Some(3_599_998));
        assert_eq!(s.ttl_ms(br#"{"SH_TOUCH_RSP":{"st":1,"ttlMs":-1}}"#), None);
        assert_eq!(
            s.count(br#"{"SH_OWNER_END_RSP":{"st":1,"owner":"u3","cnt":5}}"#),
            Some(5)
        );
        assert!(s.has_both_keys(br#"{"SH_GET_RSP":{"st":1,"keys":{"user":"a","cart" : "b"}}}"#));
        assert!(!s.has_both_keys(br#"{"SH_GET_RSP":{"st":1,"keys":{"user":"a"}}}"#));
        assert!(!s.has_both_keys(br#"{"SH_GET_RSP":{"st":1,"keys":{"user":null,"cart":"b"}}}"#));
        assert!(!s.has_both_keys(br#"{"SH_GET_RSP":{"st":1,"keys":{}}}"#));
        let incr = br#"{"SH_INCR_RSP":{"st":1,"tkn":5,"key":"counter","value":12}}"#;
        assert_eq!(s.value(incr), Some(12));
        assert_eq!(s.value(br#"{"SH_INCR_RSP":{"st":1,"value":-2}}"#), None);
        let get = br#"{"SH_GET_RSP":{"st":1,"tkn":5,"keys":{"counter":7},"version":9}}"#;
        assert_eq!((s.version(get), s.counter(get)), (Some(9), Some(7)));
        let get = br#"{"SH_GET_RSP":{"st":1,"tkn":5,"keys":{},"version":1}}"#;
        assert_eq!((s.version(get), s.counter(get)), (Some(1), Some(0)));
        assert_eq!(s.counter(br#"{"keys":{"counter" : "7"}}"#), None);
        assert_eq!(s.counter(br#"{"keys":{"counter":[7]}}"#), None);
        assert_eq!(s.version(br#"{"SH_GET_RSP":{"st":1}}"#), None);
        assert_eq!(
            reply_name(br#"{"SH_GET_RSP":{"st":1}}"#),
            Some(&b"SH_GET_RSP"[..])
        );
        assert_eq!(reply_name(br#" { "ERR":{}}"#), Some(&b"ERR"[..]));
        assert_eq!(reply_name(b"[1]"), None);
    }
}
