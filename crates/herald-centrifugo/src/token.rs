//! Connection and subscription JWTs, verified with `jsonwebtoken` (no hand-rolled crypto).
//!
//! The key is chosen by the token's algorithm family, never by anything else the token says: HS*
//! tokens are checked with the app's HMAC secret, RS*/PS* with its RSA public key, ES* with its ECDSA
//! key. A family without a configured key is refused, so an HS256 token "signed" with the public RSA
//! key (algorithm confusion) and `alg: none` tokens never verify. Expiry is checked here (not by the
//! library) so that an expired token can be told apart (error 109: the client fetches a new one).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::CentrifugoApp;
use crate::jwks::Jwks;

/// Longest token accepted (bytes).
pub const MAX_TOKEN: usize = 16 * 1024;

/// A configured key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM text is not a key of that kind.
    #[error("app {app:?}: invalid {kind} public key: {source}")]
    Pem {
        /// The app.
        app: String,
        /// `RSA` or `ECDSA`.
        kind: &'static str,
        /// Why.
        source: jsonwebtoken::errors::Error,
    },
    /// The JWKS URL is not usable.
    #[error("app {app:?}: {source}")]
    Jwks {
        /// The app.
        app: String,
        /// Why.
        source: crate::jwks::JwksError,
    },
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Malformed, badly signed, wrong algorithm, audience or issuer.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid but past its `exp`.
    #[error("token expired")]
    Expired,
}

/// Claims of a connection token.
#[derive(Debug, Clone, Default)]
pub struct ConnectClaims {
    /// The user (`sub`); empty for anonymous.
    pub user: String,
    /// When the connection expires (Unix seconds), from `expire_at` or `exp`.
    pub expire_at: Option<u64>,
    /// Connection info (`info`, or `b64info` decoded), as JSON text.
    pub info: Option<Bytes>,
    /// Server-side subscriptions (`channels` and the keys of `subs`).
    pub channels: Vec<String>,
    /// The device the connection is from (Herald's `device` claim): publications from it can exclude it.
    pub device: Option<String>,
}

/// Claims of a subscription token.
#[derive(Debug, Clone, Default)]
pub struct SubscribeClaims {
    /// The user the token is for (must be the connection's).
    pub user: String,
    /// The channel it is for.
    pub channel: String,
    /// When the subscription expires (Unix seconds).
    pub expire_at: Option<u64>,
    /// Channel info, as JSON text.
    pub info: Option<Bytes>,
}

#[derive(Deserialize)]
struct RawConnect {
    #[serde(default)]
    sub: String,
    exp: Option<u64>,
    expire_at: Option<u64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    subs: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    device: Option<String>,
}

#[derive(Deserialize)]
struct RawSubscribe {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    channel: String,
    exp: Option<u64>,
    expire_at: Option<u64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
}

/// Verifies one app's tokens.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// The verifier of `app`'s keys.
    pub fn new(app: &CentrifugoApp) -> Result<Verifier, KeyError> {
        let pem = |kind: &'static str, text: &Option<String>, read: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
            text.as_ref().map(|t| read(t.as_bytes()).map_err(|source| KeyError::Pem { app: app.id.clone(), kind, source })).transpose()
        };
        Ok(Verifier {
            hmac: app.token_hmac_secret.as_ref().filter(|s| !s.is_empty()).map(|s| DecodingKey::from_secret(s.as_bytes())),
            rsa: pem("RSA", &app.token_rsa_public_key, DecodingKey::from_rsa_pem)?,
            ecdsa: pem("ECDSA", &app.token_ecdsa_public_key, DecodingKey::from_ec_pem)?,
            jwks: app
                .token_jwks_url
                .as_deref()
                .map(|url| Jwks::new(url).map(Arc::new).map_err(|source| KeyError::Jwks { app: app.id.clone(), source }))
                .transpose()?,
            audience: app.token_audience.clone(),
            issuer: app.token_issuer.clone(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let public = |pem: &Option<DecodingKey>| match (&self.jwks, header.kid.as_deref()) {
            // A token naming its key is verified with that key of the JWKS, and only with it.
            (Some(jwks), Some(kid)) => jwks.key(kid, header.alg),
            _ => pem.clone(),
        };
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.clone(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                public(&self.rsa)
            }
            Algorithm::ES256 | Algorithm::ES384 => public(&self.ecdsa),
            _ => None,
        };
        let key = key.ok_or_else(|| TokenError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.leeway = 0;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        jsonwebtoken::decode::<T>(token, &key, &validation).map(|data| data.claims).map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// The app's JWKS, if it has a `token_jwks_url`.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Before verifying `token`: if it names a key (`kid`) for an RS*/PS*/ES* algorithm and the app
    /// has a JWKS that does not know it, fetches the set again (rate-limited, see [`crate::jwks`]).
    pub async fn prepare(&self, token: &str) {
        let Some(jwks) = &self.jwks else { return };
        if token.len() > MAX_TOKEN {
            return;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else { return };
        let public = !matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        if let (true, Some(kid)) = (public, header.kid.as_deref()) {
            jwks.ensure(kid).await;
        }
    }

    /// Verifies a connection token at `now` (Unix seconds).
    pub fn connect(&self, token: &str, now: u64) -> Result<ConnectClaims, TokenError> {
        let raw: RawConnect = self.decode(token)?;
        let expire_at = raw.expire_at.or(raw.exp).filter(|&t| t > 0);
        if raw.exp.is_some_and(|exp| exp > 0 && exp <= now) {
            return Err(TokenError::Expired);
        }
        let info = info(raw.info, raw.b64info)?;
        let mut channels = raw.channels;
        channels.extend(raw.subs.into_keys());
        Ok(ConnectClaims { user: raw.sub, expire_at, info, channels, device: raw.device.filter(|d| !d.is_empty()) })
    }

    /// Verifies a subscription token at `now` (Unix seconds).
    pub fn subscribe(&self, token: &str, now: u64) -> Result<SubscribeClaims, TokenError> {
        let raw: RawSubscribe = self.decode(token)?;
        if raw.exp.is_some_and(|exp| exp > 0 && exp <= now) {
            return Err(TokenError::Expired);
        }
        let info = info(raw.info, raw.b64info)?;
        Ok(SubscribeClaims { user: raw.sub, channel: raw.channel, expire_at: raw.expire_at.or(raw.exp).filter(|&t| t > 0), info })
    }
}

fn info(info: Option<Box<RawValue>>, b64info: Option<String>) -> Result<Option<Bytes>, TokenError> {
    if let Some(raw) = info {
        return Ok(Some(Bytes::from(String::from(Box::<str>::from(raw)))));
    }
    let Some(b64) = b64info else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| TokenError::Invalid("b64info is not base64".into()))?;
    // JSON clients carry info as JSON: binary info that is not JSON is refused rather than corrupted.
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|_| TokenError::Invalid("b64info is not JSON".into()))?;
    Ok(Some(Bytes::from(bytes)))
}
