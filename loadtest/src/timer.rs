//! Sub-millisecond wake-ups for the open loop.
//!
//! epoll's timeout counts whole milliseconds (mio rounds up), so a thread
//! sending every 100 us would wake up to a millisecond late and report its own
//! lateness as server latency. A timerfd in the same poll wakes it on time
//! without spinning.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

pub struct Timer {
    fd: OwnedFd,
    /// The wake-up it is set for, to skip re-arming for the same instant.
    armed: Option<Instant>,
}

impl Timer {
    pub fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Timer { fd, armed: None })
    }

    /// Makes the poll wake at `at` (or at once, if that has passed).
    pub fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // A zero value would disarm the timer; the earliest is 1 ns from now.
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed = Some(at);
        Ok(())
    }

    /// Consumes an expiry (call when its token is ready).
    pub fn fired(&mut self) {
        let mut buf = [0u8; 8];
        // WouldBlock (nothing to consume) is as good as success here.
        let _ = rustix::io::read(&self.fd, &mut buf);
        self.armed = None;
    }
}
