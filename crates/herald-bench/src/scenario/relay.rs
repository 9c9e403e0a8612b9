//! `relay`: messages relayed from a bus to users' devices. U users × D devices connect and sign in
//! (`pusher:signin`, `user_data` `{"id":"bench-{u}","device_id":"d{k}"}`); the bench writes messages to
//! a Redis stream (`XADD`) or a NATS JetStream subject (`PUB`) at a fixed rate, each for one user and
//! from device `d0` (so that device is excluded: D − 1 deliveries per message), with a send timestamp
//! inside. Herald relays them with `examples/relay/bench.toml`'s rules (which keep the timestamp).
//! Measures messages relayed per second (deliveries / (D − 1) over the publishing window plus the
//! drain) and bus write → socket read latency (p50/p99), which includes the bus's own hop.
//!
//! The bus side speaks the buses' wire protocols directly (RESP for Redis, the NATS text protocol), so
//! the bench needs no client library of either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Connector, Ws};
use crate::report::Report;
use crate::stats::{self, Stats};
use crate::{Common, Target};

/// Which bus the messages go through.
#[derive(Debug, Clone, Copy, clap::ValueEnum, serde::Serialize)]
pub enum Bus {
    /// A Redis stream (`XADD {stream} * data {json}`).
    Redis,
    /// A NATS JetStream stream (`PUB {subject}`; the stream is created if missing).
    Nats,
}

/// Parameters of `relay`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct RelayArgs {
    /// The bus.
    #[arg(long, value_enum, default_value_t = Bus::Redis)]
    pub bus: Bus,
    /// Users, each with --devices connections.
    #[arg(long, short = 'u', default_value_t = 1000)]
    pub users: usize,
    /// Connections (devices) per user; device `d0` is every message's origin and receives none.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Bus messages per second.
    #[arg(long, short = 'r', default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of publishing.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Redis address (host:port) for --bus redis.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// The stream key (`[sources.redis_streams] streams` of the config).
    #[arg(long, default_value = "bench")]
    pub stream: String,
    /// NATS address (host:port) for --bus nats.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// The JetStream stream (created with subjects `bench.>` if missing).
    #[arg(long, default_value = "BENCH")]
    pub nats_stream: String,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to wait for late deliveries after the last message.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
}

/// `pusher:signin` for `user` from `device` on socket `socket_id`; waits for `pusher:signin_success`.
async fn sign_in(ws: &mut Ws, target: &Target, socket_id: &str, user: &str, device: &str) -> anyhow::Result<()> {
    let user_data = serde_json::json!({ "id": user, "device_id": device }).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(target.secret.as_bytes()).expect("any key length");
    mac.update(format!("{socket_id}::user::{user_data}").as_bytes());
    let auth = format!("{}:{}", target.key, hex::encode(mac.finalize().into_bytes()));
    let frame = serde_json::json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } });
    ws.send(Message::text(frame.to_string())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.context("waiting for pusher:signin_success")? {
            Some(Ok(Message::Text(t))) if t.as_str().contains("pusher:signin_success") => return Ok(()),
            Some(Ok(Message::Text(t))) if t.as_str().contains("pusher:error") => bail!("signin refused: {}", t.as_str()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended during signin"),
        }
    }
}

