//! Builds the mesh, binds the listeners, spawns (and pins) one thread per
//! shard, and turns a stop request or a shard's death into an exit status.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::config::{Config, Pinning};
use crate::mesh::{self, Address, ShardId};
use crate::net::connection::Limits;
use crate::net::listener::bind_shared;
use crate::shard::{Shard, ShardContext, new_poll};
use crate::shared_names::SharedNames;

/// File descriptors kept for everything but client connections: listeners,
/// pollers, wakers, snapshot files, stdio.
const RESERVED_FDS: u64 = 64;

/// Raises the open-file soft limit to the hard limit; returns the soft
/// limit in force afterwards.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    /// Connections the server will hold: the configured maximum, or less
    /// if the open-file limit allows fewer.
    capacity: usize,
    stopper: Stopper,
    threads: Vec<JoinHandle<()>>,
    exits: Receiver<ShardExit>,
}

/// Asks every shard to stop; cheap to clone into a signal handler thread.
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    mesh: Arc<[Address]>,
}

impl Stopper {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for address in self.mesh.iter() {
            address.wake();
        }
    }

    fn requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A shard thread ended; `error` is None for a clean exit.
struct ShardExit {
    shard: ShardId,
    error: Option<String>,
}

/// Reports the thread's end even when it unwinds from a panic.
struct ExitReporter {
    shard: ShardId,
    sender: Sender<ShardExit>,
    error: Option<String>,
}

impl Drop for ExitReporter {
    fn drop(&mut self) {
        let error = if std::thread::panicking() {
            Some("panicked".to_string())
        } else {
            self.error.take()
        };
        let _ = self.sender.send(ShardExit {
            shard: self.shard,
            error,
        });
    }
}

/// Why the server could not keep running.
#[derive(Debug)]
pub struct ShardFailure {
    pub shard: ShardId,
    pub reason: String,
}

impl fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {} stopped: {}", self.shard, self.reason)
    }
}

impl Server {
    /// Binds and starts every shard; returns once they are all serving.
    pub fn start(config: &Config) -> io::Result<Server> {
        let open_files = raise_open_file_limit();
        let fd_room = open_files.saturating_sub(RESERVED_FDS + 4 * config.shards as u64);
        let capacity = config.max_connections.min(fd_room as usize).max(1);
        let listeners = bind_shared(config.addr, config.shards)?;
        let addr = listeners[0].local_addr()?;
        let mut polls = Vec::with_capacity(config.shards);
        let mut wakers = Vec::with_capacity(config.shards);
        for _ in 0..config.shards {
            let (poll, waker) = new_poll()?;
            polls.push(poll);
            wakers.push(waker);
        }
        let (mesh, inboxes) = mesh::wire(wakers);
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicUsize::new(config.shards));
        let names = Arc::new(SharedNames::default());
        let connections = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let (exit_sender, exits) = channel();
        let mut threads = Vec::with_capacity(config.shards);
        let parts = polls.into_iter().zip(listeners).zip(inboxes).enumerate();
        for (id, ((poll, listener), inbox)) in parts {
            let ctx = ShardContext {
                id,
                shards: config.shards,
                limits: Limits {
                    max_payload: config.max_payload,
                    max_output_buffer: config.max_output_buffer,
                },
                connections: connections.clone(),
                max_connections: capacity,
                max_memory: config.max_memory,
                persist_enabled: false,
                started,
                names: names.clone(),
                mesh: mesh.clone(),
                stop: stop.clone(),
                draining: draining.clone(),
            };
            let core = match &config.pinning {
                Pinning::None => None,
                Pinning::Cores(cores) => cores.get(id).copied(),
            };
            let sender = exit_sender.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    let mut reporter = ExitReporter {
                        shard: id,
                        sender,
                        error: None,
                    };
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
                    {
                        eprintln!("warning: could not pin shard {id} to core {core}");
                    }
                    let result = Shard::new(ctx, poll, listener, inbox).and_then(Shard::run);
                    reporter.error = result.err().map(|e| e.to_string());
                })?;
            threads.push(thread);
        }
        Ok(Server {
            addr,
            capacity,
            stopper: Stopper { stop, mesh },
            threads,
            exits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connection_capacity(&self) -> usize {
        self.capacity
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Blocks until every shard has stopped. A shard that ends before a
    /// stop was requested, or with an error, fails the server: the others
    /// are stopped too, so it never runs half alive.
    pub fn wait(self) -> Result<(), ShardFailure> {
        let mut failure = None;
        for _ in 0..self.threads.len() {
            let Ok(exit) = self.exits.recv() else {
                break;
            };
            let reason = match exit.error {
                Some(error) => Some(error),
                None if !self.stopper.requested() => Some("exited unexpectedly".to_string()),
                None => None,
            };
            if let Some(reason) = reason {
                if failure.is_none() {
                    failure = Some(ShardFailure {
                        shard: exit.shard,
                        reason,
                    });
                }
                // Nobody can rely on a server missing a shard.
                return Err(failure.unwrap_or_else(|| unreachable!()));
            }
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}
