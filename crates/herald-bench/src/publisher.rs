//! Publishing through an HTTP API the same way a backend SDK does: the Pusher API
//! (`POST /apps/{id}/events`, signed), so any Pusher-compatible server can be measured, or the
//! Centrifugo server API (`POST /apps/{id}/api/publish` with `X-API-Key`).

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

/// The HTTP API the bench publishes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// The Pusher HTTP API: event `bench` with the payload as its (string) data.
    Pusher,
    /// The Centrifugo server API: the payload as the publication's JSON data.
    Centrifugo,
}

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

    /// Publishes `data` (a JSON object) on `channel` through the target's API; returns the HTTP
    /// status (a Centrifugo API error answered with 200 counts as a failure: 500).
    pub async fn publish(&self, channel: &str, data: &str) -> anyhow::Result<u16> {
        match self.target.api {
            Api::Pusher => self.trigger(channel, data).await,
            Api::Centrifugo => self.centrifugo_publish(channel, data).await,
        }
    }

    async fn centrifugo_publish(&self, channel: &str, data: &str) -> anyhow::Result<u16> {
        let body = format!(r#"{{"channel":{},"data":{data}}}"#, serde_json::Value::from(channel));
        let uri = format!("http://{}/apps/{}/api/publish", self.target.addr, self.target.app_id);
        let req = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("x-api-key", &self.target.secret)
            .body(Full::new(Bytes::from(body)))
            .context("request")?;
        let res = self.http.request(req).await.context("publish request")?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if status == 200 && body.windows(8).any(|w| w == b"\"error\":") {
            return Ok(500);
        }
        Ok(status)
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