/// One bus message for user `u`.
fn message(u: usize, seq: u64) -> String {
    format!(r#"{{"type":"progress_update","user_id":"bench-{u}","device_id":"d0","position":{seq},"ts":{}}}"#, stats::now_us())
}

/// Appends one RESP command to `out`.
fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A writer into the bus.
enum Writer {
    Redis { stream: String, socket: tokio::net::tcp::OwnedWriteHalf },
    Nats { socket: TcpStream },
}

impl Writer {
    async fn connect(args: &RelayArgs, stop: &CancellationToken) -> anyhow::Result<Writer> {
        match args.bus {
            Bus::Redis => {
                let socket = TcpStream::connect(&args.redis).await.with_context(|| format!("redis at {}", args.redis))?;
                // No Nagle: a batch must not wait for the previous one's ACK (a bus measurement, not ours).
                socket.set_nodelay(true)?;
                let (mut read, write) = socket.into_split();
                // Replies are read and dropped (their count is not needed: the deliveries are counted).
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            n = read.read(&mut buf) => if !matches!(n, Ok(n) if n > 0) { return },
                        }
                    }
                });
                Ok(Writer::Redis { stream: args.stream.clone(), socket: write })
            }
            Bus::Nats => {
                let mut socket = TcpStream::connect(&args.nats).await.with_context(|| format!("nats at {}", args.nats))?;
                // nats-server never answers PUB: with Nagle on, each batch would wait for a delayed ACK (~40 ms).
                socket.set_nodelay(true)?;
                let mut reader = BufReader::new(&mut socket);
                let mut line = String::new();
                reader.read_line(&mut line).await?;
                if !line.starts_with("INFO") {
                    bail!("nats said {line:?}");
                }
                socket.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"herald-bench\",\"version\":\"0\"}\r\n").await?;
                // The stream, created if missing (an "already in use" answer is fine).
                let create = serde_json::json!({ "name": args.nats_stream, "subjects": ["bench.>"], "storage": "memory" }).to_string();
                let inbox = "_INBOX.herald-bench.create";
                let request =
                    format!("SUB {inbox} 1\r\nPUB $JS.API.STREAM.CREATE.{} {inbox} {}\r\n{create}\r\n", args.nats_stream, create.len());
                socket.write_all(request.as_bytes()).await?;
                let mut reader = BufReader::new(&mut socket);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        bail!("nats closed the connection");
                    }
                    if line.starts_with("-ERR") {
                        bail!("nats: {line}");
                    }
                    if line.starts_with("MSG") {
                        line.clear();
                        reader.read_line(&mut line).await?;
                        if line.contains("\"error\"") && !line.contains("already in use") {
                            bail!("creating the stream: {line}");
                        }
                        break;
                    }
                }
                socket.write_all(b"UNSUB 1\r\n").await?;
                Ok(Writer::Nats { socket })
            }
        }
    }

    /// Writes `messages` (user, JSON) in one go.
    async fn write(&mut self, messages: &[(usize, String)]) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(messages.len() * 200);
        match self {
            Writer::Redis { stream, socket } => {
                for (_, m) in messages {
                    resp(&mut out, &[b"XADD", stream.as_bytes(), b"*", b"data", m.as_bytes()]);
                }
                socket.write_all(&out).await?;
            }
            Writer::Nats { socket } => {
                for (u, m) in messages {
                    out.extend_from_slice(format!("PUB bench.{u} {}\r\n", m.len()).as_bytes());
                    out.extend_from_slice(m.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                socket.write_all(&out).await?;
            }
        }
        Ok(())
    }
}

