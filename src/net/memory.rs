//! An in-memory [`Transport`] for tests and fuzzing: the client's bytes are
//! scripted and delivered in chunks of chosen sizes, with a `WouldBlock`
//! between chunks (as a non-blocking socket between two arrivals); what the
//! server writes is captured, optionally only as much as the client is
//! willing to read.
//!
//! It is the test's end of the pipe, not a model of TCP: no clock, no
//! threads, no sockets. Clones share one pipe, so a test keeps a clone to
//! script input and read output while the connection owns the other.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;

use super::transport::{Traffic, Transport};

#[derive(Clone, Default)]
pub struct MemoryTransport(Rc<RefCell<Pipe>>);

#[derive(Default)]
struct Pipe {
    /// Everything the client sends; `input[read..]` has not been read yet.
    input: Vec<u8>,
    read: usize,
    /// Sizes of the chunks the input arrives in, used in turn and again
    /// from the start; empty: all of it in one chunk.
    chunks: Vec<usize>,
    next_chunk: usize,
    /// Bytes of the current chunk not read yet.
    chunk_left: usize,
    /// A chunk was read to its end: the next read finds nothing.
    between_chunks: bool,
    /// After the input, the client ends its stream (reads give `Ok(0)`);
    /// otherwise it stays connected and silent (`WouldBlock`).
    ends: bool,
    /// Everything the server wrote.
    output: Vec<u8>,
    /// Bytes the client will still read; None: no limit.
    write_room: Option<usize>,
    write_shut: bool,
    peer_closed_hint: bool,
}

impl MemoryTransport {
    /// A client that sends `input` in chunks of `chunks` bytes (in turn,
    /// cycling; a size of 0 counts as 1; empty: one chunk) and then stays
    /// silent.
    pub fn new(input: &[u8], chunks: &[usize]) -> Self {
        let transport = MemoryTransport::default();
        {
            let mut pipe = transport.0.borrow_mut();
            pipe.input = input.to_vec();
            pipe.chunks = chunks.iter().map(|&size| size.max(1)).collect();
        }
        transport
    }

    /// More bytes from the client, after what it sent so far.
    pub fn send(&self, bytes: &[u8]) {
        self.0.borrow_mut().input.extend_from_slice(bytes);
    }

    /// The client ends its stream once its input is read.
    pub fn end_input(&self) {
        self.0.borrow_mut().ends = true;
    }

    /// Whether the server has read every byte the client sent.
    pub fn input_read(&self) -> bool {
        let pipe = self.0.borrow();
        pipe.read == pipe.input.len()
    }

    /// How many of the client's bytes the server has read.
    pub fn bytes_read(&self) -> usize {
        self.0.borrow().read
    }

    /// Limits what the server may write from now on to `bytes` more (a
    /// client that reads slowly, or with 0 not at all); None lifts it.
    pub fn set_write_room(&self, bytes: Option<usize>) {
        self.0.borrow_mut().write_room = bytes;
    }

    /// Everything the server has written so far.
    pub fn output(&self) -> Vec<u8> {
        self.0.borrow().output.clone()
    }

    pub fn output_len(&self) -> usize {
        self.0.borrow().output.len()
    }

    /// Whether the server has shut its writing side.
    pub fn write_shut(&self) -> bool {
        self.0.borrow().write_shut
    }

    /// Whether the server was told the peer closed its side.
    pub fn told_peer_closed(&self) -> bool {
        self.0.borrow().peer_closed_hint
    }
}

impl Read for MemoryTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pipe = self.0.borrow_mut();
        if buf.is_empty() {
            return Ok(0);
        }
        if pipe.chunk_left == 0 {
            if std::mem::take(&mut pipe.between_chunks) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let left = pipe.input.len() - pipe.read;
            if left == 0 {
                return if pipe.ends {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let size = match pipe.chunks.get(pipe.next_chunk) {
                Some(&size) => size,
                None => left,
            };
            pipe.next_chunk = (pipe.next_chunk + 1) % pipe.chunks.len().max(1);
            pipe.chunk_left = size.min(left);
        }
        let n = buf.len().min(pipe.chunk_left);
        let start = pipe.read;
        buf[..n].copy_from_slice(&pipe.input[start..start + n]);
        pipe.read += n;
        pipe.chunk_left -= n;
        pipe.between_chunks = pipe.chunk_left == 0;
        Ok(n)
    }
}

impl Write for MemoryTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pipe = self.0.borrow_mut();
        if pipe.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(pipe.write_room.unwrap_or(usize::MAX));
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(room) = &mut pipe.write_room {
            *room -= n;
        }
        pipe.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for MemoryTransport {
    fn peer_closed(&mut self) {
        self.0.borrow_mut().peer_closed_hint = true;
    }

    // Scripted input needs no hint: every read asks the script.
    fn readiness(&mut self) {}

    // Scripted transports are not measured.
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.0.borrow_mut().write_shut = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_comes_in_its_chunks_with_a_would_block_between() {
        let mut transport = MemoryTransport::new(b"abcdefg", &[3, 1]);
        let mut buf = [0u8; 2];
        let mut got = Vec::new();
        loop {
            match transport.read(&mut buf) {
                Ok(n) => got.push(Ok(buf[..n].to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && transport.input_read() => break,
                Err(e) => got.push(Err(e.kind())),
            }
        }
        let block = Err(io::ErrorKind::WouldBlock);
        let bytes = |b: &[u8]| Ok(b.to_vec());
        // A chunk of 3 read into 2 bytes of room takes two reads.
        let expected = vec![
            bytes(b"ab"),
            bytes(b"c"),
            block.clone(),
            bytes(b"d"),
            block.clone(),
            bytes(b"ef"),
            bytes(b"g"),
        ];
        assert_eq!(got, expected);
        transport.end_input();
        assert_eq!(transport.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn writes_stop_at_the_room_the_client_gives() {
        let mut transport = MemoryTransport::default();
        transport.set_write_room(Some(3));
        assert_eq!(transport.write(b"hello").unwrap(), 3);
        assert_eq!(
            transport.write(b"lo").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        transport.set_write_room(None);
        transport.write_all(b"lo").unwrap();
        assert_eq!(transport.output(), b"hello");
        transport.shutdown(Shutdown::Write).unwrap();
        assert!(transport.write_shut());
        assert!(transport.write(b"x").is_err());
    }
}
