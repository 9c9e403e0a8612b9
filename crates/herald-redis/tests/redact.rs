//! The Redis password never reaches a log line or an error message.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, RedisServer};
use herald_core::{App, Engine};
use herald_redis::{RedisBroker, RedisBrokerError, RedisConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SECRET: &str = "hunter2-s3cret";

/// Everything logged (at every level) while the returned guard lives, on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_ansi(false).with_writer(move || writer.clone()).finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Starting a broker on `url`, which must fail.
async fn refused(url: &str) -> RedisBrokerError {
    let engine = Arc::new(Engine::new([App::dev()]));
    let config = RedisConfig { url: url.into(), timeout: Duration::from_millis(500), ..RedisConfig::default() };
    match RedisBroker::start(config, &engine, CancellationToken::new(), &TaskTracker::new()).await {
        Ok(_) => panic!("{url} must fail"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn the_redis_password_stays_out_of_logs_and_errors() {
    let port = RedisServer::free_port();
    let redis = RedisServer::with_args(port, &["--requirepass", SECRET]).await;
    let (logs, _guard) = capture();

    // Started with credentials: the start-up line names the server, not the password.
    let url = format!("redis://default:{SECRET}@127.0.0.1:{port}");
    let node = Node::with(RedisConfig { url: url.clone(), ..RedisConfig::default() }, App::dev()).await;
    assert!(logs.text().contains("redis broker started"), "{}", logs.text());
    assert!(logs.text().contains("redis://***@127.0.0.1"), "{}", logs.text());
    assert!(!format!("{:?}", RedisConfig { url, ..RedisConfig::default() }).contains(SECRET));
    drop(node);

    // Errors: nothing listening, a wrong password, a URL that does not parse.
    let failures = [
        format!("redis://user:{SECRET}@127.0.0.1:{}", RedisServer::free_port()),
        format!("redis://default:{SECRET}-wrong@127.0.0.1:{port}"),
        format!("redis://:{SECRET}@127.0.0.1:{port}/not-a-db"),
    ];
    let mut kinds = Vec::new();
    for url in failures {
        let err = refused(&url).await;
        kinds.push(matches!(err, RedisBrokerError::Url { .. }));
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(SECRET), "password in {shown}");
            assert!(shown.contains("***"), "redacted url missing from {shown}");
        }
    }
    assert_eq!(kinds, [false, false, true], "connect, auth and parse errors");
    assert!(!logs.text().contains(SECRET), "password logged: {}", logs.text());
    redis.stop().await;
}
