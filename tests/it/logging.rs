//! The diagnostic log through the real binary (issue #18): `--log-format
//! json` writes nothing but JSON lines, from the start-up summary to the
//! stop; `--log-level` hides what is less severe unless `RUST_LOG` says
//! otherwise; bad values stop the start with status 2.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Instant;

use simd_json::OwnedValue;
use simd_json::prelude::*;

use crate::support::{Server, TIMEOUT, TempDir, listening_addr};

/// One JSON log line, checked for the layout `--help` promises.
struct Event {
    level: String,
    message: String,
    fields: OwnedValue,
    line: String,
}

impl Event {
    fn parse(line: &str) -> Event {
        let mut bytes = line.as_bytes().to_vec();
        let value = simd_json::to_owned_value(&mut bytes)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        let text = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("no string {name:?} in {line}"))
                .to_string()
        };
        let (_, _, level) = (text("timestamp"), text("target"), text("level"));
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level.as_str()),
            "{line}"
        );
        let fields = value
            .get("fields")
            .filter(|f| f.is_object())
            .unwrap_or_else(|| panic!("no \"fields\" object in {line}"))
            .clone();
        let message = fields
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_else(|| panic!("no fields.message in {line}"))
            .to_string();
        Event {
            level,
            message,
            fields,
            line: line.to_string(),
        }
    }

    fn u64(&self, field: &str) -> u64 {
        self.fields
            .get(field)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("no number {field:?} in {}", self.line))
    }

    fn str(&self, field: &str) -> &str {
        self.fields
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no string {field:?} in {}", self.line))
    }
}

/// Every line the server wrote on stdout, once it has exited.
fn all_lines(server: &Server) -> Vec<String> {
    let mut lines = server.startup.clone();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.stdout.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => return lines,
            Err(RecvTimeoutError::Timeout) => panic!("stdout stayed open after the exit"),
        }
    }
}

/// Runs the binary expecting it to exit on its own, with `RUST_LOG` as
/// given (unset: None).
fn run_to_exit(args: &[&str], rust_log: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nemesisdb"));
    command
        .args(["--ip", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    if let Some(directives) = rust_log {
        command.env("RUST_LOG", directives);
    }
    // The starts below fail at once; a hang would show as a stuck test.
    command.output().expect("run nemesisdb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn json_format_writes_only_json_lines_from_start_to_stop() {
    let dir = TempDir::new("log-json");
    let mut server = Server::start(&[
        "--shards",
        "2",
        "--log-format",
        "json",
        "--persist-path",
        dir.arg(),
        "--save-on-shutdown",
        "final",
    ]);
    let mut c = server.client();
    c.new_session(r#"{"keys":{"a":1}}"#);
    drop(c);
    assert!(server.terminate().success());
    let events: Vec<Event> = all_lines(&server)
        .iter()
        .map(|line| Event::parse(line))
        .collect();
    let find = |prefix: &str| {
        events
            .iter()
            .find(|e| e.message.starts_with(prefix))
            .unwrap_or_else(|| panic!("no event {prefix:?} in {:#?}", server.startup))
    };

    let start = find("starting nemesisdb");
    assert_eq!(start.level, "INFO");
    assert_eq!(start.u64("shards"), 2);
    assert_eq!(start.str("addr"), "127.0.0.1:0");
    assert_eq!(start.str("persist"), dir.arg());
    assert_eq!(start.str("log_fsync"), "everysec");
    assert_eq!(start.str("save_on_shutdown"), "final");
    assert!(start.u64("max_connections") > 0, "{}", start.line);

    let listening = find("listening on ");
    assert_eq!(listening_addr(&listening.message), Some(server.addr));
    assert_eq!(listening.str("addr"), server.addr.to_string());

    let signal = find("SIGTERM received");
    assert_eq!(signal.str("signal"), "SIGTERM");
    let saved = find("saved ");
    assert_eq!(saved.str("dataset"), "final");
    assert_eq!(saved.u64("sessions"), 1);
    assert_eq!(saved.u64("keys"), 1);
    assert!(saved.u64("bytes") > 0, "{}", saved.line);
    saved.u64("duration_ms");
    assert!(
        dir.path().join("final").join(saved.str("version")).is_dir(),
        "{}",
        saved.line
    );
    let last = events.last().expect("events");
    assert_eq!(last.message, "stopped");
    let stderr = server.stderr.recv_timeout(TIMEOUT);
    assert!(
        matches!(stderr, Err(RecvTimeoutError::Disconnected)),
        "nothing goes to stderr: {stderr:?}"
    );
}

#[test]
fn json_recovery_line_has_its_counts() {
    let dir = TempDir::new("log-recovery");
    let args = [
        "--shards",
        "2",
        "--persist-path",
        dir.arg(),
        "--log-fsync",
        "always",
    ];
    let server = Server::start(&args);
    let mut c = server.client();
    c.new_session(r#"{"keys":{"a":1}}"#);
    c.new_session("{}");
    drop(c);
    drop(server); // killed: recovery replays the change log
    let server = Server::start(&[&args[..], &["--log-format", "json"]].concat());
    let recovered = server
        .startup
        .iter()
        .map(|line| Event::parse(line))
        .find(|e| e.message.starts_with("recovered "))
        .expect("a recovery line before `listening on`");
    assert_eq!(recovered.level, "INFO");
    assert_eq!(recovered.u64("sessions"), 2);
    assert_eq!(recovered.u64("log_records"), 2);
    recovered.u64("duration_ms");
    assert!(!recovered.str("checkpoint").is_empty());
}

#[test]
fn log_level_warn_hides_info_and_rust_log_wins_over_it() {
    let dir = TempDir::new("log-level");
    // A file where the snapshot directory should be: the start fails after
    // the logger is up, with an error line and no listener to find.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let failing = ["--persist-path", blocker.to_str().unwrap()];

    let out = run_to_exit(&[&failing[..], &["--log-level", "warn"]].concat(), None);
    assert_eq!(out.status.code(), Some(1));
    let log = text(&out.stdout);
    assert!(
        log.contains(" ERROR ") && log.contains("cannot start"),
        "{log}"
    );
    assert!(!log.contains(" INFO "), "info lines hidden: {log}");
    assert!(!log.contains("starting nemesisdb"), "{log}");

    let out = run_to_exit(&failing, None);
    let log = text(&out.stdout);
    assert!(
        log.contains(" INFO ") && log.contains("starting nemesisdb"),
        "{log}"
    );

    let out = run_to_exit(
        &[&failing[..], &["--log-level", "error"]].concat(),
        Some("info"),
    );
    let log = text(&out.stdout);
    assert!(log.contains("starting nemesisdb"), "RUST_LOG wins: {log}");
}

#[test]
fn bad_log_settings_exit_with_status_2_before_anything_is_logged() {
    for (args, rust_log, says) in [
        (&["--log-format", "xml"][..], None, "log format"),
        (&["--log-level", "loud"], None, "log level"),
        (&[], Some("nemesisdb=loud"), "RUST_LOG"),
    ] {
        let out = run_to_exit(args, rust_log);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {rust_log:?}: {stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}
