//! nemesisdb: an in-memory session store that speaks the NemesisDB protocol
//! (JSON commands over WebSocket), built thread-per-core.
//!
//! # Layout
//! - [`config`]: flags + JSONC file -> validated [`config::Config`].
//! - [`server`]: binds, builds the mesh, spawns and pins shard threads, stops them.
//! - [`shard`]: one thread's event loop: its connections, its sessions, its inbox; also
//!   [`shard::LocalDispatcher`], requests run as one shard runs them (fuzzing, property tests).
//! - [`mesh`]: per-shard mailboxes and the messages shards exchange; token -> shard.
//! - [`net`]: listeners (SO_REUSEPORT), the WebSocket handshake, the connection state machine.
//! - [`persist`]: snapshot files and dataset versions (format, writer, loader).
//! - [`protocol`]: the wire format only: request decoding, response encoding, statuses.
//! - [`expiry`]: the per-shard hashed timing wheel (no clock reads inside).
//! - [`store`]: one shard's sessions and keys: lazy and background expiry, snapshots, memory accounting.
//! - [`shared_names`]: the server-wide map of shared session names.

pub mod config;
pub mod domain;
pub mod expiry;
pub mod mesh;
pub mod net;
pub mod persist;
pub mod protocol;
pub mod router;
pub mod server;
pub mod shard;
pub mod shared_names;
pub mod store;
