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
    /// A server on a free port. A port picked free can be taken by another test's server before ours
    /// binds it: then ours exits and another port is tried.
    pub async fn start() -> RedisServer {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if let Some(server) = RedisServer::try_on(port, &[]).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub async fn on(port: u16) -> RedisServer {
        RedisServer::with_args(port, &[]).await
    }

    /// A server on `port` with extra command-line options (e.g. `--requirepass`).
    pub async fn with_args(port: u16, extra: &[&str]) -> RedisServer {
        RedisServer::try_on(port, extra).await.unwrap_or_else(|| panic!("redis-server did not start on {port}"))
    }

    async fn try_on(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        // Up to 15 s: a busy machine (a whole test suite starting servers) can be slow.
        for _ in 0..300 {
            if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                // Ours, not another test's that took the port first (ours then exits). A server with
                // extra options (a password) can't be asked; those tests pick their own port.
                let ours = !extra.is_empty() || server_pid(stream).await == child.id();
                return match ours {
                    true => Some(RedisServer { port, child }),
                    false => None,
                };
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A free port (nothing listens on it).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
    }
}

/// A publication whose data is the finished `frame` (delivered as-is to raw-codec subscribers).
pub fn raw(channel: &str, frame: &Bytes) -> herald_core::Publication {
    herald_core::Publication::new(channel, "", frame.clone(), herald_core::DataKind::Binary)
}

/// The process id a Redis server on `stream` reports (`INFO server`), if it answers.
async fn server_pid(mut stream: tokio::net::TcpStream) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"INFO server\r\n").await.ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    for _ in 0..20 {
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(pid) = text.split("process_id:").nth(1).and_then(|rest| rest.split_whitespace().next()) {
            if text.contains("run_id:") {
                return pid.parse().ok();
            }
        }
    }
    None
}

/// The next frame in `outbox`, or `None` after `ms`.
pub async fn next(outbox: &Outbox, ms: u64) -> Option<Bytes> {
    let mut batch = Vec::new();
    match tokio::time::timeout(Duration::from_millis(ms), outbox.drain(&mut batch)).await {
        Ok(Drained::Frames) => Some(batch.remove(0)),
        _ => None,
    }
}

/// Like [`next`], failing if more than one frame was queued: a duplicate delivery fails the test
/// instead of being dropped unseen.
pub async fn next_alone(outbox: &Outbox, ms: u64) -> Option<Bytes> {
    let mut batch = Vec::new();
    match tokio::time::timeout(Duration::from_millis(ms), outbox.drain(&mut batch)).await {
        Ok(Drained::Frames) => {
            assert_eq!(batch.len(), 1, "one frame expected, more were queued: {batch:?}");
            batch.pop()
        }
        _ => None,
    }
}

impl RedisServer {
    /// `redis-cli` against this server; its stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args).await
    }

    /// SIGSTOP: the server stalls (connections stay open, nothing is answered).
    pub async fn pause(&self) {
        self.signal("-STOP").await;
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub async fn resume(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("redis-server is running").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().await.unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// `redis-cli -p port args...`; its stdout.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().await.unwrap();
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 50 ms until it returns true or `within` passes; true if it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One Herald node: an engine with its Redis broker.
pub struct Node {
    pub engine: std::sync::Arc<herald_core::Engine>,
    pub broker: std::sync::Arc<herald_redis::RedisBroker>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Node {
    /// A node of `app` on Redis at `url` (keys under `prefix`), with lease `lease`.
    pub async fn start(url: &str, prefix: &str, lease: Duration, app: herald_core::App) -> Node {
        Node::with(herald_redis::RedisConfig { url: url.into(), prefix: prefix.into(), lease, ..Default::default() }, app).await
    }

    /// A node with a config of its own.
    pub async fn with(config: herald_redis::RedisConfig, app: herald_core::App) -> Node {
        let engine = std::sync::Arc::new(herald_core::Engine::new([app]));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let broker = herald_redis::RedisBroker::start(config, &engine, shutdown.clone(), &tasks).await.unwrap();
        Node { engine, broker, shutdown }
    }

    pub fn hub(&self) -> &std::sync::Arc<herald_core::Hub> {
        self.engine.hubs().next().unwrap()
    }

    pub fn state(&self) -> std::sync::Arc<dyn herald_core::ClusterState> {
        self.hub().state().unwrap().clone()
    }

    pub fn healthy(&self) -> bool {
        herald_core::Broker::healthy(&*self.broker)
    }

    /// Records every change announced on this node's hub.
    pub fn record(&self) -> Recorder {
        let recorder = Recorder::default();
        let changes = recorder.0.clone();
        self.hub().listen(std::sync::Arc::new(
            move |_hub: &herald_core::Hub, change: &herald_core::ChannelChange, _actor: Option<herald_core::SocketId>| {
                changes.lock().unwrap().push(change.clone());
            },
        ));
        recorder
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Channel changes a hub announced.
#[derive(Clone, Default)]
pub struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<herald_core::ChannelChange>>>);

impl Recorder {
    pub fn take(&self) -> Vec<herald_core::ChannelChange> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Every transition announced so far, with its channel.
    pub fn transitions(&self) -> Vec<(String, herald_core::Transition)> {
        self.0.lock().unwrap().iter().flat_map(|c| c.transitions.iter().map(|t| (c.channel.to_string(), t.clone()))).collect()
    }

    pub fn count(&self, wanted: impl Fn(&herald_core::Transition) -> bool) -> usize {
        self.transitions().iter().filter(|(_, t)| wanted(t)).count()
    }
}

/// A TCP proxy in front of a Redis that the test can cut (every connection dropped, new ones closed at
/// once) and restore: a network partition of one node.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn to(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (c, l) = (cut.clone(), live.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, cut, live, accept }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A free port (nothing listens on it).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Drops every proxied connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Frames queued in `outbox` until at least `n` arrived or `within` passed (then fewer).
pub async fn frames_until(outbox: &Outbox, n: usize, within: Duration) -> Vec<Bytes> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while all.len() < n {
        let mut batch = Vec::new();
        match tokio::time::timeout_at(deadline, outbox.drain(&mut batch)).await {
            Ok(Drained::Frames) => all.append(&mut batch),
            _ => break,
        }
    }
    all
}

/// Every frame queued in `outbox` within `ms` (waits the whole time).
pub async fn frames(outbox: &Outbox, ms: u64) -> Vec<Bytes> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let mut batch = Vec::new();
        match tokio::time::timeout_at(deadline, outbox.drain(&mut batch)).await {
            Ok(Drained::Frames) => all.append(&mut batch),
            _ => return all,
        }
    }
}
