//! Network plumbing below the protocol: listening sockets, the WebSocket
//! opening handshake and framing (and the plain HTTP requests of the
//! server's endpoints), the per-connection state machine, the responder of
//! the start-up load (`loading`, the one part that blocks a thread of its
//! own),
//! over any [`transport::Transport`] (a TCP socket in production, scripted
//! bytes in memory for tests and fuzzing).
//!
//! Nothing here reads the clock: every method that needs the time takes
//! `now` from its caller, so timeouts are tested by moving a manual clock.

pub mod connection;
pub mod handshake;
pub mod listener;
pub mod loading;
pub mod memory;
pub mod socket;
pub mod transport;
pub mod websocket;
