//! Network plumbing below the protocol: listening sockets, the WebSocket
//! opening handshake, and the per-connection state machine.

pub mod connection;
pub mod handshake;
pub mod listener;
pub mod socket;
pub mod websocket;
