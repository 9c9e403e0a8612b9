//! The app Herald serves when the config file defines none: the development app, with id, key
//! and secret taken from the flags when given, so `herald` with no config at all is usable for
//! development (`startup_log` warns when its public secret is served beyond loopback).

use herald_centrifugo::CentrifugoApp;
use herald_core::App;
use herald_pusher::PusherApp;

use super::{AppConfig, Cli};

/// The id of the app `herald` serves when its config defines none: numeric, because the Python, PHP and
/// Ruby Pusher SDKs accept only numeric app ids (key and secret stay `app-key` / `app-secret`).
pub const DEV_APP_ID: &str = "1";

/// The one app served without `[[apps]]`: the dev app, with `cli`'s id, key and secret if set.
pub(super) fn from_flags(cli: &Cli) -> AppConfig {
    let dev = PusherApp { api_requests_per_minute: None, ..PusherApp::dev() };
    let id = cli.app_id.clone().unwrap_or_else(|| DEV_APP_ID.to_string());
    let pusher = PusherApp {
        id: id.clone(),
        key: cli.app_key.clone().unwrap_or(dev.key.clone()),
        secret: cli.app_secret.clone().unwrap_or(dev.secret.clone()),
        ..dev
    };
    let centrifugo = CentrifugoApp::with_secret(id.clone(), pusher.secret.clone());
    AppConfig { app: App { id, ..App::dev() }, pusher, centrifugo }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Config, FileConfig};
    use super::*;

    #[test]
    fn defaults_give_the_dev_app() {
        let c = Config::resolve(FileConfig::default(), &Cli::default()).unwrap();
        assert_eq!((c.host.to_string().as_str(), c.port), ("127.0.0.1", 6001));
        assert_eq!(c.apps.len(), 1);
        let AppConfig { app, pusher, .. } = &c.apps[0];
        assert_eq!((app.id.as_str(), pusher.id.as_str()), (DEV_APP_ID, DEV_APP_ID));
        assert_eq!((pusher.key.as_str(), pusher.secret.as_str()), ("app-key", "app-secret"));
        assert!(app.enabled && pusher.enable_client_messages && pusher.enable_user_authentication && !pusher.enable_subscription_count);
        assert_eq!(c.pusher.activity_timeout, Duration::from_secs(120));
    }
}
