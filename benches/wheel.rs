//! Timing wheel hot paths at a million timers: insert, slide (fire + re-insert), expire
//! (budgeted advance over all of them) and remove. Throughput is per timer, so criterion's
//! `thrpt` line reads as timers per second; ns per op = 1e9 / thrpt.
//!
//! Deadlines are in 10 ms ticks, the shard's tick, spread over realistic session TTLs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use nemesisdb::expiry::{TimerKey, TimingWheel};

const N: u64 = 1_000_000;
/// Deadlines spread over an hour of 10 ms ticks: sessions with minutes-to-hour TTLs.
const SPREAD: u64 = 360_000;
/// Per-turn budget, as a shard would use.
const BUDGET: usize = 10_000;
/// The slide benchmark's TTL: 1M sessions over 5000 ticks = 200 fire per tick.
const TTL: u64 = 5_000;

/// Deterministic pseudo-random numbers, so every run benches the same layout.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn deadlines() -> Vec<u64> {
    let mut rng = 7;
    (0..N).map(|_| 1 + splitmix(&mut rng) % SPREAD).collect()
}

fn filled(deadlines: &[u64]) -> (TimingWheel, Vec<TimerKey>) {
    let mut wheel = TimingWheel::new(0);
    let keys = deadlines
        .iter()
        .enumerate()
        .map(|(i, &d)| wheel.insert(d, i as u64))
        .collect();
    (wheel, keys)
}

fn bench_wheel(c: &mut Criterion) {
    let deadlines = deadlines();
    let mut group = c.benchmark_group("wheel_1M");
    // Flat: each 1M-timer iteration takes tens of milliseconds, and a few of them per
    // sample are plenty; keeps the whole bench well under two minutes.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    group.throughput(Throughput::Elements(N));
    group.bench_function("insert", |b| {
        b.iter_batched(
            || TimingWheel::new(0),
            |mut wheel| {
                for (i, &d) in deadlines.iter().enumerate() {
                    black_box(wheel.insert(d, i as u64));
                }
                wheel
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("expire", |b| {
        b.iter_batched(
            || filled(&deadlines).0,
            |mut wheel| {
                let mut fired = Vec::with_capacity(BUDGET);
                while wheel.advance_to(SPREAD, BUDGET, &mut fired) {
                    fired.clear();
                }
                assert!(wheel.is_empty());
                wheel
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("expire_same_tick", |b| {
        b.iter_batched(
            || filled(&vec![SPREAD; N as usize]).0,
            |mut wheel| {
                let mut fired = Vec::with_capacity(BUDGET);
                while wheel.advance_to(SPREAD, BUDGET, &mut fired) {
                    fired.clear();
                }
                wheel
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("remove", |b| {
        let mut order: Vec<usize> = (0..N as usize).collect();
        let mut rng = 11;
        for i in (1..order.len()).rev() {
            order.swap(i, (splitmix(&mut rng) % (i as u64 + 1)) as usize);
        }
        b.iter_batched(
            || filled(&deadlines),
            |(mut wheel, keys)| {
                for &i in &order {
                    black_box(wheel.remove(keys[i]));
                }
                wheel
            },
            BatchSize::LargeInput,
        )
    });

    // Steady state: 1M live sessions with one TTL, every one re-inserted when it fires,
    // so each tick fires 200 and files 200, including the cascades at slot boundaries.
    // One iteration is one tick; the wheel carries over between iterations.
    let per_tick = N / TTL;
    group.throughput(Throughput::Elements(per_tick));
    group.bench_function("slide", |b| {
        let mut wheel = TimingWheel::new(0);
        for i in 0..N {
            wheel.insert(1 + i % TTL, i);
        }
        let mut fired = Vec::with_capacity(BUDGET);
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let now = wheel.now() + 1;
                fired.clear();
                let more = wheel.advance_to(now, BUDGET, &mut fired);
                debug_assert!(!more && fired.len() as u64 == per_tick);
                for &(_, value) in &fired {
                    wheel.insert(now + TTL, value);
                }
            }
            start.elapsed()
        })
    });
    group.finish();

    let (wheel, _) = filled(&deadlines);
    println!(
        "heap per timer at 1M live: {:.1} bytes",
        wheel.heap_bytes() as f64 / N as f64
    );
}

criterion_group!(benches, bench_wheel);
criterion_main!(benches);
