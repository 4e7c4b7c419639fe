//! Response encoding straight into a byte buffer: no JSON tree is built.
//!
//! Every response is `{"<CMD>_RSP":{"st":N,...}}` (or `{"ERR":{...}}`); the
//! [`Response`] builder writes the envelope and fields in order, and stored
//! values (already compact JSON) are copied in as they are.

use std::io::Write as _;

use super::request::{RejectTo, Rejection};
use super::{CommandName, Status};
use crate::domain::Token;

/// Builds one response body field by field into `out`.
pub struct Response<'a> {
    out: &'a mut Vec<u8>,
    /// True right after an object opened: the next field takes no comma.
    first: bool,
}

impl<'a> Response<'a> {
    /// Starts `{"<command>_RSP":{"st":<status>` for one of our commands
    /// (static ASCII identifiers: copied, nothing to escape).
    pub fn new(out: &'a mut Vec<u8>, command: CommandName, status: Status) -> Self {
        if status == Status::Ok {
            out.extend_from_slice(command.ok_prefix().as_bytes());
            return Response { out, first: false };
        }
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(command.response().as_bytes());
        out.extend_from_slice(b"\":{\"st\":");
        push_u64(out, u64::from(status.code()));
        Response { out, first: false }
    }

    /// [`Response::new`] for a command name the client wrote (one we do
    /// not know): escaped.
    pub fn for_unknown(out: &'a mut Vec<u8>, command: &str, status: Status) -> Self {
        out.extend_from_slice(b"{");
        write_json_str(out, &[command, "_RSP"]);
        out.extend_from_slice(b":{\"st\":");
        push_u64(out, u64::from(status.code()));
        Response { out, first: false }
    }

    /// Starts `{"ERR":{"st":<status>`.
    pub fn error_frame(out: &'a mut Vec<u8>, status: Status) -> Self {
        out.extend_from_slice(b"{\"ERR\":{\"st\":");
        push_u64(out, u64::from(status.code()));
        Response { out, first: false }
    }

    fn field(&mut self, name: &str) -> &mut Vec<u8> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        // Field names are our own ASCII identifiers.
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn u64(mut self, name: &str, value: u64) -> Self {
        push_u64(self.field(name), value);
        self
    }

    /// Adds the field only when there is a value.
    pub fn opt_u64(self, name: &str, value: Option<u64>) -> Self {
        match value {
            Some(value) => self.u64(name, value),
            None => self,
        }
    }

    pub fn i64(mut self, name: &str, value: i64) -> Self {
        let mut buf = itoa::Buffer::new();
        self.field(name)
            .extend_from_slice(buf.format(value).as_bytes());
        self
    }

    pub fn bool(mut self, name: &str, value: bool) -> Self {
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.field(name).extend_from_slice(text);
        self
    }

    pub fn str(mut self, name: &str, value: &str) -> Self {
        write_json_str(self.field(name), &[value]);
        self
    }

    pub fn opt_str(self, name: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(name, v),
            None => self,
        }
    }

    /// `"name":[s1,s2,...]` with each string escaped.
    pub fn str_array<'s>(mut self, name: &str, items: impl IntoIterator<Item = &'s str>) -> Self {
        let out = self.field(name);
        out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, &[item]);
        }
        out.push(b']');
        self
    }

    /// `"name":[n1,n2,...]`.
    pub fn u64_array(mut self, name: &str, items: impl IntoIterator<Item = u64>) -> Self {
        let out = self.field(name);
        out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_u64(out, item);
        }
        out.push(b']');
        self
    }

    /// `"name":{"k1":<raw json>,...}`; values are copied verbatim.
    pub fn raw_object<'s>(
        mut self,
        name: &str,
        entries: impl IntoIterator<Item = (&'s str, &'s [u8])>,
    ) -> Self {
        let out = self.field(name);
        out.push(b'{');
        for (i, (key, value)) in entries.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, &[key]);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        self
    }

    /// Opens a nested object field; close it with [`Response::end_object`].
    pub fn begin_object(mut self, name: &str) -> Self {
        self.field(name).push(b'{');
        self.first = true;
        self
    }

    pub fn end_object(self) -> Self {
        self.out.push(b'}');
        Response {
            out: self.out,
            first: false,
        }
    }

    /// Closes the body and the envelope.
    pub fn finish(self) {
        self.out.extend_from_slice(b"}}");
    }
}

