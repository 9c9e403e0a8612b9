//! Shared by the Redis tests: a `redis-server` of the test's own on a free port, and reading an outbox.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Drained, Outbox};
use tokio::process::{Child, Command};

/// A `redis-server` of our own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        RedisServer::on(port).await
    }

    pub async fn on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return RedisServer { port, child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
    }
}

/// The next frame in `outbox`, or `None` after `ms`.
pub async fn next(outbox: &Outbox, ms: u64) -> Option<Bytes> {
    let mut batch = Vec::new();
    match tokio::time::timeout(Duration::from_millis(ms), outbox.drain(&mut batch)).await {
        Ok(Drained::Frames) => Some(batch.remove(0)),
        _ => None,
    }
}
