//! The server's hot paths, one by one: request decoding, decoding plus
//! dispatch of a whole request (as a shard runs it for its own sessions),
//! the store's get and set, response encoding, and the cross-shard hop (a
//! batch through the mesh and back between two threads). Sets run with and
//! without `--max-memory`, so the limit's cost per request shows.
//!
//! `cargo bench --bench hot_paths`. Compare before/after of an optimisation
//! on the same machine in one sitting; the numbers are per operation.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nemesisdb::mesh::{self, Envelope, PartResult};
use nemesisdb::protocol::{answer, parse_request};
use nemesisdb::router::LocalDispatcher;
use nemesisdb::shared_names::SharedNames;
use nemesisdb::store::SessionStore;
use nemesisdb::store::budget::MemoryBudget;

const GET: &str = r#"{"SH_GET":{"tkn":"TKN","keys":["user"]}}"#;
/// `--max-memory` for the limited cases: far above what they use, so
/// nothing is refused and only the accounting's cost shows.
const LIMIT: u64 = 8 << 30;
const SET: &str = r#"{"SH_SET":{"tkn":"TKN","keys":{"user":"u1234567890abcde","cart":[1,2,3]}}}"#;

fn decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    let get = GET.replace("TKN", "16351792548006066062");
    let set = SET.replace("TKN", "16351792548006066062");
    let mut parser = nemesisdb::protocol::RequestParser::default();
    group.bench_function("SH_GET", |b| {
        b.iter(|| black_box(parser.parse(get.as_bytes())))
    });
    group.bench_function("SH_SET", |b| {
        b.iter(|| black_box(parser.parse(set.as_bytes())))
    });
    group.bench_function("SH_GET, fresh buffers", |b| {
        b.iter(|| black_box(parse_request(get.as_bytes())))
    });
    group.finish();
}

