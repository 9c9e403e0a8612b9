//! The `herald` binary as an operator runs it: log formats, every setting by flag or env, the
//! shutdown log.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Starts `herald` on a free port with `args` and `env`; returns it and its stdout lines.
fn herald(args: &[&str], env: &[(&str, &str)]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(["--port", "0"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    command.env_remove("NO_COLOR");
    let mut child = command.spawn().expect("the herald binary runs");
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout).lines())
}

/// The next stdout line that contains `needle`, within 10 s.
async fn line_with(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("herald's output ended without {needle:?}");
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or_else(|_| panic!("no {needle:?} within 10 s"))
}

fn terminate(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn json_logs_one_object_per_line_and_the_drained_count() {
    let (mut child, mut lines) = herald(&["--log-format", "json"], &[]);
    let started: Value = serde_json::from_str(&line_with(&mut lines, "herald listening").await).expect("a JSON line");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["fields"]["message"], "herald listening");
    terminate(&child);
    let drained: Value = serde_json::from_str(&line_with(&mut lines, "drained").await).unwrap();
    assert_eq!(drained["fields"]["drained"], 0, "{drained}");
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_when_not_a_terminal() {
    let (mut child, mut lines) = herald(&[], &[("HERALD_LOG_FORMAT", "text")]);
    let started = line_with(&mut lines, "herald listening").await;
    assert!(!started.contains('\u{1b}'), "no ANSI escapes in a pipe: {started:?}");
    terminate(&child);
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn settings_by_env_and_flag_and_one_clear_error() {
    // Env and flags reach the config: a bad value of each fails at start with one message naming it.
    for (args, env, key) in [
        (vec!["--pong-timeout", "0"], vec![], "pong_timeout"),
        (vec![], vec![("HERALD_WRITE_TIMEOUT", "0")], "write_timeout"),
        (vec!["--header-timeout=-1"], vec![], "header_timeout"),
        (vec![], vec![("HERALD_MAX_CONNECTIONS", "0")], "max_connections"),
        (vec!["--max-connections-per-ip", "0"], vec![], "max_connections_per_ip"),
        (vec![], vec![("HERALD_ADMIN_TOKEN", "short")], "admin_token"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--port", "0"])
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.matches(key).count(), 1, "one message naming {key}: {stderr}");
    }
    // A good set starts.
    let (mut child, mut lines) = herald(
        &["--pong-timeout", "5", "--shutdown-grace", "1", "--max-request-body", "1000"],
        &[("HERALD_BODY_TIMEOUT", "2.5"), ("HERALD_CONNECTS_PER_IP_PER_MINUTE", "100")],
    );
    line_with(&mut lines, "herald listening").await;
    terminate(&child);
    assert!(child.wait().await.unwrap().success());
}
