//! Pusher signatures: channel and user authorisation tokens, and HTTP API request signing.
//!
//! Every comparison goes through [`hmac::Mac::verify_slice`], which is constant-time.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far an HTTP API request's `auth_timestamp` may be from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

fn mac(secret: &str, message: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac
}

/// Hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    hex::encode(mac(secret, message.as_bytes()).finalize().into_bytes())
}

/// Whether `signature_hex` is the HMAC of `message` under `secret` (constant time).
pub fn verify(secret: &str, message: &str, signature_hex: &str) -> bool {
    match hex::decode(signature_hex) {
        Ok(sig) => mac(secret, message.as_bytes()).verify_slice(&sig).is_ok(),
        Err(_) => false,
    }
}

/// Checks a subscription/sign-in token `key:hexsig` against `message`.
pub fn verify_token(key: &str, secret: &str, message: &str, token: &str) -> bool {
    match token.split_once(':') {
        Some((k, sig)) => k == key && verify(secret, message, sig),
        None => false,
    }
}

/// The string a private/presence subscription signs.
pub fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a user sign-in signs.
pub fn user_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Hex MD5 of an HTTP body, as in `body_md5`.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Why an HTTP API request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestAuthError {
    /// A required `auth_*` parameter is missing.
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    #[error("auth_key does not match the app")]
    WrongKey,
    /// `auth_version` is not `1.0`.
    #[error("unsupported auth_version")]
    BadVersion,
    /// `auth_timestamp` is not a number or too far from now.
    #[error("auth_timestamp is more than {MAX_CLOCK_SKEW_SECS} s from the server's clock")]
    StaleTimestamp,
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMismatch,
    /// The signature is wrong.
    #[error("invalid auth_signature")]
    BadSignature,
}

/// Verifies a signed HTTP API request. `query` is the raw query string; values are URL-decoded before
/// the string to sign (`METHOD\nPATH\nsorted_query`) is built, as the Pusher SDKs sign decoded values.
pub fn verify_request(key: &str, secret: &str, method: &str, path: &str, query: &str, body: &[u8]) -> Result<(), RequestAuthError> {
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.to_lowercase(), v.into_owned())).collect();
    let get = |name: &'static str| -> Result<String, RequestAuthError> {
        params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).ok_or(RequestAuthError::Missing(name))
    };
    let signature = get("auth_signature")?;
    if get("auth_key")? != key {
        return Err(RequestAuthError::WrongKey);
    }
    if get("auth_version")? != "1.0" {
        return Err(RequestAuthError::BadVersion);
    }
    let timestamp: u64 = get("auth_timestamp")?.parse().map_err(|_| RequestAuthError::StaleTimestamp)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
        return Err(RequestAuthError::StaleTimestamp);
    }
    if !body.is_empty() && get("body_md5")? != body_md5(body) {
        return Err(RequestAuthError::BodyMismatch);
    }
    params.retain(|(k, _)| k != "auth_signature");
    params.sort();
    let query = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let message = format!("{method}\n{path}\n{query}");
    if verify(secret, &message, &signature) {
        Ok(())
    } else {
        Err(RequestAuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_pusher_docs() {
        // The worked example from Pusher's authentication docs.
        let sig = sign("7ad3773142a6692b25b8", "1234.1234:private-foobar");
        assert_eq!(sig, "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert!(verify_token(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &channel_message("1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
        ));
        assert!(!verify_token("278d425bdf160c739803", "7ad3773142a6692b25b8", "1234.1234:private-foobar", "wrong:58df"));
        assert!(!verify_token("k", "s", "m", "k:not-hex"));
        assert!(!verify_token("k", "s", "m", "no-colon"));
    }

    fn signed_query(key: &str, secret: &str, method: &str, path: &str, body: &[u8], ts: u64) -> String {
        let mut q = format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0");
        if !body.is_empty() {
            q = format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={}", body_md5(body));
        }
        let sig = sign(secret, &format!("{method}\n{path}\n{q}"));
        format!("{q}&auth_signature={sig}")
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn verifies_signed_requests() {
        let body = br#"{"name":"e","channel":"c","data":"{}"}"#;
        let q = signed_query("k", "s", "POST", "/apps/1/events", body, now());
        assert_eq!(verify_request("k", "s", "POST", "/apps/1/events", &q, body), Ok(()));
        assert_eq!(verify_request("k", "s", "POST", "/apps/1/events", &q, b"{}"), Err(RequestAuthError::BodyMismatch));
        assert_eq!(verify_request("k", "other", "POST", "/apps/1/events", &q, body), Err(RequestAuthError::BadSignature));
        assert_eq!(verify_request("k2", "s", "POST", "/apps/1/events", &q, body), Err(RequestAuthError::WrongKey));
        let stale = signed_query("k", "s", "POST", "/apps/1/events", body, now() - 601);
        assert_eq!(verify_request("k", "s", "POST", "/apps/1/events", &stale, body), Err(RequestAuthError::StaleTimestamp));
        assert_eq!(verify_request("k", "s", "GET", "/x", "auth_key=k", b""), Err(RequestAuthError::Missing("auth_signature")));
    }

    #[test]
    fn decodes_query_values_before_signing() {
        let ts = now();
        let decoded = format!("auth_key=k&auth_timestamp={ts}&auth_version=1.0&info=user_count,subscription_count");
        let sig = sign("s", &format!("GET\n/apps/1/channels\n{decoded}"));
        let sent = format!("info=user_count%2Csubscription_count&auth_key=k&auth_timestamp={ts}&auth_version=1.0&auth_signature={sig}");
        assert_eq!(verify_request("k", "s", "GET", "/apps/1/channels", &sent, b""), Ok(()));
    }
}
