//! The server's WebSocket message layer, before and after it replaced
//! tungstenite's `WebSocket` with its own framing (`net::websocket`).
//!
//! tungstenite's `WebSocket` allocated a `Bytes` per incoming frame, wanted
//! every outgoing message as an owned `String` (so each response was checked
//! as UTF-8) and copied it twice on the way out. Ours unmasks frames in place
//! in a reused read buffer, hands a one-frame message out as a slice of it and
//! frames responses straight into one output buffer.
//!
//! Both run the same turn over a real loopback TCP connection, on the same
//! `Socket` the server wraps every client in: the client writes a batch of
//! masked `SH_GET` frames; the server side reads them all, answers each with
//! a typical `SH_GET_RSP` and flushes once; the client reads every answer
//! back, so the socket buffers never fill. Only the server side is timed (the
//! client's blocking write and read are the same for both and are not what
//! changed). No command is parsed or run: this is the framing alone.
//!
//! `cargo bench --bench framing` (about 10 s). Criterion's time is per batch
//! of 64 messages and its `thrpt` is messages per second: per message =
//! time / 64. Compare the two lines of one run on the same machine.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use nemesisdb::config::DEFAULT_MAX_PAYLOAD;
use nemesisdb::net::socket::Socket;
use nemesisdb::net::websocket::{Event, Flushed, WebSocket};
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig};

/// Messages per turn. 64 requests and their answers fit the loopback socket
/// buffers, so the client's blocking write never waits for the server.
const BATCH: usize = 64;
const REQUEST: &[u8] = br#"{"SH_GET":{"tkn":16351792548006066062,"keys":["user"]}}"#;
const RESPONSE: &[u8] =
    br#"{"SH_GET_RSP":{"st":1,"tkn":16351792548006066062,"keys":{"user":"u1234567890abcde"}}}"#;
/// Any key will do; a fixed one keeps every run's bytes the same.
const MASK: [u8; 4] = [0x3d, 0xa7, 0x10, 0x5e];

/// The server side of one connection, as a shard drives it for one turn.
trait Turn {
    /// Reads until `BATCH` text messages have arrived, showing each to
    /// `seen` and answering it with `RESPONSE`, then flushes once.
    fn answer_batch(&mut self, seen: impl FnMut(&[u8]));
}

/// The message layer as it was: tungstenite's `WebSocket` over the same
/// `Socket`, configured as the server configured it.
struct Tungstenite(tungstenite::WebSocket<Socket>);

impl Turn for Tungstenite {
    fn answer_batch(&mut self, mut seen: impl FnMut(&[u8])) {
        let ws = &mut self.0;
        let mut answered = 0;
        while answered < BATCH {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    seen(text.as_bytes());
                    // The old dispatcher handed over each response as its
                    // own Vec<u8>; tungstenite wants it as a String.
                    let text = String::from_utf8(RESPONSE.to_vec()).expect("RESPONSE is UTF-8");
                    match ws.write(Message::text(text)) {
                        Ok(()) => {}
                        // Buffered; the flush below sends it.
                        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        }
                        Err(e) => panic!("tungstenite write: {e}"),
                    }
                    answered += 1;
                }
                // The bytes are in flight, or the socket's short-read
                // shortcut answered without asking: try again.
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("tungstenite read: {other:?}"),
            }
        }
        ws.flush()
            .expect("a batch of answers fits the socket buffer");
    }
}

/// The message layer as it is.
struct Own(WebSocket);

impl Turn for Own {
    fn answer_batch(&mut self, mut seen: impl FnMut(&[u8])) {
        let ws = &mut self.0;
        let mut answered = 0;
        while answered < BATCH {
            match ws.read() {
                Event::Text => {
                    seen(ws.message());
                    ws.queue_text(RESPONSE);
                    answered += 1;
                }
                Event::WouldBlock => {}
                other => panic!("own framing read: {other:?}"),
            }
        }
        let sent = ws.flush().expect("flush");
        assert_eq!(
            sent,
            Flushed::All,
            "a batch of answers fits the socket buffer"
        );
    }
}

/// The server's end of a loopback connection (non-blocking, as a shard has
/// it) and the client's (blocking).
fn loopback() -> (Socket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    for stream in [&client, &server] {
        stream.set_nodelay(true).expect("nodelay");
    }
    server.set_nonblocking(true).expect("non-blocking");
    (Socket::new(mio::net::TcpStream::from_std(server)), client)
}

/// One client text frame, masked (RFC 6455 §5.2, §5.3).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "one-byte length only");
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// What the client should read back for one batch: unmasked server frames.
fn expected_answers() -> Vec<u8> {
    assert!(RESPONSE.len() < 126, "one-byte length only");
    let mut frame = vec![0x81, RESPONSE.len() as u8];
    frame.extend_from_slice(RESPONSE);
    frame.repeat(BATCH)
}

/// Runs one turn and checks every byte both ways, before any timing.
fn check(server: &mut impl Turn, client: &mut TcpStream, requests: &[u8], name: &str) {
    client.write_all(requests).expect("client write");
    let mut received = Vec::new();
    server.answer_batch(|message| received.push(message.to_vec()));
    assert_eq!(received.len(), BATCH, "{name}");
    assert!(
        received.iter().all(|m| m == REQUEST),
        "{name} decoded wrong bytes"
    );
    let expected = expected_answers();
    let mut answers = vec![0u8; expected.len()];
    client.read_exact(&mut answers).expect("client read");
    assert!(answers == expected, "{name} sent wrong bytes");
}

/// Times the server side of one turn per iteration; the client's write
/// before it and read after it are left out of the time.
fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    server: &mut impl Turn,
    client: &mut TcpStream,
    requests: &[u8],
) {
    let mut answers = vec![0u8; expected_answers().len()];
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                client.write_all(requests).expect("client write");
                let start = Instant::now();
                server.answer_batch(|message| {
                    black_box(message);
                });
                spent += start.elapsed();
                client.read_exact(&mut answers).expect("client read");
            }
            spent
        })
    });
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(BATCH as u64));
    let requests = masked_text(REQUEST).repeat(BATCH);

    let (socket, mut client) = loopback();
    // As the server had it before: small read buffer, room for a turn's
    // answers, the payload limit on messages and frames alike.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(256 * 1024)
        .max_message_size(Some(DEFAULT_MAX_PAYLOAD))
        .max_frame_size(Some(DEFAULT_MAX_PAYLOAD));
    let mut before = Tungstenite(tungstenite::WebSocket::from_partially_read(
        socket,
        Vec::new(),
        Role::Server,
        Some(config),
    ));
    let name = "tungstenite WebSocket (before)";
    check(&mut before, &mut client, &requests, name);
    bench(&mut group, name, &mut before, &mut client, &requests);

    let (socket, mut client) = loopback();
    let mut after = Own(WebSocket::new(socket, &[], DEFAULT_MAX_PAYLOAD, 1 << 20));
    let name = "own framing (after)";
    check(&mut after, &mut client, &requests, name);
    bench(&mut group, name, &mut after, &mut client, &requests);

    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
