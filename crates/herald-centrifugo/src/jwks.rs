//! Public keys from an app's JWKS endpoint (`token_jwks_url`), for RS*/PS*/ES* connection and
//! subscription tokens that name their key with `kid`.
//!
//! The set is fetched at start, refreshed every [`REFRESH_EVERY`] by a task that stops on shutdown,
//! and fetched again when a token names a `kid` the cache does not have — at most once per
//! [`MIN_REFRESH`] (a flood of tokens with made-up `kid`s can't turn into a flood of requests to the
//! identity provider; concurrent ones wait for the same fetch). A failed fetch keeps the keys known so
//! far. Only public keys are taken (RSA and EC; an `oct` secret in a JWKS is ignored), at most
//! [`MAX_KEYS`] from a body of at most [`MAX_BODY`] bytes; a key whose `alg` is given must match the
//! token's. HTTPS is verified against the Mozilla roots (`webpki-roots`).
//!
//! Fetching is async; verification stays synchronous: a session awaits [`Jwks::ensure`] for the
//! token's `kid` before it verifies.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the set is fetched again while nothing asks for an unknown key.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Least time between two fetches caused by unknown `kid`s.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS body read.
pub const MAX_BODY: usize = 1 << 20;
/// Most keys kept from one set.
pub const MAX_KEYS: usize = 100;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("invalid JWKS URL {0:?} (http:// or https:// with a host)")]
    Url(String),
    /// Connecting, TLS, or the HTTP exchange failed, or took longer than [`FETCH_TIMEOUT`].
    #[error("fetching the JWKS failed: {0}")]
    Fetch(String),
    /// Not a 200 with a JSON key set.
    #[error("the JWKS answer is not a key set: {0}")]
    Body(String),
}

/// One public key of the set.
struct Key {
    key: DecodingKey,
    /// `RSA` or `EC`, to match the token's algorithm family.
    rsa: bool,
    /// The `alg` the set says the key is for, if it says.
    alg: Option<Algorithm>,
}

/// An app's JWKS: the keys by `kid`, and when they were last fetched.
pub struct Jwks {
    url: Uri,
    https: bool,
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// Serialises fetches; holds when the last fetch for an unknown `kid` started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set fetched from `url` (nothing is fetched yet).
    pub fn new(url: &str) -> Result<Jwks, JwksError> {
        let uri: Uri = url.parse().map_err(|_| JwksError::Url(url.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(JwksError::Url(url.into())),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(JwksError::Url(url.into()));
        }
        Ok(Jwks { url: uri, https, keys: RwLock::new(Arc::default()), fetching: tokio::sync::Mutex::new(None) })
    }

    /// The key `kid` for a token signed with `alg`, if the cache has it and it fits `alg`.
    pub(crate) fn key(&self, kid: &str, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let key = keys.get(kid)?;
        let rsa =
            matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512);
        let ec = matches!(alg, Algorithm::ES256 | Algorithm::ES384);
        let fits = (key.rsa && rsa || !key.rsa && ec) && key.alg.is_none_or(|a| a == alg);
        fits.then(|| key.key.clone())
    }

