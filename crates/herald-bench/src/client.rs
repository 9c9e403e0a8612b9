//! The client side of the bench: opening connections (spread over loopback source addresses so one
//! machine can open more than 64k), subscribing, and reading deliveries, in the Pusher protocol or
//! the Centrifugo protocol (JSON or protobuf, see [`crate::centrifugo`]).

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

use crate::centrifugo::{self, Encoding, Item};
use crate::stats::{self, Stats};
use crate::Target;

/// The client protocol the bench speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Pusher Channels v7 (`/app/{key}`).
    #[default]
    Pusher,
    /// Centrifugo client protocol v2, JSON (`/apps/{id}/connection/websocket`).
    CentrifugoJson,
    /// Centrifugo client protocol v2, protobuf (the `centrifuge-protobuf` subprotocol).
    CentrifugoProtobuf,
}

impl Protocol {
    /// The Centrifugo encoding, for the Centrifugo protocols.
    pub fn centrifugo(self) -> Option<Encoding> {
        match self {
            Protocol::Pusher => None,
            Protocol::CentrifugoJson => Some(Encoding::Json),
            Protocol::CentrifugoProtobuf => Some(Encoding::Protobuf),
        }
    }
}

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
    /// Numbers the Centrifugo users (`bench-{n}`) the connections authenticate as.
    next_user: AtomicUsize,
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
        Connector { target, sources, next: AtomicUsize::new(0), next_server: AtomicUsize::new(0), next_user: AtomicUsize::new(0) }
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

    /// Opens one connection and waits until it is established: `pusher:connection_established`
    /// (returns the socket id), or the Centrifugo connect reply (returns the user the connection
    /// authenticated as). `query` is appended to a Pusher upgrade URL (the ceiling server reads its
    /// channel from it).
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
        if let Some(encoding) = self.target.protocol.centrifugo() {
            return self.open_centrifugo(server, stream, encoding).await;
        }
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

impl Connector {
    async fn open_centrifugo(&self, server: SocketAddr, stream: TcpStream, encoding: Encoding) -> anyhow::Result<(Ws, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{server}/apps/{}/connection/websocket", self.target.app_id).into_client_request()?;
        if encoding == Encoding::Protobuf {
            request.headers_mut().insert("sec-websocket-protocol", centrifugo::PROTOBUF_SUBPROTOCOL.parse()?);
        }
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (mut ws, response) =
            tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async_with_config(request, stream, Some(config)))
                .await
                .context("handshake timed out")??;
        if encoding == Encoding::Protobuf && response.headers().get("sec-websocket-protocol").is_none() {
            bail!("the server did not accept the {} subprotocol", centrifugo::PROTOBUF_SUBPROTOCOL);
        }
        let user = format!("bench-{}", self.next_user.fetch_add(1, Ordering::Relaxed));
        ws.send(centrifugo::connect(encoding, centrifugo::connection_token(&self.target.secret, &user)?)).await?;
        expect_reply(&mut ws, encoding, 1).await.context("connect")?;
        Ok((ws, user))
    }

    /// Subscribes connection `id` (as [`Connector::open`] returned it) to a channel and waits for the
    /// confirmation. A Centrifugo subscription carries a subscription token, so it is allowed
    /// whatever the channel's options.
    pub async fn subscribe(&self, ws: &mut Ws, channel: &str, id: &str) -> anyhow::Result<()> {
        match self.target.protocol.centrifugo() {
            None => subscribe(ws, channel).await,
            Some(encoding) => {
                ws.send(centrifugo::subscribe(encoding, channel, centrifugo::subscription_token(&self.target.secret, id, channel)?))
                    .await?;
                expect_reply(ws, encoding, 2).await.with_context(|| format!("subscribe to {channel}"))
            }
        }
    }
}

/// Reads Centrifugo frames until the reply to command `id`; answers pings on the way.
async fn expect_reply(ws: &mut Ws, encoding: Encoding, id: u32) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.with_context(|| format!("waiting for the reply to command {id}"))?;
        let msg = match msg {
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        };
        let Some(payload) = centrifugo::payload(encoding, &msg) else { continue };
        let mut ping = false;
        let mut done = None;
        for item in centrifugo::items(encoding, payload)? {
            match item {
                Item::Ping => ping = true,
                Item::Reply(got, error) if got == id => done = Some(error),
                Item::Reply(..) | Item::Push(_) => {}
            }
        }
        if ping {
            ws.send(centrifugo::pong(encoding)).await?;
        }
        match done {
            Some(None) => return Ok(()),
            Some(Some((code, message))) => bail!("server error {code}: {message}"),
            None => {}
        }
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
pub async fn receive(mut ws: Ws, protocol: Protocol, stats: &Stats, shard: usize, stop: CancellationToken) -> Received {
    let mut seen = Received::default();
    let encoding = protocol.centrifugo();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        if let (Some(encoding), Some(Ok(msg))) = (encoding, &msg) {
            if let Some(payload) = centrifugo::payload(encoding, msg) {
                let mut ping = false;
                // A frame that does not parse is skipped (counted as losses if it held publications).
                for item in centrifugo::items(encoding, payload).unwrap_or_default() {
                    match item {
                        Item::Push(push) => {
                            if let Some(sent) = stats::sent_at_bytes(push) {
                                stats.record(shard, sent);
                                seen.events += 1;
                            }
                        }
                        Item::Ping => ping = true,
                        Item::Reply(..) => {}
                    }
                }
                if ping {
                    let _ = ws.send(centrifugo::pong(encoding)).await;
                }
                continue;
            }
        }
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
