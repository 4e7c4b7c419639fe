//! Event lag (#16): when 100,000 sessions expire within the same second, how
//! late does each `expired` event reach a subscriber that reads as fast as
//! it can, and how long does another client's request wait meanwhile?
//!
//! Starts a two-shard server in this process, subscribes one connection to
//! `expired` events, creates N sessions (default 100,000,
//! `EVENT_LAG_SESSIONS` to change) over four connections (a connection's
//! sessions live on its shard, so four spread them over both) with
//! durations chosen so the deadlines spread evenly over one second, then a
//! second client sends `SH_GET`s on its own session one at a time from a
//! second before that second to three seconds after it. Lag = the wall
//! clock when the subscriber got the event minus the event's `deadline`.
//! Prints; asserts nothing about time.
//!
//! `cargo bench --bench event_lag`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ws, call, connect, field_u64, probe, recv, rss_mib, start_server, summary};
use nemesisdb::config::Flags;
use tungstenite::Message;

const SETUP_CONNECTIONS: usize = 4;
/// Round trips one set-up connection spreads its sessions over...
const BATCHES_PER_CONNECTION: usize = 50;
/// ...unless that makes a round trip create more than this many.
const MAX_BATCH: usize = 1000;

fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The unsigned number after `"field":`, if the text has one.
fn field(text: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let at = text.find(&key)? + key.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// What the subscriber saw.
#[derive(Default)]
struct Seen {
    /// Lag of each `expired` event, µs (0 when it came before its deadline).
    lags: Vec<u64>,
    early: u64,
    lost: u64,
    deadlines: Option<(u64, u64)>,
}

/// Reads events until `expected` expiries came or `stop` is set.
fn subscribe(mut ws: Ws, expected: usize, stop: Arc<AtomicBool>) -> Seen {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut seen = Seen::default();
    while seen.lags.len() < expected && !stop.load(Ordering::Relaxed) {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("subscriber: {e}"),
        };
        let arrival = now_unix_us();
        if text.contains(r#""event":"lost""#) {
            seen.lost += field(&text, "lost").unwrap_or(0);
        } else if let Some(deadline) = field(&text, "deadline") {
            let due = deadline * 1000;
            if arrival < due {
                seen.early += 1;
            }
            seen.lags.push(arrival.saturating_sub(due));
            seen.deadlines = Some(match seen.deadlines {
                Some((lo, hi)) => (lo.min(deadline), hi.max(deadline)),
                None => (deadline, deadline),
            });
        }
    }
    seen
}

fn main() {
    let sessions: usize = std::env::var("EVENT_LAG_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let server = start_server(Flags {
        shards: Some(2),
        ..Flags::default()
    });
    let addr = server.local_addr();
    let rss_start = rss_mib();

    let mut sub = connect(addr);
    let answer = call(
        &mut sub,
        r#"{"SH_SUBSCRIBE":{"events":["expired"],"withKeys":false}}"#,
    );
    assert_eq!(field_u64(&answer, "st"), 1, "SH_SUBSCRIBE: {answer}");
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || subscribe(sub, sessions, stop))
    };

    // Every deadline lands in [t0 + horizon, t0 + horizon + 1): a session
    // created `e` seconds in gets horizon - floor(e) seconds. The batches
    // are paced evenly over set-up's first second (each connection's
    // interleaved with the others'), so the deadlines spread evenly over
    // that one, as loadtest's expiry-events does; no batch starts in the
    // last 10 ms of a second, so none straddles one.
    let horizon = 5 + (sessions / 20_000) as u64;
    let t0 = Instant::now();
    let setup: Vec<_> = (0..SETUP_CONNECTIONS)
        .map(|c| {
            thread::spawn(move || {
                let mut ws = connect(addr);
                let mine = sessions / SETUP_CONNECTIONS
                    + usize::from(c < sessions % SETUP_CONNECTIONS);
                let size = mine.div_ceil(BATCHES_PER_CONNECTION).clamp(1, MAX_BATCH);
                let batches = mine.div_ceil(size);
                for j in 0..batches {
                    let due = t0
                        + Duration::from_secs_f64(
                            (j * SETUP_CONNECTIONS + c) as f64
                                / (batches * SETUP_CONNECTIONS) as f64,
                        );
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    let mut e = t0.elapsed();
                    if e.subsec_millis() >= 990 {
                        thread::sleep(Duration::from_millis(u64::from(
                            1002 - e.subsec_millis(),
                        )));
                        e = t0.elapsed();
                    }
                    assert!(e.as_secs() + 2 < horizon, "populating took too long");
                    let new = format!(
                        r#"{{"SH_NEW":{{"expiry":{{"duration":{},"deleteSession":true}},"keys":{{"user":"u123456","cart":[1,2,3]}}}}}}"#,
                        horizon - e.as_secs()
                    );
                    let n = size.min(mine - j * size);
                    for _ in 0..n {
                        ws.write(Message::text(new.clone())).unwrap();
                    }
                    ws.flush().unwrap();
                    for _ in 0..n {
                        let r = recv(&mut ws);
                        assert_eq!(field_u64(&r, "st"), 1, "SH_NEW: {r}");
                    }
                }
            })
        })
        .collect();
    for h in setup {
        h.join().expect("set-up thread");
    }
    println!(
        "populated {sessions} sessions over {SETUP_CONNECTIONS} connections in {:.1} s; RSS {rss_start} -> {} MiB",
        t0.elapsed().as_secs_f64(),
        rss_mib()
    );

    // Probe from one second before the window to three seconds after it.
    let window = t0 + Duration::from_secs(horizon);
    let mut prober = connect(addr);
    let own = field_u64(&call(&mut prober, r#"{"SH_NEW":{}}"#), "tkn");
    let get = format!(r#"{{"SH_GET":{{"tkn":{own},"keys":["x"]}}}}"#);
    thread::sleep(window.saturating_duration_since(Instant::now() + Duration::from_secs(1)));
    let latencies = probe(&mut prober, &get, window + Duration::from_secs(3));
    // Whatever has not come 30 s after the window is not coming.
    let give_up = window + Duration::from_secs(31);
    while !subscriber.is_finished() && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = subscriber.join().expect("subscriber thread");
    seen.lags.sort_unstable();

    println!(
        "second client's SH_GET during the expiry window: {}",
        summary(&latencies)
    );
    let ms = |us: u64| us as f64 / 1000.0;
    let lags = &seen.lags;
    if lags.is_empty() {
        println!("no expired events arrived");
    } else {
        let pct = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize];
        let (lo, hi) = seen.deadlines.unwrap_or((0, 0));
        println!(
            "expired events: {} of {sessions} arrived, {} lost, {} before their deadline; \
             deadlines spread over {} ms",
            lags.len(),
            seen.lost,
            seen.early,
            hi - lo
        );
        println!(
            "lag from deadline to arrival: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(pct(0.999)),
            ms(lags[lags.len() - 1])
        );
    }
    server.stopper().stop();
    let _ = server.wait();
}
