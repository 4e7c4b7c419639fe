//! RFC 6455 framing for the server side of one connection, over buffers the
//! connection owns and reuses: frames are unmasked in place in the read
//! buffer, a message that fits in one frame is handed out as a slice of it,
//! and responses are framed straight into one output buffer that a single
//! `write` per turn sends.
//!
//! Frame headers are parsed and written by tungstenite's `FrameHeader`; what
//! lives here is the buffering and the rules of the exchange (masking,
//! fragmentation, control frames, the closing handshake, size limits).
//! tungstenite's own `WebSocket` allocated a `Bytes` per frame, validated
//! every outgoing message as UTF-8 and copied it twice on the way out: at
//! one small request per message that was a fifth of the server's CPU time.
//!
//! It reads and writes through a [`Transport`] and never reads the clock.

use std::io::{self, Cursor};
use std::ops::Range;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::socket::Socket;
use super::transport::Transport;

/// Read buffer of an idle connection; it grows for a bigger frame (up to
/// the payload limit) and shrinks back once that frame is consumed.
const READ_BUFFER: usize = 4 * 1024;
/// Buffers above this are given back once empty.
const KEEP_AT_MOST: usize = 64 * 1024;
/// The longest frame header (64-bit length and a mask).
const MAX_HEADER: usize = 14;
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// Frames one `read` takes without completing a message (pings, empty
/// fragments) before it returns, so a flood of them cannot hold the shard.
const FRAMES_PER_READ: usize = 32;
/// Reads one `discard_input` makes before it returns, for the same reason.
const DISCARDS_PER_CALL: usize = 16;

/// What one call to [`WebSocket::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message: its bytes are [`WebSocket::message`]. Valid
    /// UTF-8 if it came in fragments; a single frame is not checked here.
    Text,
    /// A whole binary message (its bytes are not kept).
    Binary,
    /// A fragmented text message that is not UTF-8 (RFC 6455 §8.1 then
    /// asks for the connection to fail).
    InvalidUtf8,
    /// The peer sent a close frame: answer with ours, echoing its code
    /// (1000 when it gave none), after the answers already due.
    PeerClosed(CloseCode),
    /// Nothing more until the socket is readable again.
    WouldBlock,
    /// Frames were taken but no message is whole yet; more may be waiting:
    /// call again (after others had their turn).
    Busy,
    /// The peer ended the stream (or it failed) without a closing handshake.
    Eof,
    /// The peer broke the protocol or a limit: close with this code.
    Fail(CloseCode, &'static str),
}

/// What [`WebSocket::flush`] managed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Flushed {
    /// Everything queued is sent.
    All,
    /// The transport took what it could; the rest waits for it to be
    /// writable again.
    Partly,
}

