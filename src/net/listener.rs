//! Listening sockets: one per shard on the same address (SO_REUSEPORT), so
//! the kernel spreads new connections over the shards.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// Binds `count` listeners to `addr`. With port 0 the first one picks a free
/// port and the others join it.
pub fn bind_shared(addr: SocketAddr, count: usize) -> io::Result<Vec<mio::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(mio::net::TcpListener::from_std(listener));
    }
    Ok(listeners)
}
