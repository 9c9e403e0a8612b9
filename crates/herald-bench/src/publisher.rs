//! Publishing through the Pusher HTTP API (`POST /apps/{id}/events`, signed), the same way a backend
//! SDK does, so any Pusher-compatible server can be measured.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::Target;

/// A keep-alive HTTP client that signs Pusher API requests.
#[derive(Clone)]
pub struct Publisher {
    target: Target,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Publisher {
    /// A publisher for `target`.
    pub fn new(target: Target) -> Publisher {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(connector);
        Publisher { target, http }
    }

    /// Triggers event `bench` with `data` on `channel`; returns the HTTP status.
    pub async fn trigger(&self, channel: &str, data: &str) -> anyhow::Result<u16> {
        let body = serde_json::json!({ "name": "bench", "channel": channel, "data": data }).to_string();
        let path = format!("/apps/{}/events", self.target.app_id);
        let uri = format!("http://{}{}?{}", self.target.addr, path, self.signed_query("POST", &path, &body));
        let req =
            hyper::Request::post(uri).header("content-type", "application/json").body(Full::new(Bytes::from(body))).context("request")?;
        let res = self.http.request(req).await.context("publish request")?;
        let status = res.status().as_u16();
        // Drain the body so the connection is reused.
        let _ = res.into_body().collect().await;
        Ok(status)
    }

    fn signed_query(&self, method: &str, path: &str, body: &str) -> String {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let md5 = hex::encode(Md5::digest(body.as_bytes()));
        let query = format!("auth_key={}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}", self.target.key);
        let mut mac = Hmac::<Sha256>::new_from_slice(self.target.secret.as_bytes()).expect("any key length");
        mac.update(format!("{method}\n{path}\n{query}").as_bytes());
        format!("{query}&auth_signature={}", hex::encode(mac.finalize().into_bytes()))
    }
}