    /// Whether the cache has `kid`.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(kid)
    }

    /// Makes sure the cache has `kid` if the set does: an unknown `kid` fetches the set again, unless a
    /// fetch for an unknown `kid` started less than [`MIN_REFRESH`] ago.
    pub async fn ensure(&self, kid: &str) {
        if self.has(kid) {
            return;
        }
        let mut last = self.fetching.lock().await;
        // Another caller may have fetched it while this one waited.
        if self.has(kid) || !may_refresh(*last, Instant::now()) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh_locked().await {
            tracing::warn!(error = %e, url = %self.url, "JWKS refresh for an unknown kid failed");
        }
    }

    /// Fetches the set now and replaces the cache (a failure keeps it).
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _serial = self.fetching.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<usize, JwksError> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| JwksError::Fetch(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        let keys = parse(&body)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        metrics::counter!("herald_jwks_fetches_total").increment(1);
        Ok(n)
    }

    async fn fetch(&self) -> Result<Bytes, JwksError> {
        let fetch_err = |e: &dyn std::fmt::Display| JwksError::Fetch(e.to_string());
        let host = self.url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = self.url.port_u16().unwrap_or(if self.https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| fetch_err(&e))?;
        let _ = tcp.set_nodelay(true);
        let path = self.url.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.url.authority().map_or(host.clone(), |a| a.to_string());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            // One exchange per connection: the connection task ends with it.
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_err(&e))?;
        let response = if self.https {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| fetch_err(&e))?;
            let tls = tls_connector().connect(name, tcp).await.map_err(|e| fetch_err(&e))?;
            send(TokioIo::new(tls), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        if response.status() != hyper::StatusCode::OK {
            return Err(JwksError::Body(format!("HTTP status {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(|e| JwksError::Body(e.to_string()))?;
        Ok(body.to_bytes())
    }

    /// Fetches the set now, then every [`REFRESH_EVERY`] until `shutdown`.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, url = %self.url, "JWKS fetch failed; keeping the keys known so far");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
    }
}

/// Whether a fetch for an unknown `kid` may start at `now`, the last one having started at `last`.
fn may_refresh(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= MIN_REFRESH)
}

async fn send<I>(io: I, request: hyper::Request<Empty<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, JwksError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| JwksError::Fetch(e.to_string()))?;
    // Drives the connection for this one exchange (`Connection: close`), never past FETCH_TIMEOUT.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(FETCH_TIMEOUT, conn).await;
    });
    sender.send_request(request).await.map_err(|e| JwksError::Fetch(e.to_string()))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The public keys with a `kid` of a JWKS body (keys that can't be used are skipped, not fatal).
fn parse(body: &[u8]) -> Result<HashMap<String, Key>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| JwksError::Body(e.to_string()))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        if keys.len() >= MAX_KEYS {
            tracing::warn!(max = MAX_KEYS, "JWKS has more keys than kept; the rest are ignored");
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else { continue };
        let rsa = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => true,
            AlgorithmParameters::EllipticCurve(_) => false,
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            Some(Ok(alg)) => Some(alg),
            Some(Err(_)) => continue,
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        keys.insert(kid, Key { key, rsa, alg });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 2048-bit RSA public key and a P-256 public key, as a JWKS would carry them.
    const SET: &str = r#"{"keys":[
        {"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","e":"AQAB","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"},
        {"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"oct","kid":"h1","k":"c2VjcmV0"},
        {"kty":"RSA","e":"AQAB","n":"sXch"},
        {"kty":"EC","kid":"bad","crv":"P-256","x":"!!","y":"??"}
    ]}"#;

    #[test]
    fn parses_public_keys_by_kid_and_matches_the_family() {
        let jwks = Jwks::new("http://127.0.0.1:1/jwks.json").unwrap();
        *jwks.keys.write().unwrap() = Arc::new(parse(SET.as_bytes()).unwrap());
        assert!(jwks.key("r1", Algorithm::RS256).is_some());
        assert!(jwks.key("r1", Algorithm::RS512).is_none(), "the set says RS256");
        assert!(jwks.key("r1", Algorithm::ES256).is_none(), "an RSA key never verifies an ECDSA token");
        assert!(jwks.key("e1", Algorithm::ES256).is_some());
        assert!(jwks.key("e1", Algorithm::RS256).is_none());
        assert!(!jwks.has("h1"), "secrets in a JWKS are ignored");
        assert!(parse(b"{}").is_err() && parse(b"nope").is_err());
    }

    #[test]
    fn urls() {
        assert!(Jwks::new("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(Jwks::new("ftp://idp.example/jwks").is_err());
        assert!(Jwks::new("/jwks").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refresh_at_most_once_per_interval() {
        let start = Instant::now();
        assert!(may_refresh(None, start));
        assert!(!may_refresh(Some(start), start));
        tokio::time::advance(MIN_REFRESH - Duration::from_millis(1)).await;
        assert!(!may_refresh(Some(start), Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(may_refresh(Some(start), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_keeps_the_keys_and_is_rate_limited() {
        // Nothing listens on port 1: every fetch fails at once.
        let jwks = Jwks::new("http://127.0.0.1:1/jwks.json").unwrap();
        *jwks.keys.write().unwrap() = Arc::new(parse(SET.as_bytes()).unwrap());
        jwks.ensure("unknown").await;
        assert!(jwks.has("r1"), "a failed fetch keeps the keys known so far");
        let first = jwks.fetching.lock().await.expect("a fetch was tried");
        jwks.ensure("unknown").await;
        assert_eq!(*jwks.fetching.lock().await, Some(first), "no second fetch within MIN_REFRESH");
        tokio::time::advance(MIN_REFRESH).await;
        jwks.ensure("unknown").await;
        assert!(jwks.fetching.lock().await.is_some_and(|t| t > first), "a fetch again after MIN_REFRESH");
    }
}
