//! The password given in `SIMPLETEXTIM_PASSWORD` is removed from the process environment
//! once read, so nothing the client runs or starts later finds it there.
//!
//! The real binary runs under `setsid` (util-linux): with no controlling terminal and stdin
//! not a terminal, it cannot take over the terminal of whoever runs the tests, and stops
//! at the terminal's set-up, after it has opened its log, which says what the environment
//! held by then.

use std::process::{Command, Stdio};

#[test]
fn the_password_variable_is_removed_from_the_environment() {
    let dir =
        std::env::temp_dir().join(format!("simpletextim-password-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let log = dir.join("client.log");
    let _ = std::fs::remove_file(&log);
    let output = Command::new("setsid")
        .arg(env!("CARGO_BIN_EXE_simpletextim"))
        .args(["--user", "alice", "--server", "127.0.0.1:9", "--log-file"])
        .arg(&log)
        .env("SIMPLETEXTIM_PASSWORD", "secret-password")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("setsid (util-linux) runs the client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "no terminal, so it stops: {stderr}"
    );
    assert!(stderr.contains("cannot set up the terminal"), "{stderr}");
    assert!(!stderr.contains("secret-password"), "{stderr}");
    let log = std::fs::read_to_string(&log).expect("the client wrote its log");
    assert!(
        log.contains("password read from SIMPLETEXTIM_PASSWORD, now removed from the environment"),
        "{log}"
    );
    assert!(!log.contains("secret-password"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
