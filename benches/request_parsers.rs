//! Issue #21's first step: how much of request decoding a JSON library can
//! take off, measured on the exact requests loadtest sends (get and set
//! workloads: one key; lifecycle: two keys).
//!
//! Five ways to read one request, each ending with the same owned
//! [`Command`] (checked once before anything is timed, so no variant does
//! less work):
//! - `ours`: [`RequestParser::parse`] with reused buffers: the fast path
//!   for canonical `SH_GET` / `SH_SET` (`protocol::canonical`), which all
//!   of these take;
//! - `ours, general decoder only`: [`RequestParser::parse_general`], the
//!   decoder every other request goes through;
//! - `simd-json tape only`: the copy and `fill_tape` our decoder starts
//!   with, nothing read off the tape (the part that is simd-json's);
//! - `sonic-rs lazy`: sonic-rs's on-demand iterators, which validate what
//!   they skip and hand back raw slices;
//! - `sonic-rs Value`: sonic-rs's full parse into its DOM, for reference.
//!
//! `cargo bench --bench request_parsers`; numbers are per request.

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nemesisdb::domain::{KeyValue, Token};
use nemesisdb::protocol::{Command, CommandName, RequestParser, Versioning};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// A token as the server hands them out: 20 digits, beyond i64.
const TKN: &str = "16351792548006066062";
/// A value as loadtest's `value_text` makes it (16 letters and digits).
const VALUE: &str = "q7ZkR2mXb9LwT4sN";

