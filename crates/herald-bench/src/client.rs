//! The Pusher client side of the bench: opening connections (spread over loopback source addresses so one
//! machine can open more than 64k), subscribing, and reading deliveries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::stats::{self, Stats};
use crate::Target;

/// One client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Connections per loopback source address.
const PER_SOURCE: usize = 40_000;
/// Local ports the bench assigns itself (explicitly: letting `bind(ip, 0)` search for a free port is
/// slow once thousands of ports sit in TIME_WAIT, and its range is only the ~28k ephemeral ports).
const PORTS: std::ops::Range<u32> = 10_000..65_000;
/// How long a handshake or subscription may take before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// One local source address and the next port to try on it.
struct Source {
    ip: IpAddr,
    next_port: AtomicU32,
}

/// Opens client connections to one target.
pub struct Connector {
    target: Target,
    sources: Vec<Source>,
    next: AtomicUsize,
    next_server: AtomicUsize,
}

impl Connector {
    /// A connector that will open about `connections` sockets; on loopback it spreads them over
    /// 127.0.0.1, 127.0.0.2, ... so one machine can open more than one address's worth of ports.
    pub fn new(target: Target, connections: usize) -> Connector {
        // Start each run at a different port so the previous run's TIME_WAIT ports are not hit first.
        let offset =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) % PORTS.len() as u32;
        let ips: Vec<IpAddr> = if target.addr.ip().is_loopback() {
            let n = connections.div_ceil(PER_SOURCE).clamp(1, 250);
            (0..n).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8))).collect()
        } else {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        };
        let sources = ips.into_iter().map(|ip| Source { ip, next_port: AtomicU32::new(offset) }).collect();
        Connector { target, sources, next: AtomicUsize::new(0), next_server: AtomicUsize::new(0) }
    }

    /// A connected TCP stream from the next source address and a free port on it.
    async fn tcp(&self, server: SocketAddr) -> anyhow::Result<TcpStream> {
        let mut last_error = None;
        for _ in 0..64 {
            let source = &self.sources[self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
            let socket = TcpSocket::new_v4()?;
            if source.ip.is_unspecified() {
                return Ok(tokio::time::timeout(STEP_TIMEOUT, socket.connect(server)).await.context("connect timed out")??);
            }
            let port = PORTS.start + source.next_port.fetch_add(1, Ordering::Relaxed) % PORTS.len() as u32;
            // SO_REUSEADDR: a port whose old connection is in TIME_WAIT may be bound again.
            socket.set_reuseaddr(true)?;
            if let Err(e) = socket.bind(SocketAddr::new(source.ip, port as u16)) {
                last_error = Some(e);
                continue;
            }
            match tokio::time::timeout(STEP_TIMEOUT, socket.connect(server)).await.context("connect timed out")? {
                Ok(stream) => return Ok(stream),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable) => last_error = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow!("no free local port: {last_error:?}"))
    }

    /// Opens one connection and waits for `pusher:connection_established`; returns the socket id.
    /// `query` is appended to the upgrade URL (the ceiling server reads its channel from it).
    pub async fn open(&self, query: &str) -> anyhow::Result<(Ws, String)> {
        let server = match self.target.spread.len() {
            0 => self.target.addr,
            // Hashed, not round-robin: round-robin would line up with the channel assignment (i % C) and
            // put whole channels on one node.
            n => {
                let k = self.next_server.fetch_add(1, Ordering::Relaxed) as u64;
                self.target.spread[(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize % n]
            }
        };
        let stream = self.tcp(server).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{server}/app/{}?protocol=7&client=herald-bench&version=0.1{query}", self.target.key);
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (mut ws, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async_with_config(url, stream, Some(config)))
            .await
            .context("handshake timed out")??;
        let established = expect(&mut ws, "pusher:connection_established", None).await?;
        let data: serde_json::Value = serde_json::from_str(established["data"].as_str().unwrap_or("{}"))?;
        let id = data["socket_id"].as_str().ok_or_else(|| anyhow!("no socket_id"))?.to_string();
        Ok((ws, id))
    }
}

/// Subscribes to a public channel and waits for the confirmation.
pub async fn subscribe(ws: &mut Ws, channel: &str) -> anyhow::Result<()> {
    let frame = serde_json::json!({ "event": "pusher:subscribe", "data": { "channel": channel } });
    ws.send(Message::text(frame.to_string())).await?;
    expect(ws, "pusher_internal:subscription_succeeded", Some(channel)).await?;
    Ok(())
}

/// Reads frames until one named `event` (on `channel`) arrives; answers pings on the way.
async fn expect(ws: &mut Ws, event: &str, channel: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.with_context(|| format!("waiting for {event}"))?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                if v["event"] == "pusher:error" {
                    bail!("server error: {}", v["data"]);
                }
                if v["event"] == event && channel.is_none_or(|c| v["channel"] == c) {
                    return Ok(v);
                }
                if v["event"] == "pusher:ping" {
                    ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#)).await?;
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// Bench events received.
    pub events: u64,
    /// The close code, if the server closed the connection (e.g. 4100 for a slow consumer).
    pub closed_with: Option<u16>,
}

/// Reads deliveries until `stop`, recording each bench event's publish→receive latency.
pub async fn receive(mut ws: Ws, stats: &Stats, shard: usize, stop: CancellationToken) -> Received {
    let mut seen = Received::default();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if let Some(sent) = stats::sent_at(t.as_str()) {
                    stats.record(shard, sent);
                    seen.events += 1;
                } else if t.as_str().contains("\"pusher:ping\"") {
                    let _ = ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#)).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                seen.closed_with = Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                seen.closed_with = Some(1006);
                break;
            }
        }
    }
    seen
}