/// Writes `out[sent..]` to a non-blocking transport, as far as it takes it
/// (the WebSocket's output, or an HTTP endpoint's answer).
pub fn write_from<T: Transport>(
    transport: &mut T,
    out: &[u8],
    sent: &mut usize,
) -> io::Result<Flushed> {
    while *sent < out.len() {
        match transport.write(&out[*sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partly),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // What the transport took may still be in it (TLS records).
    loop {
        match transport.flush() {
            Ok(()) => return Ok(Flushed::All),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partly),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What one call to [`WebSocket::discard_input`] found.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Discarded {
    /// The peer ended its stream.
    PeerEnded,
    /// Input was dropped and more may be waiting: call again (after
    /// others had their turn).
    MoreMayCome,
    /// Nothing to read for now.
    WouldBlock,
}

/// What taking one frame off the read buffer came to.
enum Frame {
    /// The buffer holds no whole frame: read more bytes.
    Incomplete,
    /// A frame was consumed with nothing to report (a fragment, a ping, a
    /// pong): there may be more frames in the buffer.
    Consumed,
    /// A frame completed a message, closed the exchange or broke a rule.
    Report(Event),
}

/// Where the last message's bytes are.
enum Held {
    None,
    /// In the read buffer, unmasked.
    InBuffer(Range<usize>),
    /// Joined from fragments.
    Assembled,
}

/// The server side of one WebSocket connection, after the opening
/// handshake, over a transport `T` (a client's TCP socket unless said).
pub struct WebSocket<T: Transport = Socket> {
    transport: T,
    max_payload: usize,
    /// Output beyond which pings go unanswered (RFC 6455 §5.5.3 lets a
    /// pong answer only the latest ping): a client that floods pings and
    /// reads nothing cannot grow it.
    max_output: usize,
    /// `input[start..end]` is received and not yet consumed; the rest of
    /// `input` is zeroed room to read into (kept initialised so reading
    /// never zeroes it again).
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being received: its opcode and payload so far.
    fragments: Option<(Data, Vec<u8>)>,
    assembled: Vec<u8>,
    held: Held,
    /// Framed output; `output[written..]` is still to be sent.
    output: Vec<u8>,
    written: usize,
    /// Our close frame is queued: no more data frames.
    close_sent: bool,
}

impl<T: Transport> WebSocket<T> {
    /// Wraps a transport whose opening handshake is done; `already_read`
    /// is what arrived after the handshake's request head.
    pub fn new(transport: T, already_read: &[u8], max_payload: usize, max_output: usize) -> Self {
        let mut input = vec![0u8; READ_BUFFER.max(already_read.len())];
        input[..already_read.len()].copy_from_slice(already_read);
        WebSocket {
            transport,
            max_payload,
            max_output,
            input,
            start: 0,
            end: already_read.len(),
            fragments: None,
            assembled: Vec::new(),
            held: Held::None,
            output: Vec::new(),
            written: 0,
            close_sent: false,
        }
    }

    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn transport_ref(&self) -> &T {
        &self.transport
    }

    /// The message the last [`Event::Text`] announced; valid until the
    /// next `read`.
    pub fn message(&self) -> &[u8] {
        match &self.held {
            Held::None => &[],
            Held::InBuffer(range) => &self.input[range.clone()],
            Held::Assembled => &self.assembled,
        }
    }

    /// Reads until a whole message, a close, or nothing more to read.
    /// Pings are answered (the pong is queued with the output).
    pub fn read(&mut self) -> Event {
        self.held = Held::None;
        if self.fragments.is_none() && self.assembled.capacity() > KEEP_AT_MOST {
            self.assembled = Vec::new();
        }
        let mut frames = 0;
        loop {
            match self.next_frame() {
                Frame::Report(event) => return event,
                Frame::Consumed => {
                    frames += 1;
                    if frames == FRAMES_PER_READ {
                        return Event::Busy;
                    }
                    continue;
                }
                Frame::Incomplete => {}
            }
            if let Some(event) = self.fill() {
                return event;
            }
        }
    }

    /// Takes one complete frame off the buffer, if there is one.
    fn next_frame(&mut self) -> Frame {
        let mut cursor = Cursor::new(&self.input[self.start..self.end]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Frame::Incomplete,
            Err(_) => return fail(CloseCode::Protocol, "reserved opcode"),
        };
        let header_len = cursor.position() as usize;
        let Some(mask) = header.mask else {
            return fail(CloseCode::Protocol, "client frames must be masked");
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return fail(CloseCode::Protocol, "reserved bits set");
        }
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control && (!header.is_final || length > MAX_CONTROL_PAYLOAD) {
            return fail(CloseCode::Protocol, "control frame too long or fragmented");
        }
        let so_far = self.fragments.as_ref().map_or(0, |(_, bytes)| bytes.len());
        if !is_control && length > (self.max_payload - so_far.min(self.max_payload)) as u64 {
            return fail(CloseCode::Size, "message too big");
        }
        let length = length as usize;
        let payload_start = self.start + header_len;
        if self.end - payload_start < length {
            return Frame::Incomplete;
        }
        let payload = payload_start..payload_start + length;
        unmask(&mut self.input[payload.clone()], mask);
        self.start = payload.end;

        match header.opcode {
            OpCode::Data(Data::Continue) => {
                let Some((data, mut bytes)) = self.fragments.take() else {
                    return fail(CloseCode::Protocol, "continuation of nothing");
                };
                bytes.extend_from_slice(&self.input[payload]);
                if !header.is_final {
                    self.fragments = Some((data, bytes));
                    return Frame::Consumed;
                }
                self.assembled = bytes;
                self.held = Held::Assembled;
                Frame::Report(self.whole_message(data, true))
            }
            OpCode::Data(data) => {
                if self.fragments.is_some() {
                    return fail(CloseCode::Protocol, "new message inside a fragmented one");
                }
                if header.is_final {
                    self.held = Held::InBuffer(payload);
                    return Frame::Report(self.whole_message(data, false));
                }
                let mut bytes = std::mem::take(&mut self.assembled);
                bytes.clear();
                bytes.extend_from_slice(&self.input[payload]);
                self.fragments = Some((data, bytes));
                Frame::Consumed
            }
            OpCode::Control(Control::Ping) => {
                if !self.close_sent && self.unsent() < self.max_output {
                    let pong = OpCode::Control(Control::Pong);
                    frame_into(&mut self.output, pong, &self.input[payload]);
                }
                Frame::Consumed
            }
            OpCode::Control(Control::Pong) => Frame::Consumed,
            OpCode::Control(Control::Close) => Frame::Report(self.peer_close(payload)),
            OpCode::Control(Control::Reserved(_)) => fail(CloseCode::Protocol, "reserved opcode"),
        }
    }

    fn whole_message(&mut self, data: Data, fragmented: bool) -> Event {
        if data != Data::Text {
            self.held = Held::None;
            return Event::Binary;
        }
        // A one-frame message is left to the request parser, whose first
        // pass checks every byte anyway and answers a bad one with the
        // same status 3. A fragmented one is checked here: it must also
        // end the connection (RFC 6455 §8.1).
        if fragmented && std::str::from_utf8(self.message()).is_err() {
            self.held = Held::None;
            return Event::InvalidUtf8;
        }
        Event::Text
    }

    /// A close frame from the peer, checked (RFC 6455 §5.5.1, §7.4):
    /// [`Event::PeerClosed`], or [`Event::Fail`] when it breaks the rules.
    fn peer_close(&self, payload: Range<usize>) -> Event {
        let body = &self.input[payload];
        let code = match body.len() {
            0 => CloseCode::Normal,
            1 => return Event::Fail(CloseCode::Protocol, "close frame of one byte"),
            _ => {
                let code = CloseCode::from(u16::from_be_bytes([body[0], body[1]]));
                if !code.is_allowed() {
                    return Event::Fail(CloseCode::Protocol, "close code not allowed");
                }
                if std::str::from_utf8(&body[2..]).is_err() {
                    return Event::Fail(CloseCode::Invalid, "close reason is not UTF-8");
                }
                code
            }
        };
        Event::PeerClosed(code)
    }

    /// Reads more bytes; Some(event) when there are none to be had.
    fn fill(&mut self) -> Option<Event> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.input.len() > KEEP_AT_MOST {
                self.input = vec![0u8; READ_BUFFER];
            }
        }
        if self.end == self.input.len() {
            self.make_room();
        }
        match self.transport.read(&mut self.input[self.end..]) {
            Ok(0) => Some(Event::Eof),
            Ok(n) => {
                self.end += n;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(Event::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(_) => Some(Event::Eof),
        }
    }

    /// The buffer is full with an incomplete frame: move it to the front,
    /// and grow the buffer if the frame is bigger than it (next_frame has
    /// already refused frames over the payload limit).
    fn make_room(&mut self) {
        let pending = self.end - self.start;
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        if self.end == self.input.len() {
            let wanted = (self.input.len() * 2).min(self.max_payload + MAX_HEADER);
            let wanted = wanted.max(self.input.len() + MAX_HEADER);
            self.input.resize(wanted, 0);
        }
    }

    /// Frames a text message into the output; nothing after our close.
    pub fn queue_text(&mut self, payload: &[u8]) {
        if !self.close_sent {
            self.queue_frame(OpCode::Data(Data::Text), payload);
        }
    }

    /// Queues our close frame; nothing is queued after it.
    pub fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if self.close_sent {
            return;
        }
        let mut body = Vec::with_capacity(2 + reason.len());
        body.extend_from_slice(&u16::from(code).to_be_bytes());
        body.extend_from_slice(reason.as_bytes());
        self.queue_frame(OpCode::Control(Control::Close), &body);
        self.close_sent = true;
    }

    fn queue_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        frame_into(&mut self.output, opcode, payload);
    }

    /// Bytes queued and not yet sent.
    pub fn unsent(&self) -> usize {
        self.output.len() - self.written
    }

    /// Writes what is queued, until it is all sent or the transport is
    /// full (a writable event brings us back). An error is fatal.
    pub fn flush(&mut self) -> io::Result<Flushed> {
        if let Flushed::Partly = write_from(&mut self.transport, &self.output, &mut self.written)? {
            return Ok(Flushed::Partly);
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > KEEP_AT_MOST {
            self.output = Vec::new();
        }
        Ok(Flushed::All)
    }

    /// Reads and drops what arrives (a closing connection), a bounded
    /// number of reads per call. An error is fatal.
    pub fn discard_input(&mut self) -> io::Result<Discarded> {
        self.start = 0;
        self.end = 0;
        for _ in 0..DISCARDS_PER_CALL {
            match self.transport.read(&mut self.input) {
                Ok(0) => return Ok(Discarded::PeerEnded),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Discarded::WouldBlock);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Discarded::MoreMayCome)
    }
}

/// A frame that breaks the protocol or a limit: the connection fails.
fn fail(code: CloseCode, why: &'static str) -> Frame {
    Frame::Report(Event::Fail(code, why))
}

/// Appends one unmasked, final frame (server frames are never masked).
fn frame_into(output: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    // Writing to a Vec cannot fail.
    let _ = header.format(payload.len() as u64, output);
    output.extend_from_slice(payload);
}

/// XORs a client's masking key over a payload (RFC 6455 §5.3), eight bytes
/// at a time. tungstenite has its own but does not export it.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::net::memory::MemoryTransport;
    use proptest::prelude::*;

    /// One client frame, masked (RFC 6455 §5.2, §5.3).
    pub(crate) fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0xa1, 0x07, 0x5c, 0xee];
        let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// A server-side WebSocket over loopback and the client's end.
    fn pair(max_payload: usize) -> (WebSocket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let socket = Socket::new(mio::net::TcpStream::from_std(server));
        (WebSocket::new(socket, &[], max_payload, 1 << 20), client)
    }

    /// Reads until something other than WouldBlock (the bytes are in flight).
    fn next(ws: &mut WebSocket) -> Event {
        for _ in 0..1000 {
            match ws.read() {
                Event::WouldBlock => std::thread::sleep(std::time::Duration::from_millis(2)),
                event => return event,
            }
        }
        panic!("nothing arrived");
    }

    #[test]
    fn unmask_matches_the_rfc_for_every_length() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut bytes = plain.clone();
            unmask(&mut bytes, mask);
            let expected: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(bytes, expected, "length {len}");
        }
    }

    #[test]
    fn messages_come_whole_across_reads_and_fragments() {
        use std::io::Write as _;
        let (mut ws, mut client) = pair(1 << 20);
        // Two messages in one write, then a third split with a ping inside.
        let mut bytes = masked(0x1, true, b"first");
        bytes.extend(masked(0x1, true, b"second"));
        bytes.extend(masked(0x1, false, b"thi"));
        bytes.extend(masked(0x9, true, b"ping!"));
        bytes.extend(masked(0x0, true, b"rd"));
        client.write_all(&bytes).unwrap();
        for expected in [&b"first"[..], b"second", b"third"] {
            assert_eq!(next(&mut ws), Event::Text);
            assert_eq!(ws.message(), expected);
        }
        // The pong went into the output, unmasked.
        let mut pong = vec![0x8a, 5];
        pong.extend_from_slice(b"ping!");
        assert_eq!(ws.unsent(), pong.len());
        assert_eq!(&ws.output[..], &pong[..]);
    }

    #[test]
    fn a_frame_bigger_than_the_buffer_grows_it_then_it_shrinks_back() {
        use std::io::Write as _;
        let (mut ws, mut client) = pair(1 << 20);
        let big = vec![b'x'; 200_000];
        let writer = std::thread::spawn(move || {
            client.write_all(&masked(0x1, true, &big)).unwrap();
            client.write_all(&masked(0x1, true, b"small")).unwrap();
            client
        });
        assert_eq!(next(&mut ws), Event::Text);
        assert_eq!(ws.message().len(), 200_000);
        assert!(ws.message().iter().all(|&b| b == b'x'));
        let _client = writer.join().unwrap();
        assert_eq!(next(&mut ws), Event::Text);
        assert_eq!(ws.message(), b"small");
        assert_eq!(ws.read(), Event::WouldBlock);
        assert_eq!(ws.input.len(), READ_BUFFER);
    }

    #[test]
    fn rule_breaches_and_limits_fail_with_their_codes() {
        use std::io::Write as _;
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            // Unmasked.
            (vec![0x81, 0x01, b'x'], CloseCode::Protocol),
            // Over the payload limit of 16 (refused on the header alone).
            (vec![0x81, 0x80 | 17, 0, 0, 0, 0], CloseCode::Size),
            // A fragmented message over the limit in total.
            (
                [
                    masked(0x1, false, &[b'a'; 10]),
                    masked(0x0, true, &[b'b'; 7]),
                ]
                .concat(),
                CloseCode::Size,
            ),
            // A text frame inside a fragmented message.
            (
                [masked(0x1, false, b"a"), masked(0x1, true, b"b")].concat(),
                CloseCode::Protocol,
            ),
            // A close frame with a code nobody may send.
            (masked(0x8, true, &[0x03, 0xed]), CloseCode::Protocol),
        ];
        for (bytes, code) in cases {
            let (mut ws, mut client) = pair(16);
            client.write_all(&bytes).unwrap();
            match next(&mut ws) {
                Event::Fail(got, _) => assert_eq!(got, code, "{bytes:x?}"),
                other => panic!("{bytes:x?}: {other:?}"),
            }
        }
        // A peer's close is echoed with its code; an empty one with 1000.
        let (mut ws, mut client) = pair(16);
        client
            .write_all(&masked(0x8, true, &[0x03, 0xe9, b'b', b'y']))
            .unwrap();
        assert_eq!(next(&mut ws), Event::PeerClosed(CloseCode::Away));
        let (mut ws, mut client) = pair(16);
        client.write_all(&masked(0x8, true, &[])).unwrap();
        assert_eq!(next(&mut ws), Event::PeerClosed(CloseCode::Normal));
    }

    /// Pings and empty fragments are frames without a message: a flood of
    /// them returns control every few frames instead of holding the shard,
    /// and pongs stop once the output is over its limit.
    #[test]
    fn floods_of_frames_without_messages_are_bounded() {
        use std::io::Write as _;
        let (mut ws, mut client) = pair(1 << 20);
        ws.max_output = 100;
        let mut bytes = masked(0x1, false, b"{");
        for _ in 0..100 {
            bytes.extend(masked(0x0, false, b""));
            bytes.extend(masked(0x9, true, &[b'p'; 20]));
        }
        bytes.extend(masked(0x0, true, b"}"));
        client.write_all(&bytes).unwrap();
        let mut busy = 0;
        loop {
            match next(&mut ws) {
                Event::Busy => busy += 1,
                Event::Text => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ws.message(), b"{}");
        assert!(busy >= 200 / FRAMES_PER_READ, "returned {busy} times");
        // Pongs stopped at the limit: the last one queued crossed it.
        assert!(ws.unsent() < 100 + 22, "{} bytes of pongs", ws.unsent());
    }

    #[test]
    fn a_big_fragmented_message_does_not_pin_its_buffer() {
        use std::io::Write as _;
        let (mut ws, mut client) = pair(1 << 20);
        let half = vec![b'x'; 100_000];
        let writer = std::thread::spawn(move || {
            client.write_all(&masked(0x1, false, &half)).unwrap();
            client.write_all(&masked(0x0, true, &half)).unwrap();
            client
        });
        loop {
            match next(&mut ws) {
                Event::Busy => continue,
                Event::Text => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ws.message().len(), 200_000);
        let _client = writer.join().unwrap();
        assert_eq!(ws.read(), Event::WouldBlock);
        assert!(ws.assembled.capacity() <= KEEP_AT_MOST);
    }

    #[test]
    fn nothing_is_framed_after_our_close() {
        let (mut ws, _client) = pair(16);
        ws.queue_text(b"answer");
        ws.queue_close(CloseCode::Size, "too big");
        let queued = ws.unsent();
        ws.queue_text(b"late");
        assert_eq!(ws.unsent(), queued);
        assert_eq!(&ws.output[..8], b"\x81\x06answer");
        assert_eq!(&ws.output[8..], b"\x88\x09\x03\xf1too big");
    }

    /// One message of a generated client stream.
    #[derive(Clone, Debug)]
    enum Sent {
        /// Text in fragments (one fragment: a single frame); `control`
        /// goes after each fragment but the last (ping or pong).
        Text {
            payload: Vec<u8>,
            cuts: Vec<usize>,
            control: Option<(u8, Vec<u8>)>,
        },
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
    }

    impl Sent {
        fn frames(&self, into: &mut Vec<u8>) {
            match self {
                Sent::Text {
                    payload,
                    cuts,
                    control,
                } => {
                    let mut bounds: Vec<usize> =
                        cuts.iter().map(|c| c % (payload.len() + 1)).collect();
                    bounds.sort_unstable();
                    bounds.push(payload.len());
                    let mut start = 0;
                    for (i, &end) in bounds.iter().enumerate() {
                        let last = i + 1 == bounds.len();
                        let opcode = if i == 0 { 0x1 } else { 0x0 };
                        into.extend(masked(opcode, last, &payload[start..end]));
                        if let (false, Some((op, body))) = (last, control) {
                            into.extend(masked(*op, true, body));
                        }
                        start = end;
                    }
                }
                Sent::Binary(payload) => into.extend(masked(0x2, true, payload)),
                Sent::Ping(body) => into.extend(masked(0x9, true, body)),
                Sent::Pong(body) => into.extend(masked(0xA, true, body)),
            }
        }

        /// What the server reports for it, if anything.
        fn expected(&self) -> Option<(Event, Vec<u8>)> {
            match self {
                Sent::Text { payload, .. } => Some((Event::Text, payload.clone())),
                Sent::Binary(_) => Some((Event::Binary, Vec::new())),
                Sent::Ping(_) | Sent::Pong(_) => None,
            }
        }
    }

    /// Payload lengths around the frame-length encodings' edges, and small ones.
    fn length() -> impl Strategy<Value = usize> {
        prop_oneof![
            2 => 0usize..40,
            1 => prop::sample::select(vec![0usize, 1, 125, 126, 127, 65535, 65536]),
        ]
    }

    fn bytes(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<u8>> {
        (len, any::<u8>()).prop_map(|(len, seed)| {
            (0..len)
                .map(|i| b'a' + (seed as usize + i) as u8 % 26)
                .collect()
        })
    }

    fn control() -> impl Strategy<Value = (u8, Vec<u8>)> {
        (prop::sample::select(vec![0x9u8, 0xA]), bytes(0usize..=125))
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            4 => (bytes(length()), prop::collection::vec(any::<usize>(), 0..4), prop::option::of(control()))
                .prop_map(|(payload, cuts, control)| Sent::Text { payload, cuts, control }),
            1 => bytes(length()).prop_map(Sent::Binary),
            1 => bytes(0usize..=125).prop_map(Sent::Ping),
            1 => bytes(0usize..=125).prop_map(Sent::Pong),
        ]
    }

    /// Read chunk sizes: single bytes, small, or large.
    fn chunks() -> impl Strategy<Value = Vec<usize>> {
        prop_oneof![
            Just(vec![1]),
            prop::collection::vec(1usize..64, 1..8),
            prop::collection::vec(1usize..9000, 1..4),
        ]
    }

    /// Everything the server reports for `bytes` read in `chunks`, with the
    /// message bytes of each text, and what it wrote back.
    fn run(bytes: &[u8], chunks: &[usize]) -> (Vec<(Event, Vec<u8>)>, Vec<u8>) {
        let transport = MemoryTransport::new(bytes, chunks);
        let mut ws = WebSocket::new(transport.clone(), &[], 1 << 17, 1 << 20);
        let mut events = Vec::new();
        loop {
            match ws.read() {
                Event::Busy => {}
                Event::WouldBlock if transport.input_read() => break,
                Event::WouldBlock => {}
                Event::Text => events.push((Event::Text, ws.message().to_vec())),
                other => events.push((other, Vec::new())),
            }
        }
        assert_eq!(ws.flush().unwrap(), Flushed::All);
        (events, transport.output())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// However the stream is cut into reads, the same messages come out
        /// in the same order, and the same pongs go back.
        #[test]
        fn read_boundaries_change_nothing(
            stream in prop::collection::vec(sent(), 1..6),
            chunks in chunks(),
        ) {
            let mut bytes = Vec::new();
            for message in &stream {
                message.frames(&mut bytes);
            }
            let expected: Vec<_> = stream.iter().filter_map(Sent::expected).collect();
            let whole = run(&bytes, &[]);
            prop_assert_eq!(&whole.0, &expected);
            let cut = run(&bytes, &chunks);
            prop_assert_eq!(&cut.0, &whole.0);
            prop_assert_eq!(&cut.1, &whole.1);
        }
    }
}