/// Writes the concatenation of `parts` as one JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for part in parts {
        let bytes = part.as_bytes();
        // Usually nothing needs escaping: one copy. (A fold, not an early
        // exit, so the compiler can check many bytes at a time.)
        let needs_escape = bytes.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if !needs_escape {
            out.extend_from_slice(bytes);
            continue;
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => b"",
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            if escape.is_empty() {
                let _ = write!(out, "\\u{:04x}", b);
            } else {
                out.extend_from_slice(escape);
            }
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

/// Where [`Response::new`] puts the status of `command`'s answers:
/// after `{"<command>_RSP":`.
pub const fn status_at(command: CommandName) -> usize {
    command.response().len() + 4
}

/// The status a response built here carries: the number after the first
/// `{"st":`, which every constructor writes right after the response name
/// (a name the client wrote is escaped, so it cannot hold `{"`). Lets the
/// connection count answers by status without the router reporting each.
/// `expected` is where to look first ([`status_at`] of the command the
/// answer is for, if known).
pub fn status_in(response: &[u8], expected: Option<usize>) -> Option<u16> {
    const MARK: &[u8] = b"{\"st\":";
    let at = match expected {
        Some(at) if response.get(at..at + MARK.len()) == Some(MARK) => at,
        _ => response.windows(MARK.len()).position(|w| w == MARK)?,
    } + MARK.len();
    // At most five digits (statuses are below 65536): a fold, no UTF-8
    // check or general integer parser, on every answer.
    let digits = response.get(at..)?.iter().take(5);
    let (code, count) = digits
        .take_while(|b| b.is_ascii_digit())
        .fold((0u32, 0), |(code, n), &b| {
            (code * 10 + u32::from(b - b'0'), n + 1)
        });
    if count == 0 {
        return None;
    }
    u16::try_from(code).ok()
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(value).as_bytes());
}

/// Encodes a rejected request as the protocol asks.
pub fn encode_rejection(out: &mut Vec<u8>, rejection: &Rejection) {
    let response = match &rejection.to {
        RejectTo::Frame => Response::error_frame(out, rejection.status),
        RejectTo::Command(name) => Response::for_unknown(out, name, rejection.status),
    };
    let response = match rejection.tkn {
        Some(tkn) => response.u64("tkn", tkn),
        None => response,
    };
    match rejection.message {
        Some(m) => response.str("m", m),
        None => response,
    }
    .finish();
}

/// A response carrying only a status, an optional token and a message.
pub fn encode_status(
    out: &mut Vec<u8>,
    command: CommandName,
    status: Status,
    tkn: Option<Token>,
    message: Option<&str>,
) {
    let mut response = Response::new(out, command, status);
    if let Some(tkn) = tkn {
        response = response.u64("tkn", tkn);
    }
    response.opt_str("m", message).finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_ok_prefix_is_the_envelope_any_status_gets() {
        for &command in CommandName::ALL {
            let mut out = Vec::new();
            Response::for_unknown(&mut out, command.wire(), Status::Ok).finish();
            let mut ok = Vec::new();
            Response::new(&mut ok, command, Status::Ok).finish();
            assert_eq!(text(ok), text(out), "{command:?}");
        }
    }

    #[test]
    fn the_status_is_read_back_from_every_kind_of_response() {
        for &status in Status::ALL {
            for &command in CommandName::ALL {
                let mut out = Vec::new();
                Response::new(&mut out, command, status)
                    .u64("tkn", 7)
                    .finish();
                assert_eq!(
                    status_in(&out, Some(status_at(command))),
                    Some(status.code())
                );
                assert_eq!(status_in(&out, None), Some(status.code()));
            }
            let mut out = Vec::new();
            Response::error_frame(&mut out, status).finish();
            let get = Some(status_at(CommandName::Get));
            assert_eq!(status_in(&out, get), Some(status.code()));
            // A name the client wrote, made to look like a status.
            let mut out = Vec::new();
            Response::for_unknown(&mut out, "X\":{\"st\":9", status).finish();
            assert_eq!(status_in(&out, None), Some(status.code()));
        }
        assert_eq!(
            status_in(b"{\"SH_GET_RSP\":{}}", Some(status_at(CommandName::Get))),
            None
        );
    }

    #[test]
    fn builds_nested_bodies() {
        let mut out = Vec::new();
        Response::new(&mut out, CommandName::Info, Status::Ok)
            .u64("tkn", 5)
            .bool("expires", true)
            .begin_object("expiry")
            .u64("duration", 3)
            .bool("deleteSession", false)
            .end_object()
            .str_array("keys", ["a", "b\"c"])
            .raw_object("v", [("k", &b"[1,2]"[..])])
            .finish();
        assert_eq!(
            text(out),
            r#"{"SH_INFO_RSP":{"st":1,"tkn":5,"expires":true,"expiry":{"duration":3,"deleteSession":false},"keys":["a","b\"c"],"v":{"k":[1,2]}}}"#
        );
    }

    #[test]
    fn escapes_control_characters_and_quotes() {
        let mut out = Vec::new();
        write_json_str(&mut out, &["a\"\\\n\u{1}é"]);
        assert_eq!(text(out), r#""a\"\\\n\u0001é""#);
    }

    #[test]
    fn rejections() {
        let mut out = Vec::new();
        encode_rejection(
            &mut out,
            &Rejection {
                to: RejectTo::Command("X\"Y".into()),
                status: Status::CommandNotExist,
                message: None,
                tkn: None,
            },
        );
        assert_eq!(text(out), r#"{"X\"Y_RSP":{"st":10}}"#);
        let mut out = Vec::new();
        encode_rejection(&mut out, &super::super::request::reject_binary());
        assert!(text(out).starts_with(r#"{"ERR":{"st":2,"m":""#));
    }
}
