//! Network plumbing below the protocol: listening sockets, the WebSocket
//! opening handshake and framing, and the per-connection state machine,
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