/// A dispatcher with `n` sessions of two small keys; returns their tokens.
fn dispatcher(n: usize) -> (LocalDispatcher, Vec<String>) {
    let mut d = LocalDispatcher::new(1);
    let tokens: Vec<String> = (0..n)
        .map(|_| {
            let r = String::from_utf8(d.handle(br#"{"SH_NEW":{}}"#, true)).unwrap();
            let tkn = r.split("\"tkn\":").nth(1).unwrap();
            tkn.trim_end_matches("}}").to_string()
        })
        .collect();
    for tkn in &tokens {
        d.handle(SET.replace("TKN", tkn).as_bytes(), true);
    }
    (d, tokens)
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode + dispatch");
    group.throughput(Throughput::Elements(1));
    let (mut d, tokens) = dispatcher(10_000);
    let gets: Vec<String> = tokens.iter().map(|t| GET.replace("TKN", t)).collect();
    let sets: Vec<String> = tokens.iter().map(|t| SET.replace("TKN", t)).collect();
    let mut i = 0;
    group.bench_function("SH_GET of 10k sessions", |b| {
        b.iter(|| {
            i = (i + 7919) % gets.len();
            black_box(d.handle(gets[i].as_bytes(), true))
        })
    });
    group.bench_function("SH_SET of 10k sessions", |b| {
        b.iter(|| {
            i = (i + 7919) % sets.len();
            black_box(d.handle(sets[i].as_bytes(), true))
        })
    });
    d.set_memory_limit(LIMIT);
    group.bench_function("SH_SET of 10k sessions, --max-memory", |b| {
        b.iter(|| {
            i = (i + 7919) % sets.len();
            black_box(d.handle(sets[i].as_bytes(), true))
        })
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    let mut store = SessionStore::new(Arc::new(SharedNames::default()));
    let n = 100_000u64;
    for tkn in 1..=n {
        store.create(tkn, None, false, None, 0);
        let keys = vec![
            (
                "user".into(),
                b"\"u1234567890abcde\"".to_vec().into_boxed_slice(),
            ),
            ("cart".into(), b"[1,2,3]".to_vec().into_boxed_slice()),
        ];
        let _ = store.set(tkn, keys, 0);
    }
    let mut tkn = 0;
    group.bench_function("get one key of 100k sessions", |b| {
        b.iter(|| {
            tkn = tkn % n + 1;
            let session = store.get(tkn, 0).ok();
            black_box(session.and_then(|s| s.keys.get("user").map(<[u8]>::len)))
        })
    });
    group.bench_function("set one key of 100k sessions", |b| {
        b.iter(|| {
            tkn = tkn % n + 1;
            let keys = vec![("user".into(), b"\"v\"".to_vec().into_boxed_slice())];
            black_box(store.set(tkn, keys, 0).is_ok())
        })
    });
    // A budget shared with another shard, as the server has it: the same
    // set, plus the growth it would make and the local comparison.
    store.set_memory_budget(Some(Arc::new(MemoryBudget::new(LIMIT, 2))));
    group.bench_function("set one key of 100k sessions, --max-memory", |b| {
        b.iter(|| {
            tkn = tkn % n + 1;
            let keys = vec![("user".into(), b"\"v\"".to_vec().into_boxed_slice())];
            black_box(store.set(tkn, keys, 0).is_ok())
        })
    });
    // Every session grows by 1 KiB in one pass over them and gives it back
    // in the next: 100 MiB up and down, so the store borrows from the pool
    // and returns to it as a server under churn would.
    let big = vec![b'x'; 1024].into_boxed_slice();
    let mut grow = false;
    group.bench_function(
        "set one key of 100k sessions, +-1 KiB a pass, --max-memory",
        |b| {
            b.iter(|| {
                tkn = tkn % n + 1;
                if tkn == 1 {
                    grow = !grow;
                }
                let value = if grow {
                    big.clone()
                } else {
                    b"\"v\"".to_vec().into_boxed_slice()
                };
                black_box(store.set(tkn, vec![("user".into(), value)], 0).is_ok())
            })
        },
    );
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    group.bench_function("SH_GET response, two keys", |b| {
        b.iter(|| {
            out.clear();
            answer::values(
                &mut out,
                16351792548006066062,
                [
                    ("user", &b"\"u1234567890abcde\""[..]),
                    ("cart", &b"[1,2,3]"[..]),
                ],
                None,
            );
            black_box(out.len())
        })
    });
    group.finish();
}

/// A batch of `batch` envelopes to another thread's inbox and back.
fn cross_shard_hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross-shard hop");
    let batch = 16usize;
    group.throughput(Throughput::Elements(batch as u64));
    let (poll_a, waker_a) = nemesisdb::shard::new_poll().unwrap();
    let (poll_b, waker_b) = nemesisdb::shard::new_poll().unwrap();
    let (addresses, mut inboxes) = mesh::wire(vec![waker_a, waker_b]);
    let inbox_b = inboxes.pop().unwrap();
    let inbox_a = inboxes.pop().unwrap();
    let echo_addresses = addresses.clone();
    let echo = std::thread::spawn(move || {
        let mut poll = poll_b;
        let mut events = mio::Events::with_capacity(8);
        loop {
            if let Some(batch) = inbox_b.prepare_to_sleep() {
                if batch.is_empty() {
                    return;
                }
                let _ = echo_addresses[0].send(batch);
                continue;
            }
            let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
            inbox_b.awake();
            while let Some(batch) = inbox_b.try_take() {
                if batch.is_empty() {
                    return;
                }
                let _ = echo_addresses[0].send(batch);
            }
        }
    });
    let mut poll = poll_a;
    let mut events = mio::Events::with_capacity(8);
    group.bench_function("16 envelopes there and back", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let envelopes = (0..batch)
                    .map(|gather| Envelope::PartDone {
                        gather,
                        result: PartResult::Ended(1),
                    })
                    .collect();
                let _ = addresses[1].send(envelopes);
                loop {
                    if let Some(back) = inbox_a.prepare_to_sleep() {
                        black_box(back);
                        break;
                    }
                    let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
                    inbox_a.awake();
                    if let Some(back) = inbox_a.try_take() {
                        black_box(back);
                        break;
                    }
                }
            }
            started.elapsed()
        })
    });
    group.finish();
    let _ = addresses[1].send(Vec::new());
    let _ = echo.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decoding, dispatch, store, encoding, cross_shard_hop
}
criterion_main!(benches);