/// The requests, as loadtest's `Pieces` assembles them.
fn shapes() -> Vec<(&'static str, String)> {
    vec![
        (
            "SH_GET 1 key (get)",
            format!(r#"{{"SH_GET":{{"tkn":{TKN},"keys":["user"]}}}}"#),
        ),
        (
            "SH_SET 1 key (set)",
            format!(r#"{{"SH_SET":{{"tkn":{TKN},"keys":{{"user":"{VALUE}"}}}}}}"#),
        ),
        (
            "SH_GET 2 keys (lifecycle)",
            format!(r#"{{"SH_GET":{{"tkn":{TKN},"keys":["user","cart"]}}}}"#),
        ),
        (
            "SH_SET 2 keys (lifecycle)",
            format!(r#"{{"SH_SET":{{"tkn":{TKN},"keys":{{"user":"{VALUE}","cart":"{VALUE}"}}}}}}"#),
        ),
    ]
}

/// The simd-json half of our decoder: copy the text (simd-json parses in
/// place) and fill a reused tape.
#[derive(Default)]
struct TapeOnly {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<simd_json::Tape<'static>>,
}

impl TapeOnly {
    /// Tape entries, so the work cannot be optimised away.
    fn parse(&mut self, text: &[u8]) -> Option<usize> {
        let mut tape = self
            .tape
            .take()
            .unwrap_or_else(|| simd_json::Tape(Vec::new()))
            .reset();
        self.scratch.clear();
        self.scratch.extend_from_slice(text);
        let ok = simd_json::fill_tape(&mut self.scratch, &mut self.buffers, &mut tape).is_ok();
        let len = tape.0.len();
        self.tape = Some(tape.reset());
        ok.then_some(len)
    }
}

/// Longest parameter list checked for duplicates in place, as ours does.
const MEMBERS_MAX: usize = 16;

/// What our decoder checks of any command's parameters, done the lazy way:
/// one command member, a known name, no parameter given twice, no
/// `withVersion`/`ifVersion` (none of these shapes has one, so they are
/// only looked for). Then `tkn` (number or decimal string) and `keys`.
fn sonic_lazy(text: &[u8]) -> Option<Command> {
    let mut top = sonic_rs::to_object_iter(text);
    let (name, params) = top.next()?.ok()?;
    if top.next().is_some() {
        return None;
    }
    let kind = CommandName::from_wire(&name)?;
    // Names are borrowed from `text` unless escaped: no allocation here.
    let mut seen: [Cow<'_, str>; MEMBERS_MAX] = Default::default();
    let mut count = 0;
    let mut tkn = None;
    let mut keys = None;
    for member in params.into_object_iter()? {
        let (param, value) = member.ok()?;
        if seen[..count].contains(&param) {
            return None;
        }
        match param.as_ref() {
            "tkn" => tkn = Some(token_of(&value)?),
            "keys" => keys = Some(value),
            "withVersion" | "ifVersion" => return None,
            _ => {}
        }
        if count < MEMBERS_MAX {
            seen[count] = param;
            count += 1;
        }
    }
    let tkn = tkn?;
    let keys = keys?;
    match kind {
        CommandName::Get => {
            let keys = keys
                .into_array_iter()?
                .filter_map(|k| k.ok()?.as_str().map(Box::from))
                .collect();
            Some(Command::Get {
                tkn,
                keys,
                v: Versioning::default(),
            })
        }
        CommandName::Set => {
            // Values as written (ours also compacts whitespace away; these
            // shapes have none).
            let keys = keys
                .into_object_iter()?
                .map(|kv| {
                    let (k, v) = kv.ok()?;
                    Some((Box::from(k.as_ref()), Box::from(v.as_raw_str().as_bytes())))
                })
                .collect::<Option<Vec<KeyValue>>>()?;
            Some(Command::Set {
                tkn,
                keys,
                v: Versioning::default(),
            })
        }
        _ => None,
    }
}

fn token_of(value: &sonic_rs::LazyValue<'_>) -> Option<Token> {
    if value.is_str() {
        let s = value.as_str()?;
        return s
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?;
    }
    value.as_u64()
}

/// sonic-rs's full parse into its `Value`, then the same fields.
fn sonic_value(text: &[u8]) -> Option<Command> {
    let root: sonic_rs::Value = sonic_rs::from_slice(text).ok()?;
    let root = root.as_object()?;
    if root.len() != 1 {
        return None;
    }
    let (name, params) = root.iter().next()?;
    let kind = CommandName::from_wire(name)?;
    let params = params.as_object()?;
    let tkn = params.get(&"tkn")?.as_u64()?;
    let keys = params.get(&"keys")?;
    match kind {
        CommandName::Get => Some(Command::Get {
            tkn,
            keys: keys
                .as_array()?
                .iter()
                .filter_map(|k| k.as_str().map(Box::from))
                .collect(),
            v: Versioning::default(),
        }),
        CommandName::Set => Some(Command::Set {
            tkn,
            // Re-serialised: a DOM keeps no text.
            keys: keys
                .as_object()?
                .iter()
                .map(|(k, v)| Some((Box::from(k), sonic_rs::to_vec(v).ok()?.into())))
                .collect::<Option<Vec<KeyValue>>>()?,
            v: Versioning::default(),
        }),
        _ => None,
    }
}

fn parsers(c: &mut Criterion) {
    let mut ours = RequestParser::default();
    let mut tape = TapeOnly::default();
    for (shape, text) in shapes() {
        let text = text.as_bytes();
        let expected = ours.parse(text).expect("loadtest's request decodes");
        assert_eq!(ours.parse_general(text).as_ref(), Ok(&expected), "{shape}");
        assert!(tape.parse(text).is_some(), "{shape}: simd-json");
        assert_eq!(sonic_lazy(text).as_ref(), Some(&expected), "{shape}: lazy");
        assert_eq!(
            sonic_value(text).as_ref(),
            Some(&expected),
            "{shape}: Value"
        );

        let mut group = c.benchmark_group(shape);
        group.throughput(Throughput::Elements(1));
        group.bench_function("ours", |b| {
            b.iter(|| black_box(ours.parse(black_box(text))))
        });
        group.bench_function("ours, general decoder only", |b| {
            b.iter(|| black_box(ours.parse_general(black_box(text))))
        });
        group.bench_function("simd-json tape only", |b| {
            b.iter(|| black_box(tape.parse(black_box(text))))
        });
        group.bench_function("sonic-rs lazy", |b| {
            b.iter(|| black_box(sonic_lazy(black_box(text))))
        });
        group.bench_function("sonic-rs Value", |b| {
            b.iter(|| black_box(sonic_value(black_box(text))))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = parsers
}
criterion_main!(benches);
