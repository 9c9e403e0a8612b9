//! The machine's fan-out ceiling: a minimal raw WebSocket server with no protocol logic.
//!
//! It answers the upgrade by hand, sends a canned `connection_established`, answers the first thing a
//! client sends with a canned `subscription_succeeded`, and on publish writes one pre-encoded frame to
//! every socket of the channel (named in the upgrade URL's `channel=` query). Each socket has a writer
//! task that drains its queue in one `write_all`, as Herald's sessions do; whatever Herald spends above
//! this is protocol and engine overhead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Frames a socket may have queued; a publish waits for room (backpressure, nothing is dropped).
const QUEUE: usize = 64;

/// Sockets by channel; each list is copied on write so a publish can iterate it without the lock.
type Registry = Arc<Mutex<HashMap<String, Arc<Vec<mpsc::Sender<Bytes>>>>>>;

/// A running ceiling server.
pub struct Ceiling {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    channels: Registry,
}

/// Encodes an unmasked server text frame.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x81);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n < 65536 => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.put_slice(payload);
    b.freeze()
}

impl Ceiling {
    /// Starts listening on 127.0.0.1:0; every task stops on `shutdown`.
    pub async fn start(shutdown: CancellationToken, tasks: TaskTracker) -> anyhow::Result<Ceiling> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let channels: Registry = Arc::default();
        let registry = channels.clone();
        let inner = tasks.clone();
        tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let registry = registry.clone();
                let stop = shutdown.clone();
                inner.spawn(async move {
                    let _ = serve(stream, registry, stop).await;
                });
            }
        });
        Ok(Ceiling { addr, channels })
    }

    /// Queues `frame` to every socket on `channel`, waiting where a queue is full; returns how many
    /// sockets it was queued for.
    pub async fn publish(&self, channel: &str, frame: &Bytes) -> usize {
        let sockets = self.channels.lock().expect("registry").get(channel).cloned();
        let mut n = 0;
        for s in sockets.iter().flat_map(|v| v.iter()) {
            if s.send(frame.clone()).await.is_ok() {
                n += 1;
            }
        }
        n
    }
}

async fn serve(mut stream: TcpStream, registry: Registry, stop: CancellationToken) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let head_end = loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            bail!("closed during handshake");
        }
        len += n;
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if len == buf.len() {
            bail!("request head too large");
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("head")?;
    let key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim()))
        .context("no key")?;
    let channel = head
        .lines()
        .next()
        .and_then(|l| l.split_once("channel="))
        .map(|(_, rest)| rest.split([' ', '&']).next().unwrap_or("").to_string())
        .unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    let established = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.1\",\"activity_timeout\":120}"}"#;
    stream.write_all(&text_frame(established.as_bytes())).await?;

    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    Arc::make_mut(registry.lock().expect("registry").entry(channel.clone()).or_default()).push(tx.clone());
    let succeeded =
        text_frame(format!(r#"{{"event":"pusher_internal:subscription_succeeded","channel":"{channel}","data":"{{}}"}}"#).as_bytes());
    let (mut read, mut write) = stream.into_split();
    let reader = async move {
        // The client's subscribe (and anything else) is read and discarded; the first read is answered.
        let mut sink = vec![0u8; 1024];
        let mut answered = false;
        while let Ok(n) = read.read(&mut sink).await {
            if n == 0 {
                break;
            }
            if !answered {
                answered = true;
                let _ = tx.send(succeeded.clone()).await;
            }
        }
    };
    let writer = async move {
        let mut batch = BytesMut::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
            }
            if write.write_all(&batch).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = reader => {}
        _ = writer => {}
    }
    Ok(())
}
