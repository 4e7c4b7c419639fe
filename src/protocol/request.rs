//! Request decoding: one WebSocket text payload -> one owned [`Command`], or a
//! [`Rejection`] that already knows how it must be answered.
//!
//! Decoding validates every parameter, so a command that reaches a shard is
//! well-formed and only the session's existence is left to check there.
//! Values are kept as compact JSON bytes; they are never held as a parsed tree.

use simd_json::prelude::*;
use simd_json::value::tape::{Object, Value};
use simd_json::{ErrorType, Tape};

use super::CommandName;
use super::Status;
use super::canonical;
use super::command::Role;
use super::raw;
use crate::domain::{ExpirySettings, KeyValue, NewSession, Token};
use crate::events::{EventFilter, EventKind};

/// Longest session name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Longest dataset name accepted by `SH_SAVE` / `SH_LOAD`.
pub const MAX_DATASET_NAME_LEN: usize = 128;

/// A decoded, validated request. Owned, so it can be sent to another shard.
#[derive(Debug, PartialEq)]
pub enum Command {
    New(NewSession),
    Open {
        name: Box<str>,
        /// `withVersion`.
        report_version: bool,
    },
    End {
        tkn: Token,
    },
    EndAll,
    Exists {
        tkns: Vec<Token>,
    },
    Info {
        tkn: Token,
        v: Versioning,
    },
    InfoAll,
    Save {
        name: Box<str>,
        tkns: Option<Vec<Token>>,
    },
    Load {
        name: Box<str>,
    },
    Set {
        tkn: Token,
        keys: Vec<KeyValue>,
        v: Versioning,
    },
    Add {
        tkn: Token,
        keys: Vec<KeyValue>,
        v: Versioning,
    },
    Get {
        tkn: Token,
        keys: Vec<Box<str>>,
        v: Versioning,
    },
    Rmv {
        tkn: Token,
        keys: Vec<Box<str>>,
        v: Versioning,
    },
    Contains {
        tkn: Token,
        keys: Vec<Box<str>>,
        v: Versioning,
    },
    Count {
        tkn: Token,
        v: Versioning,
    },
    Keys {
        tkn: Token,
        v: Versioning,
    },
    Clear {
        tkn: Token,
        v: Versioning,
    },
    ClearSet {
        tkn: Token,
        keys: Vec<KeyValue>,
        v: Versioning,
    },
    ServerInfo,
    Touch {
        tkn: Token,
        /// Move the idle deadline to now + duration first.
        slide: bool,
        v: Versioning,
    },
    OwnerSessions {
        owner: Box<str>,
    },
    OwnerEnd {
        owner: Box<str>,
        /// A session to keep ("everywhere but here").
        except: Option<Token>,
    },
    Incr {
        tkn: Token,
        key: Box<str>,
        by: i64,
        v: Versioning,
    },
    Subscribe {
        filter: EventFilter,
        /// The cursor to resume after, as given (checked by the router,
        /// which knows the server instance and its shards).
        after: Option<Box<str>>,
    },
    Unsubscribe,
    /// `SV_AUTH`: answered by the shard the connection lives on, which
    /// knows the users; it never reaches the router.
    Auth {
        user: Box<str>,
        password: Secret,
    },
}

/// A password as it arrived: kept out of `Debug` output, so no log line or
/// panic message can show it.
#[derive(PartialEq, Eq)]
pub struct Secret(pub Box<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a request asks of its session's version: `withVersion`, `ifVersion`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Versioning {
    /// Answer with the session's version after the command.
    pub report: bool,
    /// Write only if the session's version is this (writes only).
    pub expect: Option<u64>,
}

impl Versioning {
    /// Whether the answer carries `version`: asked for, or a conditional
    /// write (whose success says the new version).
    pub fn answered(self) -> bool {
        self.report || self.expect.is_some()
    }
}

impl Command {
    /// The session this command is about, which decides the shard that runs it.
    pub fn token(&self) -> Option<Token> {
        match self {
            Command::End { tkn }
            | Command::Info { tkn, .. }
            | Command::Set { tkn, .. }
            | Command::Add { tkn, .. }
            | Command::Get { tkn, .. }
            | Command::Rmv { tkn, .. }
            | Command::Contains { tkn, .. }
            | Command::Count { tkn, .. }
            | Command::Keys { tkn, .. }
            | Command::Clear { tkn, .. }
            | Command::ClearSet { tkn, .. }
            | Command::Touch { tkn, .. }
            | Command::Incr { tkn, .. } => Some(*tkn),
            _ => None,
        }
    }

    /// The owner this command is about, which decides the shard that runs it.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Command::New(new) => new.owner.as_deref(),
            Command::OwnerSessions { owner } | Command::OwnerEnd { owner, .. } => Some(owner),
            _ => None,
        }
    }

    /// Which command this is.
    pub fn kind(&self) -> CommandName {
        match self {
            Command::New(_) => CommandName::New,
            Command::Open { .. } => CommandName::Open,
            Command::End { .. } => CommandName::End,
            Command::EndAll => CommandName::EndAll,
            Command::Exists { .. } => CommandName::Exists,
            Command::Info { .. } => CommandName::Info,
            Command::InfoAll => CommandName::InfoAll,
            Command::Save { .. } => CommandName::Save,
            Command::Load { .. } => CommandName::Load,
            Command::Set { .. } => CommandName::Set,
            Command::Add { .. } => CommandName::Add,
            Command::Get { .. } => CommandName::Get,
            Command::Rmv { .. } => CommandName::Rmv,
            Command::Contains { .. } => CommandName::Contains,
            Command::Count { .. } => CommandName::Count,
            Command::Keys { .. } => CommandName::Keys,
            Command::Clear { .. } => CommandName::Clear,
            Command::ClearSet { .. } => CommandName::ClearSet,
            Command::ServerInfo => CommandName::ServerInfo,
            Command::Touch { .. } => CommandName::Touch,
            Command::OwnerSessions { .. } => CommandName::OwnerSessions,
            Command::OwnerEnd { .. } => CommandName::OwnerEnd,
            Command::Incr { .. } => CommandName::Incr,
            Command::Subscribe { .. } => CommandName::Subscribe,
            Command::Unsubscribe => CommandName::Unsubscribe,
            Command::Auth { .. } => CommandName::Auth,
        }
    }

    /// The least role that may run it: the command table's, except that
    /// `SH_TOUCH` with `slide:false` only reads.
    pub fn least_role(&self) -> Role {
        match self {
            Command::Touch { slide: false, .. } => Role::Read,
            _ => self.kind().least_role(),
        }
    }
}

