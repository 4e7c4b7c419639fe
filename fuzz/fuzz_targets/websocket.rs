//! The WebSocket layer and the connection state machine (opening handshake,
//! framing, fragments, control frames, closing, backpressure) under
//! arbitrary client bytes, delivered in arbitrary read chunks through the
//! in-memory transport. Every message goes to a `LocalDispatcher`, as a
//! one-shard server would run it, and its response back to the connection.
//!
//! Input layout (see fuzz/README.md):
//! - byte 0, bits 0-2: how many chunk sizes follow, minus one;
//!   bit 3: the client ends its stream after its bytes;
//!   bit 4: a valid upgrade request goes before the client's bytes;
//!   bits 5-7: bytes the client reads per turn: 0 = all, k = 8 << k.
//! - then the chunk sizes, one byte each (b -> b + 1 bytes), used in turn;
//! - the rest is what the client sends.
//!
//! Checked: no panic; the output is nothing, an HTTP 400, or a 101 followed
//! by well-formed server frames (unmasked, final, no reserved bits; text,
//! pong or close only); the text frames are exactly the responses, in
//! order; a close frame is the last thing sent.

#![no_main]

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use nemesisdb::net::connection::{Connection, Incoming, Limits, Permit, ReadOutcome};
use nemesisdb::net::memory::MemoryTransport;
use nemesisdb::router::LocalDispatcher;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
/// Messages read per turn before the output is flushed, as a shard's budget.
const READ_BUDGET: usize = 256;
/// Turns without the client's input or our output moving end the run;
/// this many in all end it too (then only the frames sent are checked).
const MAX_TURNS: usize = 200_000;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let sizes = usize::from(control & 0x07) + 1;
    if rest.len() < sizes {
        return;
    }
    let (sizes, client) = rest.split_at(sizes);
    let chunks: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();
    let mut input = Vec::new();
    if control & 0x10 != 0 {
        input.extend_from_slice(UPGRADE);
    }
    input.extend_from_slice(client);
    let room = match control >> 5 {
        0 => None,
        k => Some(8usize << k),
    };

    let transport = MemoryTransport::new(&input, &chunks);
    if control & 0x08 != 0 {
        transport.end_input();
    }
    // A small output limit and payload limit, so backpressure and the
    // size checks are within a fuzzer's reach.
    let limits = Limits {
        max_payload: 2048,
        max_output_buffer: 512,
        output_stall_timeout: std::time::Duration::from_secs(30),
    };
    let count = Arc::new(AtomicUsize::new(0));
    let permit = Permit::acquire(&count, 1).expect("one place");
    // The clock stands still: timeouts are unit-tested with a manual clock.
    let now = Instant::now();
    let mut conn = Connection::over(transport.clone(), 1, limits, permit, now);
    let mut dispatcher = LocalDispatcher::new(1);
    let mut responses: Vec<Vec<u8>> = Vec::new();

    let mut finished = false;
    for _ in 0..MAX_TURNS {
        // The handshake's response is written in one go, as to a fresh
        // socket; the client's reading pace applies after it.
        transport.set_write_room(if conn.is_handshaking() { None } else { room });
        let before = (transport.bytes_read(), transport.output_len());
        for _ in 0..READ_BUDGET {
            if !conn.wants_input() {
                break;
            }
            match conn.read(now) {
                ReadOutcome::Message(incoming) => {
                    let seq = conn.next_request();
                    let response = match incoming {
                        Incoming::Text => dispatcher.handle(conn.message(), true),
                        Incoming::Binary => dispatcher.handle(conn.message(), false),
                        // What the shard answers it with: status 3.
                        Incoming::InvalidUtf8 => dispatcher.handle(b"\xff", true),
                    };
                    responses.push(response.clone());
                    conn.respond(seq, response, now);
                }
                ReadOutcome::Busy => {}
                ReadOutcome::WouldBlock | ReadOutcome::Closed | ReadOutcome::Http(_) => break,
            }
        }
        if conn.needs_flush() {
            conn.flush(now);
        }
        let after = (transport.bytes_read(), transport.output_len());
        if conn.is_closed() || (after == before && transport.input_read()) {
            finished = true;
            break;
        }
    }
    check_output(&transport.output(), &responses, finished);
}

/// The output is nothing, a 400, or a 101 and then server frames carrying
/// exactly `responses` (all of them when the run `finished`).
fn check_output(output: &[u8], responses: &[Vec<u8>], finished: bool) {
    let head_end = output.windows(4).position(|w| w == b"\r\n\r\n");
    if !output.starts_with(b"HTTP/1.1 101 ") {
        assert!(responses.is_empty(), "messages answered without an upgrade");
        if !output.is_empty() {
            assert!(output.starts_with(b"HTTP/1.1 400 "), "{output:?}");
            assert_eq!(head_end, Some(output.len() - 4), "bytes after a 400");
        }
        return;
    }
    let head_end = head_end.expect("the 101 is whole") + 4;
    let head = std::str::from_utf8(&output[..head_end]).expect("the 101 is ASCII");
    assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nSec-WebSocket-Accept: "), "{head}");

    let mut cursor = Cursor::new(&output[head_end..]);
    let mut texts = 0;
    let mut closed = false;
    loop {
        let at = cursor.position() as usize;
        if at == cursor.get_ref().len() {
            break;
        }
        assert!(!closed, "bytes after our close frame");
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => panic!("a frame cut short at byte {at} of the frames"),
            Err(e) => panic!("a frame header we cannot parse: {e}"),
        };
        assert!(header.mask.is_none(), "a masked server frame");
        assert!(header.is_final, "a fragmented server frame");
        assert!(
            !(header.rsv1 || header.rsv2 || header.rsv3),
            "reserved bits"
        );
        let start = cursor.position() as usize;
        let end = start + usize::try_from(length).expect("a length that fits");
        assert!(end <= cursor.get_ref().len(), "a frame cut short");
        let payload = &cursor.get_ref()[start..end];
        match header.opcode {
            OpCode::Data(Data::Text) => {
                let expected = responses.get(texts).expect("more answers than messages");
                assert_eq!(payload, &expected[..], "answer {texts} out of order");
                texts += 1;
            }
            OpCode::Control(Control::Pong) => assert!(payload.len() <= 125),
            OpCode::Control(Control::Close) => {
                assert!((2..=125).contains(&payload.len()), "close body {payload:?}");
                closed = true;
            }
            other => panic!("the server sent a {other:?} frame"),
        }
        cursor.set_position(end as u64);
    }
    if finished {
        assert_eq!(texts, responses.len(), "answers missing");
    }
}
