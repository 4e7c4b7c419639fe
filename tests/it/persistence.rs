//! Snapshots through the real binary: SH_SAVE / SH_LOAD round trips, subset
//! saves, restarts on other shard counts, corrupt files, and a SIGKILL in
//! the middle of a large save.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{Client, Server, TempDir, body, st};
use nemesisdb::mesh::shard_of;
use simd_json::prelude::*;

fn persistent(dir: &TempDir, shards: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--shards", shards, "--persist-path", dir.arg()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sessions covering every JSON type, names, shared flags and expiry settings.
fn populate(c: &mut Client) -> Vec<(u64, String)> {
    let specs = [
        r#"{"name":"plain"}"#,
        r#"{"name":"shared-1","shared":true}"#,
        r#"{"expiry":{"duration":500,"deleteSession":true,"extendOnGet":true}}"#,
        r#"{"name":"both","shared":true,"expiry":{"duration":900,"extendOnSetAdd":true}}"#,
        r#"{}"#,
    ];
    let values = r#"{"s":"text \"quoted\" \u00e9","i":-42,"u":18446744073709551615,"f":1E2,"z":-0,"t":true,"n":null,"a":[1,[2,{}]],"o":{"k":{"deep":[null]}}}"#;
    let mut sessions = Vec::new();
    for spec in specs {
        let tkn = c.new_session(spec);
        let r = c.call(&format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{values}}}}}"#));
        assert_eq!(st(&r), 1);
        sessions.push((tkn, spec.to_string()));
    }
    sessions
}

/// Everything a client can see of a session, as text.
fn observe(c: &mut Client, tkn: u64) -> String {
    c.send_text(&format!(
        r#"{{"SH_GET":{{"tkn":{tkn},"keys":["s","i","u","f","z","t","n","a","o"]}}}}"#
    ));
    let get = c.recv_text();
    let mut info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    // Remaining time moves on; the settings must not.
    if let Some(expiry) = info.get_mut("expiry").and_then(|e| e.as_object_mut()) {
        expiry.remove("remaining");
    }
    format!("{get} {info}")
}

