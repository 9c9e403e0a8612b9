//! The server API's request bodies, as Centrifugo's clients send them: what each method reads, with
//! its defaults, and the few conversions to engine types.

use herald_core::SubscribeOverrides;
use serde::Deserialize;

pub(super) fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad request: {e}"))
}

/// `publish`'s body.
#[derive(Deserialize)]
pub(super) struct PublishRequest<'a> {
    pub(super) channel: String,
    #[serde(borrow, default)]
    pub(super) data: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub(super) b64data: Option<String>,
    #[serde(default)]
    pub(super) skip_history: bool,
    #[serde(default)]
    pub(super) tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(super) idempotency_key: Option<String>,
}

/// `broadcast`'s body.
#[derive(Deserialize)]
pub(super) struct BroadcastRequest<'a> {
    pub(super) channels: Vec<String>,
    #[serde(borrow, default)]
    pub(super) data: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub(super) b64data: Option<String>,
    #[serde(default)]
    pub(super) skip_history: bool,
    #[serde(default)]
    pub(super) tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(super) idempotency_key: Option<String>,
}

/// Which of a user's connections a request is for: all, or the one `client` (or `session`: Herald's
/// session id is the client id) names.
#[derive(Deserialize)]
pub(super) struct Target {
    pub(super) user: String,
    #[serde(default)]
    pub(super) client: Option<String>,
    #[serde(default)]
    pub(super) session: Option<String>,
}

/// A custom disconnect: Centrifugo's `{code, reason}`.
#[derive(Deserialize, Default)]
pub(super) struct CustomDisconnect {
    #[serde(default)]
    pub(super) code: u32,
    #[serde(default)]
    pub(super) reason: String,
}

/// `disconnect`'s body.
#[derive(Deserialize)]
pub(super) struct DisconnectRequest {
    #[serde(flatten)]
    pub(super) target: Target,
    #[serde(default)]
    pub(super) whitelist: Vec<String>,
    #[serde(default)]
    pub(super) disconnect: Option<CustomDisconnect>,
}

/// `unsubscribe`'s body.
#[derive(Deserialize)]
pub(super) struct UserChannelRequest {
    #[serde(flatten)]
    pub(super) target: Target,
    pub(super) channel: String,
}

/// `subscribe`'s body.
#[derive(Deserialize)]
pub(super) struct SubscribeRequest<'a> {
    #[serde(flatten)]
    pub(super) target: Target,
    pub(super) channel: String,
    #[serde(borrow, default)]
    pub(super) data: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub(super) b64data: Option<String>,
    #[serde(borrow, default)]
    pub(super) info: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub(super) b64info: Option<String>,
    #[serde(default)]
    pub(super) recover_since: Option<Since>,
    #[serde(default, rename = "override")]
    pub(super) overrides: Option<Overrides>,
}

/// One override: Centrifugo's `{"value": bool}`.
#[derive(Deserialize, Clone, Copy)]
pub(super) struct BoolValue {
    #[serde(default)]
    pub(super) value: bool,
}

/// `subscribe`'s `override`.
#[derive(Deserialize, Default)]
pub(super) struct Overrides {
    #[serde(default)]
    pub(super) presence: Option<BoolValue>,
    #[serde(default)]
    pub(super) join_leave: Option<BoolValue>,
    #[serde(default)]
    pub(super) force_push_join_leave: Option<BoolValue>,
    #[serde(default)]
    pub(super) force_recovery: Option<BoolValue>,
    #[serde(default)]
    pub(super) force_positioning: Option<BoolValue>,
}

impl Overrides {
    pub(super) fn engine(&self) -> SubscribeOverrides {
        let value = |o: Option<BoolValue>| o.map(|o| o.value);
        SubscribeOverrides {
            presence: value(self.presence),
            join_leave: value(self.join_leave),
            force_push_join_leave: value(self.force_push_join_leave),
            force_recovery: value(self.force_recovery),
            force_positioning: value(self.force_positioning),
        }
    }
}

/// `refresh`'s body.
#[derive(Deserialize)]
pub(super) struct RefreshRequest {
    #[serde(flatten)]
    pub(super) target: Target,
    #[serde(default)]
    pub(super) expired: bool,
    #[serde(default)]
    pub(super) expire_at: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct ChannelRequest {
    pub(super) channel: String,
}

/// A stream position; either field may be left out (protobuf-JSON clients omit zero values).
#[derive(Deserialize)]
pub(super) struct Since {
    #[serde(default)]
    pub(super) offset: u64,
    #[serde(default)]
    pub(super) epoch: String,
}

#[derive(Deserialize)]
pub(super) struct HistoryRequest {
    pub(super) channel: String,
    #[serde(default)]
    pub(super) limit: i64,
    #[serde(default)]
    pub(super) since: Option<Since>,
    #[serde(default)]
    pub(super) reverse: bool,
}

#[derive(Deserialize, Default)]
pub(super) struct ChannelsRequest {
    #[serde(default)]
    pub(super) pattern: String,
}