/// Who a rejection is addressed to: the generic `ERR` response, or the
/// command's own `<CMD>_RSP`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectTo {
    /// `{"ERR":{...}}`: the frame was not a request at all.
    Frame,
    /// `{"<CMD>_RSP":{...}}`, the command name as it arrived (may be unknown).
    Command(String),
}

/// A request that is answered without running: its status and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub to: RejectTo,
    pub status: Status,
    /// Short text naming the problem; omitted for the two statuses the
    /// protocol table shows bare (10, 12).
    pub message: Option<&'static str>,
    /// Echoed when the request named a valid token, as every keyed response does.
    pub tkn: Option<Token>,
}

impl Rejection {
    fn frame(status: Status, message: &'static str) -> Self {
        Rejection {
            to: RejectTo::Frame,
            status,
            message: Some(message),
            tkn: None,
        }
    }
}

/// A binary frame: the protocol only speaks text.
pub fn reject_binary() -> Rejection {
    Rejection::frame(Status::PayLoadInvalid, "binary frames are not accepted")
}

/// Text that was not UTF-8 (detected by the WebSocket layer).
pub fn reject_not_utf8() -> Rejection {
    Rejection::frame(Status::JsonInvalid, "message is not valid UTF-8")
}

/// Decodes requests, reusing its buffers: the copy simd-json parses in
/// place, simd-json's own buffers and the tape of the last request. No
/// value tree is built: parameters are read off the tape.
#[derive(Default)]
pub struct RequestParser {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    /// Kept empty between requests (a tape holds no borrow then).
    tape: Option<Tape<'static>>,
}

impl RequestParser {
    /// Decodes one request; stored values are taken from `text` as written.
    pub fn parse(&mut self, text: &[u8]) -> Result<Command, Rejection> {
        match canonical::recognize(text) {
            Some(command) => Ok(command),
            None => self.parse_general(text),
        }
    }

    /// [`RequestParser::parse`] without the fast path for canonical
    /// requests: the reference the fast path is tested against.
    pub fn parse_general(&mut self, text: &[u8]) -> Result<Command, Rejection> {
        let mut tape = self.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let result = decode(text, &mut self.scratch, &mut self.buffers, &mut tape);
        self.tape = Some(tape.reset());
        result
    }
}

/// Decodes one request with throwaway buffers (tests, one-off use).
pub fn parse_request(text: &[u8]) -> Result<Command, Rejection> {
    RequestParser::default().parse(text)
}

fn decode<'s>(
    text: &[u8],
    scratch: &'s mut Vec<u8>,
    buffers: &mut simd_json::Buffers,
    tape: &mut Tape<'s>,
) -> Result<Command, Rejection> {
    scratch.clear();
    scratch.extend_from_slice(text);
    let invalid =
        |e: &simd_json::Error| Rejection::frame(Status::JsonInvalid, json_error_message(e));
    match simd_json::fill_tape(scratch, buffers, tape) {
        Ok(()) => command_of(tape.as_value(), text),
        Err(e)
            if matches!(
                e.error(),
                ErrorType::InvalidNumber | ErrorType::InvalidExponent
            ) =>
        {
            // Only for the rare request holding a number beyond 64 bits.
            let mut neutralized = raw::neutralize_big_numbers(text).ok_or_else(|| invalid(&e))?;
            let tape = simd_json::to_tape_with_buffers(&mut neutralized, buffers)
                .map_err(|e| invalid(&e))?;
            command_of(tape.as_value(), text)
        }
        Err(e) => Err(invalid(&e)),
    }
}

