//! nemesisdb: an in-memory session store that speaks the NemesisDB protocol
//! (JSON commands over WebSocket), built thread-per-core.
//!
//! # Layout
//! - [`allocator`]: asks the global allocator (mimalloc) to give freed memory back.
//! - [`config`]: flags + JSONC file -> validated [`config::Config`].
//! - [`server`]: binds, builds the mesh, spawns and pins shard threads, stops them.
//! - [`shard`]: one thread's event loop: poll, accept, read, flush, timeouts, shutdown;
//!   it reads the clock once per turn and hands requests to its router.
//! - [`router`]: what a shard does with a request: decode, run here, forward to the
//!   owning shard, or fan out and gather; saves and loads. [`router::LocalDispatcher`]
//!   runs the same code for N shards in one thread (fuzzing, property tests).
//! - [`mesh`]: per-shard mailboxes and the messages shards exchange; token -> shard.
//! - [`net`]: listeners (SO_REUSEPORT), the WebSocket handshake and framing, the
//!   connection state machine, the HTTP endpoints' requests (`/healthz`, `/readyz`,
//!   `/metrics`) and the responder that answers them while start-up loads.
//! - [`metrics`]: the figures each shard counts (answers by command and status,
//!   their times, connections, expiry, snapshots, the change log) and their
//!   Prometheus exposition.
//! - [`security`]: TLS configuration from PEM files, users and their password
//!   checks, and the admission of each request by role; reloaded on SIGHUP.
//! - [`protocol`]: the wire format only: the command table, request decoding, every
//!   response body, statuses.
//! - [`domain`]: what a session is made of (token, keys, expiry settings), shared by
//!   the wire format, the store and the snapshot files.
//! - [`store`]: one shard's sessions and keys: lazy and background expiry, snapshots,
//!   memory accounting; `store::budget` is the server-wide `--max-memory` pool the
//!   shards borrow from.
//! - [`expiry`]: the per-shard hashed timing wheel (no clock reads inside).
//! - [`events`]: session events: the per-shard ring, filters, encoding, cursors.
//! - [`persist`]: snapshot files and dataset versions (format, writer, loader), the
//!   change log (records, segments, writer threads) and recovery.
//! - [`startup`]: start-up recovery from the snapshot and the change log, and its
//!   checkpoint.
//! - [`shared_names`]: the server-wide map of shared session names.
//! - [`logging`]: the diagnostic log (text or JSON lines on stdout) and a rate
//!   limiter for log lines on busy paths.
//!
//! A request's path: `shard` reads a WebSocket message off a connection ->
//! `router` decodes it (`protocol::request`) into a `Command` -> runs it on the
//! owning shard's `store` (here, or there by a `mesh` message) -> the answer is
//! encoded by `protocol::answer` -> back on the asking shard, the connection
//! writes it in request order and the turn ends with one flush.

pub mod allocator;
pub mod config;
pub mod domain;
pub mod events;
pub mod expiry;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod persist;
pub mod protocol;
pub mod router;
pub mod security;
pub mod server;
pub mod shard;
pub mod shared_names;
pub mod startup;
pub mod store;