#[test]
fn save_and_load_round_trip_every_kind_of_session() {
    let dir = TempDir::new("roundtrip");
    let server = persistent(&dir, "2", &[]);
    let mut c = server.client();
    let sessions = populate(&mut c);
    let before: Vec<String> = sessions.iter().map(|(t, _)| observe(&mut c, *t)).collect();

    let r = c.call(r#"{"SH_SAVE":{"name":"full"}}"#);
    assert_eq!(st(&r), 121, "{r}");
    assert_eq!(r["name"].as_str(), Some("full"));
    assert_eq!(r["sessions"].as_u64(), Some(5));
    assert_eq!(r["keys"].as_u64(), Some(45));
    assert!(r["duration"].as_u64().is_some());

    assert_eq!(st(&c.call(r#"{"SH_END_ALL":{}}"#)), 1);
    assert_eq!(st(&c.call(r#"{"SH_OPEN":{"name":"shared-1"}}"#)), 102);
    let r = c.call(r#"{"SH_LOAD":{"name":"full"}}"#);
    assert_eq!(st(&r), 141, "{r}");
    assert_eq!(
        (r["sessions"].as_u64(), r["keys"].as_u64()),
        (Some(5), Some(45))
    );
    for ((tkn, spec), seen) in sessions.iter().zip(&before) {
        assert_eq!(&observe(&mut c, *tkn), seen, "session {spec}");
    }
    let r = c.call(r#"{"SH_OPEN":{"name":"shared-1"}}"#);
    assert_eq!(
        r["tkn"].as_u64(),
        Some(sessions[1].0),
        "shared names come back"
    );

    // Loading again adds nothing: existing tokens are left as they are.
    c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{},"keys":{{"s":"changed"}}}}}}"#,
        sessions[0].0
    ));
    let r = c.call(r#"{"SH_LOAD":{"name":"full"}}"#);
    assert_eq!((st(&r), r["sessions"].as_u64()), (141, Some(0)));
    let r = c.call(&format!(
        r#"{{"SH_GET":{{"tkn":{},"keys":["s"]}}}}"#,
        sessions[0].0
    ));
    assert_eq!(r["keys"]["s"].as_str(), Some("changed"));
}

#[test]
fn subset_saves_and_dataset_errors() {
    let dir = TempDir::new("subset");
    let server = persistent(&dir, "2", &[]);
    let mut c = server.client();
    let sessions = populate(&mut c);
    let subset = format!(r#"[{},"{}",12345]"#, sessions[0].0, sessions[3].0);
    let r = c.call(&format!(
        r#"{{"SH_SAVE":{{"name":"part","tkns":{subset}}}}}"#
    ));
    assert_eq!((st(&r), r["sessions"].as_u64()), (121, Some(2)), "{r}");
    c.call(r#"{"SH_END_ALL":{}}"#);
    let r = c.call(r#"{"SH_LOAD":{"name":"part"}}"#);
    assert_eq!((st(&r), r["sessions"].as_u64()), (141, Some(2)));
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(2));

    let r = c.call(r#"{"SH_LOAD":{"name":"never-saved"}}"#);
    assert_eq!(st(&r), 142);
    assert!(r["m"].as_str().is_some());
    // An empty list, or one with an entry that is not a token, saves
    // nothing: "part" keeps its one version, still the one loaded.
    let first = sessions[0].0;
    for (tkns, status) in [
        ("[]".to_string(), 42),
        (format!(r#"[{first},"x"]"#), 41),
        (format!("[{first},-1]"), 41),
        (format!("[{first},1.5]"), 41),
        (format!("[{first},null]"), 41),
        ("{}".to_string(), 41),
    ] {
        let r = c.call(&format!(r#"{{"SH_SAVE":{{"name":"part","tkns":{tkns}}}}}"#));
        assert_eq!(st(&r), status, "{tkns}: {r}");
    }
    assert_eq!(version_dirs(&dir.path().join("part")).len(), 1);
    c.call(r#"{"SH_END_ALL":{}}"#);
    let r = c.call(r#"{"SH_LOAD":{"name":"part"}}"#);
    assert_eq!((st(&r), r["sessions"].as_u64()), (141, Some(2)), "{r}");
    for bad in ["..", "a/b", "", "x y"] {
        let r = c.call(&format!(r#"{{"SH_SAVE":{{"name":"{bad}"}}}}"#));
        assert_eq!(st(&r), 42, "{bad}");
    }
    // A dataset directory that cannot be created: 122, nothing written.
    std::fs::write(dir.path().join("blocked"), b"a file, not a directory").unwrap();
    let r = c.call(r#"{"SH_SAVE":{"name":"blocked"}}"#);
    assert_eq!(st(&r), 122, "{r}");
    // The directory is made on a helper thread: requests pipelined behind
    // SH_SAVE are answered after it, in order, whether it fails or not.
    for (name, status) in [("blocked", 122), ("ordered", 121)] {
        c.queue_text(format!(r#"{{"SH_SAVE":{{"name":"{name}"}}}}"#));
        c.queue_text(r#"{"SV_INFO":{}}"#.to_string());
        c.flush();
        let save = body(&c.recv_json(), "SH_SAVE_RSP");
        assert_eq!(st(&save), status, "{save}");
        assert_eq!(st(&body(&c.recv_json(), "SV_INFO_RSP")), 1);
    }
    assert!(dir.path().join("blocked").is_file(), "nothing written");
}

fn version_dirs(dataset: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dataset)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn restart_loads_on_a_different_shard_count() {
    let dir = TempDir::new("restart");
    let sessions;
    let before: Vec<String>;
    {
        let server = persistent(&dir, "2", &[]);
        let mut c = server.client();
        sessions = populate(&mut c);
        before = sessions.iter().map(|(t, _)| observe(&mut c, *t)).collect();
        assert_eq!(st(&c.call(r#"{"SH_SAVE":{"name":"boot"}}"#)), 121);
    }
    for shards in ["1", "3"] {
        let server = persistent(&dir, shards, &["--load-name", "boot"]);
        let mut c = server.client();
        for ((tkn, spec), seen) in sessions.iter().zip(&before) {
            assert_eq!(&observe(&mut c, *tkn), seen, "{spec} on {shards} shards");
        }
        let r = c.call(r#"{"SV_INFO":{}}"#);
        assert_eq!(r["sessions"].as_u64(), Some(5));
    }
    // Loading from a directory given apart from the persist path.
    let server = Server::start(&[
        "--shards",
        "2",
        "--load-name",
        "boot",
        "--load-path",
        dir.arg(),
    ]);
    let mut c = server.client();
    assert_eq!(
        st(&c.call(r#"{"SH_SAVE":{"name":"x"}}"#)),
        14,
        "persistence stays off"
    );
    assert_eq!(observe(&mut c, sessions[2].0), before[2]);
}

#[test]
fn save_on_shutdown_then_load() {
    let dir = TempDir::new("shutdown");
    let mut server = persistent(&dir, "2", &["--save-on-shutdown", "last"]);
    let mut c = server.client();
    let sessions = populate(&mut c);
    let seen = observe(&mut c, sessions[3].0);
    drop(c);
    assert!(server.terminate().success());
    let server = persistent(&dir, "2", &["--load-name", "last"]);
    let mut c = server.client();
    assert_eq!(observe(&mut c, sessions[3].0), seen);
}

fn start_failure(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
        .args(["--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The reason is logged (stdout); stderr has anything said before the
    // logger started.
    let said = [out.stdout, out.stderr].concat();
    (
        out.status.code(),
        String::from_utf8_lossy(&said).to_string(),
    )
}

#[test]
fn corrupt_and_truncated_files_are_refused_with_142() {
    let dir = TempDir::new("corrupt");
    // No change log: the restart below must start empty, not recover.
    let no_log = ["--log-fsync", "off"];
    {
        let server = persistent(&dir, "1", &no_log);
        let mut c = server.client();
        populate(&mut c);
        assert_eq!(st(&c.call(r#"{"SH_SAVE":{"name":"good"}}"#)), 121);
        assert_eq!(st(&c.call(r#"{"SH_SAVE":{"name":"flipped"}}"#)), 121);
        assert_eq!(st(&c.call(r#"{"SH_SAVE":{"name":"short"}}"#)), 121);
    }
    let file = |dataset: &str| version_dirs(&dir.path().join(dataset))[0].join("shard-0.ndb");
    let mut bytes = std::fs::read(file("flipped")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(file("flipped"), &bytes).unwrap();
    let bytes = std::fs::read(file("short")).unwrap();
    std::fs::write(file("short"), &bytes[..bytes.len() - 10]).unwrap();

    let server = persistent(&dir, "2", &no_log);
    let mut c = server.client();
    for dataset in ["flipped", "short"] {
        let r = c.call(&format!(r#"{{"SH_LOAD":{{"name":"{dataset}"}}}}"#));
        assert_eq!(st(&r), 142, "{dataset}: {r}");
        assert!(r["m"].as_str().unwrap().contains("shard-0.ndb"), "{r}");
        let info = c.call(r#"{"SH_INFO_ALL":{}}"#);
        assert_eq!(
            info["totalSessions"].as_u64(),
            Some(0),
            "nothing half-loaded"
        );
    }
    assert_eq!(st(&c.call(r#"{"SH_LOAD":{"name":"good"}}"#)), 141);

    let (code, output) = start_failure(&["--persist-path", dir.arg(), "--load-name", "flipped"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("shard-0.ndb"), "{output}");
    let (code, _) = start_failure(&["--persist-path", dir.arg(), "--load-name", "missing"]);
    assert_eq!(code, Some(1));
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let (code, output) = start_failure(&["--persist-path", blocker.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("snapshots"), "{output}");
}

#[test]
fn sigkill_during_a_large_save_leaves_the_previous_version_loadable() {
    let dir = TempDir::new("sigkill");
    let server = persistent(&dir, "2", &[]);
    let mut c = server.client();
    // About 64 MiB of sessions, so a save takes a while.
    let value = format!("\"{}\"", "v".repeat(1000));
    let sessions = 32_000;
    let batch = 500;
    for _ in 0..sessions / batch {
        for _ in 0..batch {
            c.queue_text(r#"{"SH_NEW":{}}"#.to_string());
        }
        c.flush();
        let tokens: Vec<u64> = (0..batch)
            .map(|_| body(&c.recv_json(), "SH_NEW_RSP")["tkn"].as_u64().unwrap())
            .collect();
        for tkn in tokens {
            c.queue_text(format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":{value},"b":{value}}}}}}}"#
            ));
        }
        c.flush();
        for _ in 0..batch {
            c.recv_text();
        }
    }
    let r = c.call(r#"{"SH_SAVE":{"name":"big"}}"#);
    assert_eq!(st(&r), 121, "{r}");
    let saved = r["sessions"].as_u64();

    // Kill at a few points of the next save.
    let mut server = server;
    c.send_text(r#"{"SH_SAVE":{"name":"big"}}"#);
    std::thread::sleep(std::time::Duration::from_millis(30));
    server.child.kill().unwrap();
    server.wait_exit();
    let versions = version_dirs(&dir.path().join("big"));
    let complete = versions
        .iter()
        .filter(|v| v.join("metadata.json").exists())
        .count();
    eprintln!(
        "after SIGKILL: {} versions, {complete} complete",
        versions.len()
    );
    assert!(complete >= 1);

    let server = persistent(&dir, "2", &["--load-name", "big"]);
    let mut c = server.client();
    let r = c.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(
        r["sessions"].as_u64(),
        saved,
        "a complete version was loaded"
    );
}

#[test]
fn saves_started_together_on_different_shards_both_complete() {
    let dir = TempDir::new("together");
    let server = persistent(&dir, "2", &[]);
    // One client served by each shard, each with a session on its shard.
    let mut by_shard: Vec<Option<Client>> = vec![None, None];
    while by_shard.iter().any(Option::is_none) {
        let mut c = server.client();
        let tkn = c.new_session("{}");
        c.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"v":"{}"}}}}}}"#,
            "x".repeat(200)
        ));
        let slot = &mut by_shard[shard_of(tkn, 2)];
        if slot.is_none() {
            *slot = Some(c);
        }
    }
    let mut clients: Vec<Client> = by_shard.into_iter().map(Option::unwrap).collect();
    for round in 0..5 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_text(&format!(r#"{{"SH_SAVE":{{"name":"s{i}-{round}"}}}}"#));
        }
        for c in &mut clients {
            let r = body(&c.recv_json(), "SH_SAVE_RSP");
            assert_eq!(st(&r), 121, "round {round}: {r}");
        }
    }
}
