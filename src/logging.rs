//! The server's diagnostic log: the one `tracing` subscriber of the process
//! (text or JSON lines on stdout, filtered by `--log-level` or `RUST_LOG`),
//! and [`RateLimited`], for lines on paths that could otherwise flood it.
//!
//! Events are written where things happen (`tracing::info!` and friends, with
//! fields for what a machine would read and a message for a person); this
//! module only decides where they go. Not the change log (`persist::log`):
//! that is data, this is for operators. Nothing on the request path logs at
//! info or above except through a [`RateLimited`].
//!
//! Logs go to stdout, where the start-up line has always been: the tests,
//! the scripts and the loadtest find `listening on IP:PORT` there. Only what
//! fails before the subscriber exists (bad flags, a bad config file, a bad
//! `RUST_LOG`) is written to stderr, plainly.

use std::fmt;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The least severe events written (`--log-level`, config `log.level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl Level {
    pub const NAMES: &str = "error, warn, info, debug or trace";

    /// `error`, `warn`, `info`, `debug` or `trace` (any case).
    pub fn parse(text: &str) -> Option<Level> {
        Some(match text.to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            Level::Error => LevelFilter::ERROR,
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
            Level::Trace => LevelFilter::TRACE,
        }
    }
}

/// How each line is written (`--log-format`, config `log.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `<time>  INFO <thread> <target>: <message> <field>=<value> ...`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `threadName`, `target`,
    /// and `fields` (the `message` and every structured field).
    Json,
}

impl Format {
    pub const NAMES: &str = "text or json";

    pub fn parse(text: &str) -> Option<Format> {
        match text.to_ascii_lowercase().as_str() {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

/// The log settings of a [`crate::config::Config`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub level: Level,
    pub format: Format,
}

/// Why the subscriber was not installed; the caller exits (status 2 for a
/// bad `RUST_LOG`, as for any bad setting).
#[derive(Debug)]
pub enum InitError {
    /// `RUST_LOG` holds a directive `EnvFilter` cannot parse.
    Filter { directives: String, reason: String },
    /// A subscriber is installed already: `init` ran twice (a caller bug).
    Installed(String),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Filter { directives, reason } => {
                write!(f, "RUST_LOG=\"{directives}\" is not a log filter: {reason}")
            }
            InitError::Installed(reason) => write!(f, "cannot install the logger: {reason}"),
        }
    }
}

impl std::error::Error for InitError {}

/// What decides which events are written: `rust_log` (the `RUST_LOG`
/// variable, an `EnvFilter` directive list such as
/// `info,nemesisdb::router=debug`) when set and not empty, else `level`.
pub fn filter(level: Level, rust_log: Option<&str>) -> Result<EnvFilter, InitError> {
    match rust_log.map(str::trim).filter(|d| !d.is_empty()) {
        Some(directives) => EnvFilter::builder()
            .parse(directives)
            .map_err(|e| InitError::Filter {
                directives: directives.to_string(),
                reason: e.to_string(),
            }),
        None => Ok(EnvFilter::default().add_directive(level.filter().into())),
    }
}

/// Installs the process's subscriber: lines on stdout in `settings.format`,
/// filtered as [`filter`] says. Call once, before the server starts.
pub fn init(settings: Settings, rust_log: Option<&str>) -> Result<(), InitError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings.level, rust_log)?)
        .with_writer(std::io::stdout)
        .with_thread_names(true)
        .with_ansi(false);
    let installed = match settings.format {
        Format::Text => builder.try_init(),
        // No spans are used: their lists would be empty noise on every line.
        Format::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| InitError::Installed(e.to_string()))
}

/// Lets a log line through at most once per `every`, counting the ones it
/// held back, so a line that could repeat per request (a slow request, a
/// write refused for memory) says how often it happened without flooding
/// the log. One per call site and shard: it is not shared between threads.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    /// When a line was last let through; None before the first.
    last: Option<Instant>,
    /// Lines held back since then.
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now` (the caller's clock, so tests
    /// move time instead of sleeping): `Some(n)`, with `n` the lines held
    /// back since the last one let through (say so in the line), or `None`,
    /// and this one is counted as held back. The first call is always let
    /// through. A `now` before the last line's time counts as no time passed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if !due {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_line_passes_then_one_per_interval_with_the_count_held_back() {
        let start = Instant::now();
        let mut limit = RateLimited::new(SECOND);
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.allow(start + SECOND / 2), None);
        assert_eq!(limit.allow(start + SECOND - Duration::from_nanos(1)), None);
        assert_eq!(limit.allow(start + SECOND), Some(3));
        // The interval runs from the line let through, not from the first.
        assert_eq!(limit.allow(start + SECOND * 3 / 2), None);
        assert_eq!(limit.allow(start + SECOND * 2), Some(1));
        // Quiet for long: the next line passes and nothing was held back.
        assert_eq!(limit.allow(start + SECOND * 60), Some(0));
    }

    #[test]
    fn a_clock_that_goes_back_holds_lines_back() {
        let start = Instant::now() + SECOND * 10;
        let mut limit = RateLimited::new(SECOND);
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start - SECOND * 5), None);
        assert_eq!(limit.allow(start + SECOND), Some(1));
    }

    #[test]
    fn no_interval_lets_every_line_through() {
        let start = Instant::now();
        let mut limit = RateLimited::new(Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(limit.allow(start), Some(0));
        }
    }

    #[test]
    fn levels_and_formats_parse_in_any_case_and_nothing_else() {
        for level in [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ] {
            assert_eq!(Level::parse(level.name()), Some(level));
            assert_eq!(Level::parse(&level.name().to_uppercase()), Some(level));
        }
        assert_eq!(Level::parse("warning"), None);
        assert_eq!(Level::parse(""), None);
        assert_eq!(Format::parse("JSON"), Some(Format::Json));
        assert_eq!(Format::parse("text"), Some(Format::Text));
        assert_eq!(Format::parse("logfmt"), None);
    }

    #[test]
    fn rust_log_wins_when_set_and_must_parse() {
        let max = |f: EnvFilter| f.max_level_hint();
        let by_level = filter(Level::Warn, None).unwrap();
        assert_eq!(max(by_level), Some(LevelFilter::WARN));
        let blank = filter(Level::Warn, Some("  ")).unwrap();
        assert_eq!(
            max(blank),
            Some(LevelFilter::WARN),
            "a blank RUST_LOG is unset"
        );
        let env = filter(Level::Warn, Some("debug")).unwrap();
        assert_eq!(max(env), Some(LevelFilter::DEBUG));
        let per_target = filter(Level::Error, Some("info,nemesisdb::router=trace")).unwrap();
        assert_eq!(max(per_target), Some(LevelFilter::TRACE));
        let bad = filter(Level::Info, Some("nemesisdb=loud")).unwrap_err();
        assert!(
            bad.to_string().contains("RUST_LOG=\"nemesisdb=loud\""),
            "{bad}"
        );
    }
}
