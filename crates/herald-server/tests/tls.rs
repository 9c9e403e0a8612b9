//! TLS over real sockets: a certificate made by the test (openssl), a rustls client that trusts only
//! it, WebSocket over TLS, and a certificate reload that keeps established connections.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use herald_pusher::PusherConfig;
use herald_server::{AppConfig, Herald, Tls, TlsFiles};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for 127.0.0.1 and localhost, written into `dir` as `{name}.pem` and
/// `{name}.key`.
fn make_cert(dir: &Path, name: &str) -> TlsFiles {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    TlsFiles { cert, key }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-tls-{}-{}", std::process::id(), fastrand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A TLS client that trusts only `ca`.
fn connector(ca: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens `wss://127.0.0.1/app/app-key` trusting only `ca`; returns the socket and the server's leaf
/// certificate.
async fn wss(addr: std::net::SocketAddr, ca: &Path) -> Result<(Wss, Vec<u8>), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector(ca).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let url = format!("wss://127.0.0.1:{}/app/app-key?protocol=7", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.map_err(|e| e.to_string())?;
    Ok((ws, leaf))
}

async fn next_event(ws: &mut Wss) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a frame within 5 s").unwrap().unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

fn der(files: &TlsFiles) -> Vec<u8> {
    CertificateDer::pem_file_iter(&files.cert).unwrap().next().unwrap().unwrap().to_vec()
}

#[tokio::test]
async fn websockets_over_tls_and_a_reload_that_drops_nobody() {
    let dir = temp_dir();
    let first = make_cert(&dir, "first");
    let live = TlsFiles { cert: dir.join("live.pem"), key: dir.join("live.key") };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let tls = Tls::load(live.clone()).unwrap();
    let server = serve(Herald::new(vec![AppConfig::dev()], PusherConfig::default()).with_tls(tls)).await;

    // A plaintext request gets no HTTP answer from a TLS listener.
    assert!(!plaintext_answered(server.addr).await, "no plaintext HTTP on a TLS listener");

    let (mut old, leaf) = wss(server.addr, &first.cert).await.unwrap();
    assert_eq!(leaf, der(&first));
    assert_eq!(next_event(&mut old).await["event"], "pusher:connection_established");
    old.send_json(json!({"event":"pusher:subscribe","data":{"channel":"news"}})).await;
    assert_eq!(next_event(&mut old).await["event"], "pusher_internal:subscription_succeeded");

    // Renew: new files in place, reload.
    let second = make_cert(&dir, "second");
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    assert!(server.herald.reload_tls().unwrap());

    // New connections get the new certificate (and one trusting only the old fails).
    let (mut new, leaf) = wss(server.addr, &second.cert).await.unwrap();
    assert_eq!(leaf, der(&second));
    assert_eq!(next_event(&mut new).await["event"], "pusher:connection_established");
    assert!(wss(server.addr, &first.cert).await.is_err(), "the old certificate is no longer served");

    // The connection made before the reload is still served.
    server
        .herald
        .trigger("app-id", &herald_pusher::Trigger { name: "e", data: "after reload", channels: &["news".into()], socket_id: None })
        .await
        .unwrap();
    let event = next_event(&mut old).await;
    assert_eq!((event["event"].as_str(), event["data"].as_str()), (Some("e"), Some("after reload")));

    // A reload from a broken file keeps the current certificate.
    std::fs::write(&live.key, "not a key").unwrap();
    assert!(server.herald.reload_tls().is_err());
    let (_, leaf) = wss(server.addr, &second.cert).await.unwrap();
    assert_eq!(leaf, der(&second));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unusable_certificates_fail_at_load() {
    let dir = temp_dir();
    let good = make_cert(&dir, "good");
    let other = make_cert(&dir, "other");
    let missing = TlsFiles { cert: dir.join("nope.pem"), key: good.key.clone() };
    assert!(Tls::load(missing).unwrap_err().to_string().contains("nope.pem"));
    let mismatched = TlsFiles { cert: good.cert.clone(), key: other.key.clone() };
    assert!(Tls::load(mismatched).is_err(), "a key that does not match the certificate is refused");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a plaintext HTTP request to `addr` is answered with HTTP.
async fn plaintext_answered(addr: std::net::SocketAddr) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(5)).await.unwrap_or_default();
    got.starts_with(b"HTTP/")
}

trait SendJson {
    async fn send_json(&mut self, v: Value);
}

impl SendJson for Wss {
    async fn send_json(&mut self, v: Value) {
        use futures_util::SinkExt;
        self.send(Message::text(v.to_string())).await.unwrap();
    }
}
