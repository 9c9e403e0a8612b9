//! Shared by the source tests: servers of the test's own on free ports, an in-process engine with
//! signed-in connections, and `eventually` (poll with a deadline; no positive assertion after a sleep).

#![allow(dead_code)]

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{App, Drained, Engine, Hub, Outbox};
use herald_ingest::{Ingest, SourceConfig};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reached within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of our own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = RedisServer::try_on(free_port()).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Another server on the same port (after `kill`): an empty Redis, as after a restart without
    /// persistence.
    pub async fn restart(port: u16) -> RedisServer {
        RedisServer::try_on(port).await.expect("redis-server restarts on its port")
    }

    async fn try_on(port: u16) -> Option<RedisServer> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        for _ in 0..300 {
            if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.ok()?;
                    let pid = info.split("process_id:").nth(1)?.split_whitespace().next()?.parse::<u32>().ok();
                    return (pid == child.id()).then_some(RedisServer { port, child });
                }
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
    }
}

/// An engine with the dev app, and the sources started on it.
pub struct Node {
    pub engine: Arc<Engine>,
    pub ingest: Ingest,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Node {
    /// Starts the `[[sources]]` of `toml` (which names app `app-id`).
    pub fn start(toml: &str) -> Node {
        let engine = Arc::new(Engine::new([App::dev()]));
        Node::start_on(engine, toml)
    }

    pub fn start_on(engine: Arc<Engine>, toml: &str) -> Node {
        let file: toml::Value = toml::from_str(toml).unwrap();
        let sources: Vec<SourceConfig> = file["sources"].clone().try_into().unwrap();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ingest = Ingest::start(&sources, &engine, &shutdown, &tasks).unwrap();
        Node { engine, ingest, shutdown, tasks }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        self.engine.by_id("app-id").unwrap()
    }

    /// Like [`Node::start`], with connections signed in as each `(user, device)` before the sources
    /// start: a user publication reaches only the devices signed in when it is relayed, so what is on
    /// the bus already could otherwise be relayed to nobody (and acked) first.
    pub fn start_with_devices<const N: usize>(toml: &str, devices: [(&str, &str); N]) -> (Node, [Outbox; N]) {
        let engine = Arc::new(Engine::new([App::dev()]));
        let hub = engine.by_id("app-id").unwrap();
        let outboxes = devices.map(|(user, device)| sign_in(hub, user, device));
        (Node::start_on(engine, toml), outboxes)
    }

    /// A connection signed in as `user` from `device`.
    pub fn device(&self, user: &str, device: &str) -> Outbox {
        sign_in(self.hub(), user, device)
    }

    pub fn up(&self) -> bool {
        self.ingest.healthy()
    }

    /// Stops the sources and waits for their tasks.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await.expect("sources stop on shutdown");
    }
}

/// A connection to `hub` signed in as `user` from `device`.
fn sign_in(hub: &Hub, user: &str, device: &str) -> Outbox {
    let (id, outbox) = hub.connect().unwrap();
    hub.sign_in(id, user, Some(device)).unwrap();
    outbox
}

/// Everything queued to `outbox` now (the raw codec: each frame is the publication's data).
pub async fn take(outbox: &Outbox) -> Vec<serde_json::Value> {
    if outbox.is_empty() {
        return Vec::new();
    }
    let mut frames: Vec<Bytes> = Vec::new();
    assert_eq!(outbox.drain(&mut frames).await, Drained::Frames);
    frames.iter().map(|f| serde_json::from_slice(f).unwrap()).collect()
}

/// Frames queued to `outbox` until there are at least `n`, failing after `secs`.
pub async fn collect(outbox: &Outbox, n: usize, secs: u64) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(take(outbox).await);
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} frames within {secs} s: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

/// `XADD stream * field value`; the entry id.
pub async fn xadd(conn: &mut redis::aio::MultiplexedConnection, stream: &str, field: &str, value: &str) -> String {
    redis::cmd("XADD").arg(stream).arg("*").arg(field).arg(value).query_async(conn).await.unwrap()
}