/// Runs `relay` against the target.
pub async fn run(common: &Common, args: &RelayArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("relay", &common.label(), serde_json::to_value(args)?);
    let target = common.target();
    let devices = args.devices.max(2);
    let n = args.users * devices;
    let connector = Arc::new(Connector::new(target.clone(), n));

    // Connect and sign in every device.
    let pb = super::bar(n as u64, "signing in", common.quiet);
    let start = Instant::now();
    let mut opened = futures_util::stream::iter(0..n)
        .map(|i| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let (mut ws, id) = connector.open("").await?;
                sign_in(&mut ws, &target, &id, &format!("bench-{}", i / devices), &format!("d{}", i % devices)).await?;
                anyhow::Ok((i, ws))
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut sockets = Vec::with_capacity(n);
    let (mut failed, mut reasons) = (0usize, Vec::<String>::new());
    while let Some(r) = opened.next().await {
        pb.inc(1);
        match r {
            Ok(s) => sockets.push(s),
            Err(e) => {
                failed += 1;
                if reasons.len() < 5 {
                    reasons.push(format!("{e:#}"));
                }
            }
        }
    }
    drop(opened);
    pb.finish_and_clear();
    for r in &reasons {
        eprintln!("connect failure: {r}");
    }
    if sockets.is_empty() {
        bail!("no device could connect");
    }
    report.put("devices_connected", sockets.len() as u64);
    report.put("connect_failed", failed as u64);
    report.put("connect_secs", (start.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    // Devices that should receive (not the origin d0), per user.
    let mut receivers_of = vec![0u64; args.users];
    for (i, _) in &sockets {
        if i % devices != 0 {
            receivers_of[i / devices] += 1;
        }
    }

    let stats = Arc::new(Stats::new());
    let stop_readers = CancellationToken::new();
    let mut readers = JoinSet::new();
    let origin_got = Arc::new(AtomicU64::new(0));
    for (i, ws) in sockets {
        let (stats, stop) = (stats.clone(), stop_readers.clone());
        let origin_got = origin_got.clone();
        readers.spawn(async move {
            let seen = client::receive(ws, client::Protocol::Pusher, &stats, i, stop).await;
            if i % devices == 0 {
                origin_got.fetch_add(seen.events, Ordering::Relaxed);
            }
            seen
        });
    }
    let stop_sampler = CancellationToken::new();
    let sampler = tokio::spawn({
        let stats = stats.clone();
        stats::sample_rate(move || stats.received(), Duration::from_millis(100), stop_sampler.clone())
    });

    // Publish in 10 ms ticks.
    let stop_writer = CancellationToken::new();
    let mut writer = Writer::connect(args, &stop_writer).await?;
    let tick = Duration::from_millis(10);
    let per_tick = (args.rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut expected, mut owed) = (0u64, 0u64, 0f64);
    let start = Instant::now();
    let start_us = stats::now_us();
    let deadline = start + Duration::from_secs(args.duration);
    let pb = super::bar(args.duration, "publishing", common.quiet);
    let mut batch = Vec::new();
    while Instant::now() < deadline {
        interval.tick().await;
        owed += per_tick;
        batch.clear();
        while owed >= 1.0 {
            owed -= 1.0;
            let u = (sent as usize).wrapping_mul(7919) % args.users;
            batch.push((u, message(u, sent)));
            expected += receivers_of[u];
            sent += 1;
        }
        writer.write(&batch).await.context("writing to the bus")?;
        pb.set_position(start.elapsed().as_secs().min(args.duration));
        pb.set_message(format!("{} recv", stats.received()));
    }
    pb.finish_and_clear();
    let publish_secs = start.elapsed().as_secs_f64();

    // Wait until everything expected arrived, or nothing arrives for two seconds.
    let drain_until = Instant::now() + Duration::from_secs(args.drain);
    let (mut last, mut last_change) = (stats.received(), Instant::now());
    while stats.received() < expected && Instant::now() < drain_until && last_change.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if stats.received() != last {
            (last, last_change) = (stats.received(), Instant::now());
        }
    }
    stop_readers.cancel();
    stop_writer.cancel();
    let mut closed = 0u64;
    while let Some(Ok(seen)) = readers.join_next().await {
        closed += u64::from(seen.closed_with.is_some());
    }
    stop_sampler.cancel();
    report.rate_over_time = sampler.await.unwrap_or_default();

    let received = stats.received();
    let window = (stats.last_receive_us().saturating_sub(start_us) as f64 / 1e6).max(publish_secs).max(1e-3);
    let per_message = (devices - 1) as f64;
    report.put("messages_sent", sent);
    report.put("messages_per_sec_sent", (sent as f64 / publish_secs).round());
    report.put("expected_deliveries", expected);
    report.put("deliveries", received);
    report.put("messages_per_sec_relayed", (received as f64 / per_message / window).round());
    report.put("deliveries_per_sec", (received as f64 / window).round());
    report.put("lost", expected.saturating_sub(received));
    report.put("origin_device_got", origin_got.load(Ordering::Relaxed));
    report.put("closed_by_server", closed);
    report.latency(&stats.latency());
    if received == 0 {
        return Err(anyhow!("nothing was relayed: is herald running with examples/relay/bench.toml and the bus reachable?"));
    }
    Ok(report)
}