fn command_of(root: Value<'_, '_>, text: &[u8]) -> Result<Command, Rejection> {
    let Some(object) = root.as_object() else {
        return Err(Rejection::frame(
            Status::CommandSyntax,
            "request must be an object {\"CMD\":{...}}",
        ));
    };
    let mut members = object.iter();
    let (name, params) = match (members.next(), members.next()) {
        (None, _) => {
            return Err(Rejection::frame(
                Status::CommandSyntax,
                "request must be an object {\"CMD\":{...}}",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(Rejection::frame(
                Status::CommandMultiple,
                "a request holds exactly one command",
            ));
        }
        (Some(member), None) => member,
    };
    let Some(params) = params.as_object() else {
        return Err(Rejection {
            to: RejectTo::Command(name.to_string()),
            status: Status::CommandType,
            message: None,
            tkn: None,
        });
    };
    let Some(kind) = CommandName::from_wire(name) else {
        return Err(Rejection {
            to: RejectTo::Command(name.to_string()),
            status: Status::CommandNotExist,
            message: None,
            tkn: None,
        });
    };
    let Some(params) = Members::read(params) else {
        return Err(Rejection {
            to: RejectTo::Command(name.to_string()),
            status: Status::CommandSyntax,
            message: Some("a parameter is given more than once"),
            tkn: None,
        });
    };
    let p = Params { name, params, text };
    if !takes_session(kind) && p.params.maybe_versioned() && p.params.get("ifVersion").is_some() {
        // Ignoring it would run the command unguarded (SH_END_ALL would end
        // everything). Commands about one session check it with the rest.
        return Err(p.reject(Status::ValueTypeInvalid, IF_VERSION_ONLY, None));
    }
    match kind {
        CommandName::New => p.new_session(),
        CommandName::Open => Ok(Command::Open {
            name: p.session_name("name")?,
            report_version: p.report_version(None)?,
        }),
        CommandName::End => {
            let tkn = p.token()?;
            // Checked, then not needed: no session is left to have a version.
            p.versioning(tkn, Reads)?;
            Ok(Command::End { tkn })
        }
        CommandName::EndAll => Ok(Command::EndAll),
        CommandName::Exists => Ok(Command::Exists {
            tkns: p.token_list("tkns")?,
        }),
        CommandName::Info => {
            let tkn = p.token()?;
            let v = p.versioning(tkn, Reads)?;
            Ok(Command::Info { tkn, v })
        }
        CommandName::InfoAll => Ok(Command::InfoAll),
        CommandName::Save => {
            let name = p.dataset_name()?;
            let tkns = match p.params.get("tkns") {
                None => None,
                Some(_) => Some(p.save_tokens()?),
            };
            Ok(Command::Save { name, tkns })
        }
        CommandName::Load => Ok(Command::Load {
            name: p.dataset_name()?,
        }),
        CommandName::Set => {
            let tkn = p.token()?;
            let keys = p.key_values(Some(tkn))?;
            let v = p.versioning(tkn, Writes)?;
            Ok(Command::Set { tkn, keys, v })
        }
        CommandName::Add => {
            let tkn = p.token()?;
            let keys = p.key_values(Some(tkn))?;
            let v = p.versioning(tkn, Writes)?;
            Ok(Command::Add { tkn, keys, v })
        }
        CommandName::ClearSet => {
            let tkn = p.token()?;
            let keys = p.key_values(Some(tkn))?;
            let v = p.versioning(tkn, Writes)?;
            Ok(Command::ClearSet { tkn, keys, v })
        }
        CommandName::Get => {
            let tkn = p.token()?;
            let keys = p.key_names(tkn)?;
            let v = p.versioning(tkn, Reads)?;
            Ok(Command::Get { tkn, keys, v })
        }
        CommandName::Rmv => {
            let tkn = p.token()?;
            let keys = p.key_names(tkn)?;
            let v = p.versioning(tkn, Writes)?;
            Ok(Command::Rmv { tkn, keys, v })
        }
        CommandName::Contains => {
            let tkn = p.token()?;
            let keys = p.key_names(tkn)?;
            let v = p.versioning(tkn, Reads)?;
            Ok(Command::Contains { tkn, keys, v })
        }
        CommandName::Count => {
            let tkn = p.token()?;
            let v = p.versioning(tkn, Reads)?;
            Ok(Command::Count { tkn, v })
        }
        CommandName::Keys => {
            let tkn = p.token()?;
            let v = p.versioning(tkn, Reads)?;
            Ok(Command::Keys { tkn, v })
        }
        CommandName::Clear => {
            let tkn = p.token()?;
            let v = p.versioning(tkn, Writes)?;
            Ok(Command::Clear { tkn, v })
        }
        CommandName::ServerInfo => Ok(Command::ServerInfo),
        CommandName::Touch => {
            let tkn = p.token()?;
            let slide = match p.params.get("slide") {
                None => true,
                Some(value) => bool_of(value).ok_or_else(|| {
                    p.reject(
                        Status::ValueTypeInvalid,
                        "slide must be a boolean",
                        Some(tkn),
                    )
                })?,
            };
            let v = p.versioning(tkn, Reads)?;
            Ok(Command::Touch { tkn, slide, v })
        }
        CommandName::OwnerSessions => Ok(Command::OwnerSessions { owner: p.owner()? }),
        CommandName::OwnerEnd => {
            let owner = p.owner()?;
            let except = match p.params.get("except") {
                None => None,
                Some(value) => Some(token_of(value).ok_or_else(|| {
                    p.reject(
                        Status::SessionTokenInvalid,
                        "except must be a token (number or decimal string)",
                        None,
                    )
                })?),
            };
            Ok(Command::OwnerEnd { owner, except })
        }
        CommandName::Incr => {
            let tkn = p.token()?;
            let key = p.key_name(tkn)?;
            let by = match p.params.get("by") {
                None => 1,
                Some(value) => i64_of(value).ok_or_else(|| {
                    p.reject(
                        Status::ValueTypeInvalid,
                        "by must be a signed 64-bit integer",
                        Some(tkn),
                    )
                })?,
            };
            let v = p.versioning(tkn, Writes)?;
            Ok(Command::Incr { tkn, key, by, v })
        }
        CommandName::Subscribe => p.subscribe(),
        CommandName::Unsubscribe => Ok(Command::Unsubscribe),
        CommandName::Auth => Ok(Command::Auth {
            user: p.credential("user", "user is required", "user must be a string")?,
            password: Secret(p.credential(
                "password",
                "password is required",
                "password must be a string",
            )?),
        }),
    }
}

/// A parameter object's members, read off the tape once: looking one up
/// scans this short list instead of walking the tape again. An object with
/// more members than it holds (never a valid request) is looked up on the
/// tape.
struct Members<'t, 'i> {
    object: Object<'t, 'i>,
    list: [Option<(&'i str, Value<'t, 'i>)>; MEMBERS_MAX],
    /// Members in `list`; None when there were too many for it.
    len: Option<usize>,
}

const MEMBERS_MAX: usize = 16;

impl<'t, 'i> Members<'t, 'i> {
    /// Reads an object's members; None when a name is given twice.
    fn read(object: Object<'t, 'i>) -> Option<Self> {
        let mut list = [None; MEMBERS_MAX];
        if object.len() > MEMBERS_MAX {
            return (!has_duplicate_names(&object)).then_some(Members {
                object,
                list,
                len: None,
            });
        }
        let mut len = 0;
        for (name, value) in object.iter() {
            if list[..len].iter().flatten().any(|&(seen, _)| seen == name) {
                return None;
            }
            list[len] = Some((name, value));
            len += 1;
        }
        Some(Members {
            object,
            list,
            len: Some(len),
        })
    }

    /// Whether a name might be `withVersion` or `ifVersion` (one starts
    /// with `w` or `i`): most requests have neither, and then skip both
    /// lookups for a glance at each name's first byte.
    fn maybe_versioned(&self) -> bool {
        match self.len {
            Some(len) => self.list[..len]
                .iter()
                .flatten()
                .any(|(name, _)| matches!(name.as_bytes().first(), Some(b'w' | b'i'))),
            None => true,
        }
    }

    fn get(&self, name: &str) -> Option<Value<'t, 'i>> {
        match self.len {
            Some(len) => self.list[..len]
                .iter()
                .flatten()
                .find(|&&(member, _)| member == name)
                .map(|&(_, value)| value),
            None => self.object.get(name),
        }
    }
}

/// Whether an object names a member twice (the tape keeps every member in
/// document order, duplicates included).
fn has_duplicate_names(object: &Object<'_, '_>) -> bool {
    const SCAN_MAX: usize = 16;
    if object.len() <= SCAN_MAX {
        let mut names = [""; SCAN_MAX];
        for (i, name) in object.keys().enumerate() {
            if names[..i].contains(&name) {
                return true;
            }
            names[i] = name;
        }
        return false;
    }
    let mut seen = ahash::AHashSet::with_capacity(object.len());
    object.keys().any(|name| !seen.insert(name))
}

/// Reads a token given as a JSON number or a decimal string.
fn token_of(value: Value<'_, '_>) -> Option<Token> {
    match value.value_type() {
        ValueType::String => value.as_str().and_then(parse_decimal_token),
        _ => u64_of(value),
    }
}

/// A JSON integer within u64 (no float, string or bigger number).
fn u64_of(value: Value<'_, '_>) -> Option<u64> {
    match value.value_type() {
        ValueType::U64 => value.as_u64(),
        ValueType::I64 => value.as_i64().and_then(|n| u64::try_from(n).ok()),
        _ => None,
    }
}

/// A JSON integer within i64.
fn i64_of(value: Value<'_, '_>) -> Option<i64> {
    match value.value_type() {
        ValueType::I64 => value.as_i64(),
        ValueType::U64 => value.as_u64().and_then(|n| i64::try_from(n).ok()),
        _ => None,
    }
}

fn string_of<'i>(value: Value<'_, 'i>) -> Option<&'i str> {
    if value.value_type() == ValueType::String {
        value.into_string()
    } else {
        None
    }
}

fn bool_of(value: Value<'_, '_>) -> Option<bool> {
    (value.value_type() == ValueType::Bool)
        .then(|| value.as_bool())
        .flatten()
}

/// Digits only: no sign, no spaces, no exponent; must fit in u64.
fn parse_decimal_token(s: &str) -> Option<Token> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Why simd-json refused the text, in a client's words.
fn json_error_message(error: &simd_json::Error) -> &'static str {
    match error.error() {
        ErrorType::DepthLimitExceeded => "request is not valid JSON: nested too deeply",
        ErrorType::InvalidNumber | ErrorType::InvalidExponent => {
            "request is not valid JSON: a number is malformed"
        }
        ErrorType::InvalidEscape
        | ErrorType::InvalidUnicodeEscape
        | ErrorType::InvalidUnicodeCodepoint => {
            "request is not valid JSON: invalid escape in a string"
        }
        ErrorType::InvalidUtf8 => "message is not valid UTF-8",
        _ => "request is not valid JSON",
    }
}

const IF_VERSION_ONLY: &str =
    "ifVersion is only for SH_SET, SH_ADD, SH_RMV, SH_CLEAR, SH_CLEAR_SET, SH_INCR";

/// Commands about one session, by token: they check `withVersion` and
/// `ifVersion` with their other parameters (`Params::versioning`).
fn takes_session(kind: CommandName) -> bool {
    use CommandName::*;
    match kind {
        End | Info | Set | Add | ClearSet | Get | Rmv | Contains | Count | Keys | Clear | Touch
        | Incr => true,
        New | Open | EndAll | Exists | InfoAll | Save | Load | ServerInfo | OwnerSessions
        | OwnerEnd | Subscribe | Unsubscribe | Auth => false,
    }
}

/// Whether a command may be guarded by `ifVersion`.
#[derive(Copy, Clone, PartialEq, Eq)]
enum VersionAccess {
    Reads,
    Writes,
}

use VersionAccess::{Reads, Writes};

/// A command's parameter object, with the validators every command shares.
struct Params<'a, 't, 'i> {
    name: &'i str,
    params: Members<'t, 'i>,
    /// The request as it arrived, for values exactly as written.
    text: &'a [u8],
}

impl Params<'_, '_, '_> {
    fn reject(&self, status: Status, message: &'static str, tkn: Option<Token>) -> Rejection {
        Rejection {
            to: RejectTo::Command(self.name.to_string()),
            status,
            message: Some(message),
            tkn,
        }
    }

    fn token(&self) -> Result<Token, Rejection> {
        self.params.get("tkn").and_then(token_of).ok_or_else(|| {
            self.reject(
                Status::SessionTokenInvalid,
                "tkn must be an unsigned 64-bit integer (number or decimal string)",
                None,
            )
        })
    }

    fn token_list(&self, field: &'static str) -> Result<Vec<Token>, Rejection> {
        match self.params.get(field) {
            None => Err(self.reject(Status::ParamMissing, "tkns is required", None)),
            Some(value) => match value.as_array() {
                Some(items) => Ok(items.iter().filter_map(token_of).collect()),
                None => Err(self.reject(
                    Status::ValueTypeInvalid,
                    "tkns must be an array of tokens",
                    None,
                )),
            },
        }
    }

    fn optional_bool(&self, field: &str, message: &'static str) -> Result<Option<bool>, Rejection> {
        match self.params.get(field) {
            None => Ok(None),
            Some(value) => bool_of(value)
                .map(Some)
                .ok_or_else(|| self.reject(Status::ValueTypeInvalid, message, None)),
        }
    }

    fn session_name(&self, field: &str) -> Result<Box<str>, Rejection> {
        match self.params.get(field).map(|v| (v, string_of(v))) {
            None => Err(self.reject(Status::ParamMissing, "name is required", None)),
            Some((_, Some(s))) if s.is_empty() || s.len() > MAX_NAME_LEN => {
                Err(self.reject(Status::ValueSize, "name must be 1 to 256 bytes", None))
            }
            Some((_, Some(s))) => Ok(s.into()),
            Some((_, None)) => {
                Err(self.reject(Status::ValueTypeInvalid, "name must be a string", None))
            }
        }
    }

    fn dataset_name(&self) -> Result<Box<str>, Rejection> {
        match self.params.get("name").map(|v| (v, string_of(v))) {
            None => Err(self.reject(Status::ParamMissing, "name is required", None)),
            Some((_, Some(s))) => {
                let valid = !s.is_empty()
                    && s.len() <= MAX_DATASET_NAME_LEN
                    && s != "."
                    && s != ".."
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                if valid {
                    Ok(s.into())
                } else {
                    Err(self.reject(
                        Status::ValueSize,
                        "name must be 1 to 128 characters of [A-Za-z0-9_.-], not . or ..",
                        None,
                    ))
                }
            }
            Some((_, None)) => {
                Err(self.reject(Status::ValueTypeInvalid, "name must be a string", None))
            }
        }
    }

    fn new_session(&self) -> Result<Command, Rejection> {
        let name = match self.params.get("name") {
            None => None,
            Some(_) => Some(self.session_name("name")?),
        };
        let shared = self
            .optional_bool("shared", "shared must be a boolean")?
            .unwrap_or(false);
        if shared && name.is_none() {
            return Err(self.reject(Status::ParamMissing, "a shared session needs a name", None));
        }
        let expiry = match self.params.get("expiry").map(|v| v.as_object()) {
            None => None,
            Some(Some(expiry)) if has_duplicate_names(&expiry) => {
                return Err(self.reject(
                    Status::CommandSyntax,
                    "an expiry setting is given more than once",
                    None,
                ));
            }
            Some(Some(expiry)) => self.expiry(&expiry)?,
            Some(None) => {
                return Err(self.reject(
                    Status::ValueTypeInvalid,
                    "expiry must be an object",
                    None,
                ));
            }
        };
        let owner = match self.params.get("owner") {
            None => None,
            Some(_) => Some(self.owner()?),
        };
        let keys = match self.params.get("keys") {
            None => Vec::new(),
            Some(_) => self.key_values(None)?,
        };
        Ok(Command::New(NewSession {
            name,
            shared,
            expiry,
            owner,
            keys,
            report_version: self.report_version(None)?,
        }))
    }

    /// `SV_AUTH`'s `user` or `password`: any string (the users file decides
    /// what exists), bounded like every name.
    fn credential(
        &self,
        field: &str,
        missing: &'static str,
        not_string: &'static str,
    ) -> Result<Box<str>, Rejection> {
        match self.params.get(field).map(string_of) {
            None => Err(self.reject(Status::ParamMissing, missing, None)),
            Some(Some(s)) if s.len() > MAX_NAME_LEN => Err(self.reject(
                Status::ValueSize,
                "user and password are at most 256 bytes",
                None,
            )),
            Some(Some(s)) => Ok(s.into()),
            Some(None) => Err(self.reject(Status::ValueTypeInvalid, not_string, None)),
        }
    }

    /// `owner`: 1 to 256 bytes of text.
    fn owner(&self) -> Result<Box<str>, Rejection> {
        match self.params.get("owner").map(string_of) {
            None => Err(self.reject(Status::ParamMissing, "owner is required", None)),
            Some(Some(s)) if s.is_empty() || s.len() > MAX_NAME_LEN => {
                Err(self.reject(Status::ValueSize, "owner must be 1 to 256 bytes", None))
            }
            Some(Some(s)) => Ok(s.into()),
            Some(None) => {
                Err(self.reject(Status::ValueTypeInvalid, "owner must be a string", None))
            }
        }
    }

    /// `expiry`: None when it asks for no expiry at all (`duration` 0 and
    /// no `maxLifetime`, NemesisDB's "never expires").
    fn expiry(&self, expiry: &Object<'_, '_>) -> Result<Option<ExpirySettings>, Rejection> {
        let seconds =
            |field: &str, type_message: &'static str, size_message: &'static str| match expiry
                .get(field)
            {
                None => Ok(None),
                Some(value) if value.value_type() == ValueType::U64 => {
                    match value.as_u64().map(u32::try_from) {
                        Some(Ok(n)) => Ok(Some(n)),
                        _ => Err(self.reject(Status::ValueSize, size_message, None)),
                    }
                }
                Some(value) if value.value_type() == ValueType::I64 => {
                    Err(self.reject(Status::ValueSize, size_message, None))
                }
                Some(_) => Err(self.reject(Status::ValueTypeInvalid, type_message, None)),
            };
        let duration = seconds(
            "duration",
            "expiry.duration must be an unsigned integer",
            "expiry.duration must be 0 to 4294967295 seconds",
        )?;
        let lifetime = seconds(
            "maxLifetime",
            "expiry.maxLifetime must be an unsigned integer",
            "expiry.maxLifetime must be 1 to 4294967295 seconds",
        )?;
        if lifetime == Some(0) {
            return Err(self.reject(
                Status::ValueSize,
                "expiry.maxLifetime must be 1 to 4294967295 seconds",
                None,
            ));
        }
        if duration.is_none() && lifetime.is_none() {
            return Err(self.reject(
                Status::ParamMissing,
                "expiry needs duration or maxLifetime",
                None,
            ));
        }
        let flag = |field: &str, message: &'static str| match expiry.get(field) {
            None => Ok(false),
            Some(value) => {
                bool_of(value).ok_or_else(|| self.reject(Status::ValueTypeInvalid, message, None))
            }
        };
        let settings = ExpirySettings {
            duration_s: duration.unwrap_or(0),
            delete_session: flag("deleteSession", "expiry.deleteSession must be a boolean")?,
            extend_on_set_add: flag("extendOnSetAdd", "expiry.extendOnSetAdd must be a boolean")?,
            extend_on_get: flag("extendOnGet", "expiry.extendOnGet must be a boolean")?,
            max_lifetime_s: lifetime.unwrap_or(0),
        };
        Ok((settings.duration_s > 0 || settings.max_lifetime_s > 0).then_some(settings))
    }

    /// `keys` as an object of values; `tkn` is echoed in a rejection.
    /// `withVersion`: false when absent.
    fn report_version(&self, tkn: Option<Token>) -> Result<bool, Rejection> {
        if !self.params.maybe_versioned() {
            return Ok(false);
        }
        match self.params.get("withVersion") {
            None => Ok(false),
            Some(value) => bool_of(value).ok_or_else(|| {
                self.reject(
                    Status::ValueTypeInvalid,
                    "withVersion must be a boolean",
                    tkn,
                )
            }),
        }
    }

    /// `withVersion`, and `ifVersion` where the command is a write it can
    /// guard (anywhere else it is refused: ignoring it would run the
    /// command unguarded).
    #[inline]
    fn versioning(&self, tkn: Token, access: VersionAccess) -> Result<Versioning, Rejection> {
        if self.params.maybe_versioned() {
            self.versioning_given(tkn, access)
        } else {
            Ok(Versioning::default())
        }
    }

    /// [`Params::versioning`] of a request that may give either.
    #[inline(never)]
    fn versioning_given(&self, tkn: Token, access: VersionAccess) -> Result<Versioning, Rejection> {
        let report = self.report_version(Some(tkn))?;
        let expect = match (self.params.get("ifVersion"), access) {
            (None, _) => None,
            (Some(_), Reads) => {
                return Err(self.reject(Status::ValueTypeInvalid, IF_VERSION_ONLY, Some(tkn)));
            }
            (Some(value), Writes) => Some(u64_of(value).ok_or_else(|| {
                self.reject(
                    Status::ValueTypeInvalid,
                    "ifVersion must be an unsigned 64-bit integer",
                    Some(tkn),
                )
            })?),
        };
        Ok(Versioning { report, expect })
    }

    /// `SH_SAVE`'s `tkns`: unlike `SH_EXISTS`, an entry that is not a token
    /// (41) or an empty list (42) refuses the save, as NemesisDB does: a
    /// new version holding nothing would become the newest, and the next
    /// `SH_LOAD` would load nothing.
    fn save_tokens(&self) -> Result<Vec<Token>, Rejection> {
        let invalid = || {
            self.reject(
                Status::ValueTypeInvalid,
                "tkns must be an array of tokens",
                None,
            )
        };
        let items = self
            .params
            .get("tkns")
            .and_then(|v| v.as_array())
            .ok_or_else(invalid)?;
        let tkns = items
            .iter()
            .map(token_of)
            .collect::<Option<Vec<Token>>>()
            .ok_or_else(invalid)?;
        if tkns.is_empty() {
            return Err(self.reject(
                Status::ValueSize,
                "tkns must name at least one session",
                None,
            ));
        }
        Ok(tkns)
    }

    /// `SH_SUBSCRIBE`: which events, whose, with keys or not, from where.
    fn subscribe(&self) -> Result<Command, Rejection> {
        let kinds = match self.params.get("events") {
            None => EventKind::ALL_BITS,
            Some(events) => {
                let Some(names) = events.as_array() else {
                    return Err(self.reject(
                        Status::ValueTypeInvalid,
                        "events must be an array of event names",
                        None,
                    ));
                };
                let mut kinds = 0;
                for name in names.iter() {
                    let Some(name) = string_of(name) else {
                        return Err(self.reject(
                            Status::ValueTypeInvalid,
                            "events must be an array of event names",
                            None,
                        ));
                    };
                    match EventKind::bit_of(name) {
                        Some(bit) if kinds & bit == 0 => kinds |= bit,
                        _ => {
                            return Err(self.reject(
                                Status::ValueSize,
                                "events: each of created, ended, expired, keysExpired at most once",
                                None,
                            ));
                        }
                    }
                }
                if kinds == 0 {
                    return Err(self.reject(
                        Status::ValueSize,
                        "events must name at least one event",
                        None,
                    ));
                }
                kinds
            }
        };
        let owner = match self.params.get("owner") {
            None => None,
            Some(_) => Some(self.owner()?),
        };
        let with_keys = self
            .optional_bool("withKeys", "withKeys must be a boolean")?
            .unwrap_or(false);
        let after = match self.params.get("after").map(string_of) {
            None => None,
            Some(Some(cursor)) => Some(cursor.into()),
            Some(None) => {
                return Err(self.reject(
                    Status::ValueTypeInvalid,
                    "after must be a cursor string",
                    None,
                ));
            }
        };
        Ok(Command::Subscribe {
            filter: EventFilter {
                kinds,
                owner,
                with_keys,
            },
            after,
        })
    }

    /// `key`: one key name (`SH_INCR`).
    fn key_name(&self, tkn: Token) -> Result<Box<str>, Rejection> {
        match self.params.get("key").map(string_of) {
            None => Err(self.reject(Status::ParamMissing, "key is required", Some(tkn))),
            Some(Some(key)) => Ok(key.into()),
            Some(None) => {
                Err(self.reject(Status::ValueTypeInvalid, "key must be a string", Some(tkn)))
            }
        }
    }

    fn key_values(&self, tkn: Option<Token>) -> Result<Vec<KeyValue>, Rejection> {
        match self.params.get("keys") {
            None => Err(self.reject(Status::ParamMissing, "keys is required", tkn)),
            Some(keys) if keys.is_object() => raw::keys_members(self.text)
                .and_then(|members| {
                    members
                        .into_iter()
                        .map(|(key, value)| Some((raw::unescape_name(key)?, raw::compact(value))))
                        .collect::<Option<Vec<KeyValue>>>()
                })
                // Not expected once simd-json has accepted the text.
                .ok_or_else(|| self.reject(Status::JsonInvalid, "keys could not be read", tkn)),
            Some(_) => Err(self.reject(Status::ValueTypeInvalid, "keys must be an object", tkn)),
        }
    }

    fn key_names(&self, tkn: Token) -> Result<Vec<Box<str>>, Rejection> {
        match self.params.get("keys") {
            None => Err(self.reject(Status::ParamMissing, "keys is required", Some(tkn))),
            Some(keys) if keys.is_array() => Ok(keys
                .as_array()
                .iter()
                .flat_map(|keys| keys.iter())
                .filter_map(|k| string_of(k).map(Box::from))
                .collect()),
            Some(_) => Err(self.reject(
                Status::ValueTypeInvalid,
                "keys must be an array of names",
                Some(tkn),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Command, Rejection> {
        parse_request(text.as_bytes())
    }

    fn status(text: &str) -> Status {
        parse(text).err().map(|r| r.status).unwrap_or(Status::Ok)
    }

    /// The WebSocket layer leaves a one-frame text message's UTF-8 check to
    /// this parser (simd-json checks every byte in its first pass).
    #[test]
    fn text_that_is_not_utf8_is_refused_wherever_the_bad_byte_is() {
        let good = br#"{"SH_SET":{"tkn":7,"keys":{"k":"v","big":1e999999}}} "#;
        assert!(RequestParser::default().parse(good).is_ok());
        for at in 0..good.len() {
            for bad in [0xff_u8, 0xc3, 0x80] {
                let mut text = good.to_vec();
                text[at] = bad;
                let rejection = RequestParser::default()
                    .parse(&text)
                    .expect_err("not UTF-8");
                assert_eq!(rejection.status, Status::JsonInvalid, "byte {at}");
            }
        }
        // Inside a string, split from its continuation byte, overlong.
        for text in [
            &b"{\"SV_INFO\":{\"\xe2\x82\":1}}"[..],
            b"{\"SV_INFO\":{\"\xc0\xaf\":1}}",
        ] {
            let rejection = RequestParser::default().parse(text).expect_err("not UTF-8");
            assert_eq!(rejection.status, Status::JsonInvalid);
        }
    }

    #[test]
    fn tokens_as_numbers_and_strings() {
        assert_eq!(
            parse(r#"{"SH_END":{"tkn":42}}"#),
            Ok(Command::End { tkn: 42 })
        );
        assert_eq!(
            parse(r#"{"SH_END":{"tkn":"18446744073709551615"}}"#),
            Ok(Command::End { tkn: u64::MAX })
        );
        assert_eq!(
            parse(r#"{"SH_END":{"tkn":18446744073709551615}}"#),
            Ok(Command::End { tkn: u64::MAX })
        );
        for bad in [
            r#"{"SH_END":{}}"#,
            r#"{"SH_END":{"tkn":null}}"#,
            r#"{"SH_END":{"tkn":-1}}"#,
            r#"{"SH_END":{"tkn":1.5}}"#,
            r#"{"SH_END":{"tkn":"+5"}}"#,
            r#"{"SH_END":{"tkn":" 5"}}"#,
            r#"{"SH_END":{"tkn":""}}"#,
            r#"{"SH_END":{"tkn":"18446744073709551616"}}"#,
            r#"{"SH_END":{"tkn":true}}"#,
            r#"{"SH_END":{"tkn":[1]}}"#,
        ] {
            assert_eq!(status(bad), Status::SessionTokenInvalid, "{bad}");
        }
    }

    #[test]
    fn frame_level_errors() {
        assert_eq!(status("{"), Status::JsonInvalid);
        assert_eq!(status("[1]"), Status::CommandSyntax);
        assert_eq!(status("{}"), Status::CommandSyntax);
        assert_eq!(status("7"), Status::CommandSyntax);
        assert_eq!(
            status(r#"{"SH_INFO_ALL":{},"SV_INFO":{}}"#),
            Status::CommandMultiple
        );
        let r = parse(r#"{"NOPE":1}"#).unwrap_err();
        assert_eq!(r.status, Status::CommandType);
        assert_eq!(r.to, RejectTo::Command("NOPE".into()));
        let r = parse(r#"{"NOPE":{}}"#).unwrap_err();
        assert_eq!(r.status, Status::CommandNotExist);
        assert_eq!(status(r#"{"sh_new":{}}"#), Status::CommandNotExist);
    }

    #[test]
    fn new_validates_every_parameter() {
        assert_eq!(
            parse(r#"{"SH_NEW":{}}"#),
            Ok(Command::New(NewSession {
                name: None,
                shared: false,
                expiry: None,
                owner: None,
                keys: Vec::new(),
                report_version: false,
            }))
        );
        assert_eq!(status(r#"{"SH_NEW":{"name":""}}"#), Status::ValueSize);
        let long = format!(r#"{{"SH_NEW":{{"name":"{}"}}}}"#, "x".repeat(257));
        assert_eq!(status(&long), Status::ValueSize);
        let max = format!(r#"{{"SH_NEW":{{"name":"{}"}}}}"#, "x".repeat(256));
        assert_eq!(status(&max), Status::Ok);
        assert_eq!(status(r#"{"SH_NEW":{"name":5}}"#), Status::ValueTypeInvalid);
        assert_eq!(
            status(r#"{"SH_NEW":{"shared":true}}"#),
            Status::ParamMissing
        );
        assert_eq!(
            status(r#"{"SH_NEW":{"name":"a","shared":"yes"}}"#),
            Status::ValueTypeInvalid
        );
        assert_eq!(status(r#"{"SH_NEW":{"expiry":{}}}"#), Status::ParamMissing);
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":3}}"#),
            Status::ValueTypeInvalid
        );
        // NemesisDB's "never expires".
        assert_eq!(
            parse(r#"{"SH_NEW":{"expiry":{"duration":0,"deleteSession":true}}}"#),
            parse(r#"{"SH_NEW":{}}"#)
        );
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":{"duration":-4}}}"#),
            Status::ValueSize
        );
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":{"duration":1.5}}}"#),
            Status::ValueTypeInvalid
        );
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":{"duration":"10"}}}"#),
            Status::ValueTypeInvalid
        );
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":{"duration":4294967296}}}"#),
            Status::ValueSize
        );
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":{"duration":5,"extendOnGet":1}}}"#),
            Status::ValueTypeInvalid
        );
        assert_eq!(
            parse(
                r#"{"SH_NEW":{"name":"n","shared":true,"expiry":{"duration":5,"deleteSession":true,"extendOnGet":true}}}"#
            ),
            Ok(Command::New(NewSession {
                name: Some("n".into()),
                shared: true,
                expiry: Some(ExpirySettings::idle(5, true, false, true)),
                owner: None,
                keys: Vec::new(),
                report_version: false,
            }))
        );
    }

    #[test]
    fn new_takes_owner_keys_and_lifetime() {
        assert_eq!(
            parse(
                r#"{"SH_NEW":{"owner":"ann","keys":{"a":1,"b":{"c" : [true]}},"expiry":{"maxLifetime":60}}}"#
            ),
            Ok(Command::New(NewSession {
                name: None,
                shared: false,
                expiry: Some(ExpirySettings {
                    max_lifetime_s: 60,
                    ..ExpirySettings::idle(0, false, false, false)
                }),
                owner: Some("ann".into()),
                keys: vec![
                    ("a".into(), b"1".to_vec().into()),
                    ("b".into(), br#"{"c":[true]}"#.to_vec().into()),
                ],
                report_version: false,
            }))
        );
        let Ok(Command::New(new)) =
            parse(r#"{"SH_NEW":{"expiry":{"duration":0,"maxLifetime":5,"extendOnGet":true}}}"#)
        else {
            panic!("not a new session");
        };
        assert_eq!(
            new.expiry.map(|e| (e.duration_s, e.max_lifetime_s)),
            Some((0, 5))
        );
        for (request, expected) in [
            (r#"{"SH_NEW":{"owner":""}}"#, Status::ValueSize),
            (r#"{"SH_NEW":{"owner":5}}"#, Status::ValueTypeInvalid),
            (r#"{"SH_NEW":{"keys":[1]}}"#, Status::ValueTypeInvalid),
            (
                r#"{"SH_NEW":{"expiry":{"maxLifetime":0}}}"#,
                Status::ValueSize,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"maxLifetime":-1}}}"#,
                Status::ValueSize,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"maxLifetime":"9"}}}"#,
                Status::ValueTypeInvalid,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"maxLifetime":4294967296}}}"#,
                Status::ValueSize,
            ),
            (
                r#"{"SH_NEW":{"expiry":{"deleteSession":true}}}"#,
                Status::ParamMissing,
            ),
            (
                r#"{"SH_TOUCH":{"tkn":1,"slide":1}}"#,
                Status::ValueTypeInvalid,
            ),
            (r#"{"SH_TOUCH":{}}"#, Status::SessionTokenInvalid),
            (r#"{"SH_OWNER_SESSIONS":{}}"#, Status::ParamMissing),
            (
                r#"{"SH_OWNER_END":{"owner":"a","except":"x"}}"#,
                Status::SessionTokenInvalid,
            ),
            (r#"{"SH_OWNER_END":{"owner":[]}}"#, Status::ValueTypeInvalid),
        ] {
            assert_eq!(status(request), expected, "{request}");
        }
        let long = format!(r#"{{"SH_NEW":{{"owner":"{}"}}}}"#, "x".repeat(257));
        assert_eq!(status(&long), Status::ValueSize);
        assert_eq!(
            parse(r#"{"SH_TOUCH":{"tkn":"9"}}"#),
            Ok(Command::Touch {
                tkn: 9,
                slide: true,
                v: Versioning::default(),
            })
        );
        assert_eq!(
            parse(r#"{"SH_OWNER_END":{"owner":"a","except":"12"}}"#),
            Ok(Command::OwnerEnd {
                owner: "a".into(),
                except: Some(12)
            })
        );
    }

    #[test]
    fn values_are_kept_as_compact_json() {
        let Ok(Command::Set { tkn, keys, .. }) = parse(
            r#"{"SH_SET":{"tkn":"7","keys":{"a": [1, 2.5, -3, 18446744073709551615], "b": {"x" : "q\"\u00e9"}}}}"#,
        ) else {
            panic!("SH_SET did not parse")
        };
        assert_eq!(tkn, 7);
        let get = |k: &str| {
            keys.iter()
                .find(|(name, _)| name.as_ref() == k)
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("a").as_deref(), Some("[1,2.5,-3,18446744073709551615]"));
        // Exactly as sent: the escape stays an escape.
        assert_eq!(get("b").as_deref(), Some("{\"x\":\"q\\\"\\u00e9\"}"));
    }

    #[test]
    fn numbers_beyond_64_bits_are_valid_json_of_the_wrong_type() {
        assert_eq!(
            status(r#"{"SH_END":{"tkn":18446744073709551616}}"#),
            Status::SessionTokenInvalid
        );
        assert_eq!(
            parse(r#"{"SH_EXISTS":{"tkns":[1e400,7,-99999999999999999999]}}"#),
            Ok(Command::Exists { tkns: vec![7] })
        );
        let Ok(Command::Set { keys, .. }) = parse(
            r#"{"SH_SET":{"tkn":1,"keys":{"big":123456789012345678901234567890,"f":-1e999}}}"#,
        ) else {
            panic!("SH_SET with big numbers did not parse")
        };
        assert_eq!(&*keys[0].1, b"123456789012345678901234567890");
        assert_eq!(&*keys[1].1, b"-1e999");
        assert_eq!(
            status(r#"{"SH_SET":{"tkn":1,"keys":{"a":01}}}"#),
            Status::JsonInvalid
        );
        assert_eq!(
            status(r#"{"SH_SET":{"tkn":1,"keys":{"a":1.}}}"#),
            Status::JsonInvalid
        );
    }

    #[test]
    fn an_unknown_command_is_10_whatever_its_parameters() {
        assert_eq!(
            status(r#"{"RH_SET":{"tkn":1,"tkn":5}}"#),
            Status::CommandNotExist
        );
        assert_eq!(status(r#"{"RH_SET":[]}"#), Status::CommandType);
    }

    #[test]
    fn duplicated_parameters_are_a_syntax_error_at_any_size() {
        let pad: String = (0..40).map(|i| format!(r#","p{i}":0"#)).collect();
        for pad in ["", pad.as_str()] {
            let set = format!(r#"{{"SH_SET":{{"tkn":1,"keys":{{"a":1}},"keys":5{pad}}}}}"#);
            assert_eq!(status(&set), Status::CommandSyntax, "{set}");
            let ok = format!(r#"{{"SH_SET":{{"tkn":1,"keys":{{"a":1,"a":2}}{pad}}}}}"#);
            assert_eq!(status(&ok), Status::Ok, "{ok}");
        }
        assert_eq!(
            status(r#"{"SH_NEW":{"expiry":{"duration":1,"duration":2}}}"#),
            Status::CommandSyntax
        );
    }

    #[test]
    fn key_lists_skip_non_strings() {
        assert_eq!(
            parse(r#"{"SH_GET":{"tkn":1,"keys":["a",1,null,"b"]}}"#),
            Ok(Command::Get {
                tkn: 1,
                keys: vec!["a".into(), "b".into()],
                v: Versioning::default(),
            })
        );
        let r = parse(r#"{"SH_GET":{"tkn":1,"keys":{"a":1}}}"#).unwrap_err();
        assert_eq!((r.status, r.tkn), (Status::ValueTypeInvalid, Some(1)));
        let r = parse(r#"{"SH_SET":{"tkn":1}}"#).unwrap_err();
        assert_eq!((r.status, r.tkn), (Status::ParamMissing, Some(1)));
        assert_eq!(
            parse(r#"{"SH_EXISTS":{"tkns":[1,"2",-3,"x",null]}}"#),
            Ok(Command::Exists { tkns: vec![1, 2] })
        );
        assert_eq!(status(r#"{"SH_EXISTS":{}}"#), Status::ParamMissing);
        assert_eq!(
            status(r#"{"SH_EXISTS":{"tkns":5}}"#),
            Status::ValueTypeInvalid
        );
    }

    #[test]
    fn dataset_names() {
        assert_eq!(status(r#"{"SH_SAVE":{"name":"ok-1.2_x"}}"#), Status::Ok);
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            let text = format!(r#"{{"SH_SAVE":{{"name":"{bad}"}}}}"#);
            assert_eq!(status(&text), Status::ValueSize, "{bad}");
        }
        assert_eq!(status(r#"{"SH_LOAD":{}}"#), Status::ParamMissing);
        assert_eq!(
            status(r#"{"SH_SAVE":{"name":"a","tkns":1}}"#),
            Status::ValueTypeInvalid
        );
    }
}