/// A PostgreSQL cluster of our own in a temp dir (`initdb` + `pg_ctl` on a free port), stopped and
/// removed on drop. As root, the server runs as the `postgres` user (PostgreSQL refuses root).
pub struct Postgres {
    pub port: u16,
    dir: std::path::PathBuf,
    as_postgres: bool,
}

/// A PostgreSQL program: on PATH, else in Debian's `/usr/lib/postgresql/<version>/bin`.
fn pg_bin(name: &str) -> String {
    if let Ok(path) = std::env::var("PATH") {
        if let Some(found) = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.exists()) {
            return found.to_string_lossy().into_owned();
        }
    }
    let mut versions: Vec<_> =
        std::fs::read_dir("/usr/lib/postgresql").map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    versions.sort();
    versions
        .iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{name} not found: install PostgreSQL (Debian: apt-get install postgresql)"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0")))
        .unwrap_or(false)
}

impl Postgres {
    fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--", &pg_bin(program)]);
            cmd
        } else {
            std::process::Command::new(pg_bin(program))
        };
        cmd.stdout(Stdio::null());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).stderr(Stdio::piped()).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// initdb and start on a free port (the socket directory is the temp dir too).
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("herald-pg-{}-{:x}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let ok = std::process::Command::new("chown").args(["postgres:", &dir.to_string_lossy()]).status().unwrap().success();
            assert!(ok, "chown {dir:?} to postgres");
        }
        let mut pg = Postgres { port: 0, dir, as_postgres };
        pg.run("initdb", &["-D", &pg.data(), "-A", "trust", "-U", "herald", "--no-sync", "-E", "UTF8"]);
        for _ in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
        }
        panic!("postgres did not start on any of 5 free ports");
    }

    fn try_start(&self) -> bool {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.to_string_lossy());
        let log = self.dir.join("log").to_string_lossy().into_owned();
        self.command("pg_ctl").args(["-D", &self.data(), "-l", &log, "-w", "-t", "30", "-o", &options, "start"]).status().unwrap().success()
    }

    /// Starts it again on its port (after `stop`).
    pub fn restart(&self) {
        assert!(self.try_start(), "postgres restarts on port {}", self.port);
    }

    /// Stops it at once (`-m immediate`: like a crash).
    pub fn stop(&self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).stderr(Stdio::null()).status();
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=herald dbname=postgres", self.port)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server -js` of our own on a free port, its JetStream store in a temp dir; killed on drop.
pub struct NatsServer {
    pub port: u16,
    pub store: std::path::PathBuf,
    child: Child,
    /// Remove the store on drop (not after `kill`: a restart reuses it).
    remove_store: bool,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if self.remove_store {
            let _ = self.child.start_kill();
            // Gone before its store is removed (it could still write into it).
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let store = std::env::temp_dir().join(format!("herald-nats-{}-{:x}", std::process::id(), fastrand::u64(..)));
        for _ in 0..5 {
            if let Some(server) = NatsServer::try_on(free_port(), store.clone()).await {
                return server;
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    async fn try_on(port: u16, store: std::path::PathBuf) -> Option<NatsServer> {
        let nats = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut child = Command::new(nats)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", &store.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server must be installed");
        for _ in 0..300 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            let connect =
                async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1)).connect(format!("nats://127.0.0.1:{port}"));
            // nats-server starts JetStream before it listens.
            if let Ok(Ok(_client)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                return Some(NatsServer { port, store, child, remove_store: true });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// A new server on the same port and store (after `kill`): streams and consumers survive.
    pub async fn restart(port: u16, store: std::path::PathBuf) -> NatsServer {
        NatsServer::try_on(port, store).await.expect("nats-server restarts on its port")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn kill(mut self) -> (u16, std::path::PathBuf) {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
        self.remove_store = false;
        (self.port, self.store.clone())
    }
}
