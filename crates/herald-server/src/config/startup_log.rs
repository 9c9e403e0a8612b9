//! What Herald logs once it listens: the start-up line, and a warning when the dev app's public
//! secret is served beyond loopback. Here because it reads only the config, and its secrets must
//! stay masked (see `masked`).

use std::net::SocketAddr;

use herald_pusher::PusherApp;
use herald_redis::redact;

use super::{Config, EngineConfig};

impl Config {
    /// Apps that still use the dev app's public secret while Herald listens beyond loopback: anyone
    /// could sign API requests and channel auth for them.
    pub fn exposed_dev_secrets(&self) -> Vec<&str> {
        if self.host.is_loopback() {
            return Vec::new();
        }
        let dev = PusherApp::dev().secret;
        self.apps.iter().filter(|a| a.pusher.secret == dev).map(|a| a.app.id.as_str()).collect()
    }

    /// Logs the start-up line (listen address, apps, engine, Redis URL with its password masked), and
    /// a warning when the dev app's public secret is served beyond loopback.
    pub fn log_started(&self, addr: SocketAddr) {
        for app in self.exposed_dev_secrets() {
            tracing::warn!(
                app,
                %addr,
                "app uses the public development secret \"app-secret\" on a non-loopback address: anyone can publish and \
                 authorize channels; set a secret (HERALD_APP_SECRET or [[apps]] secret)"
            );
        }
        let apps: Vec<&str> = self.apps.iter().map(|a| a.app.id.as_str()).collect();
        match &self.engine {
            EngineConfig::Memory => tracing::info!(%addr, ?apps, engine = "memory", "herald listening"),
            EngineConfig::Redis(redis) => {
                tracing::info!(%addr, ?apps, engine = "redis", redis = %redact(&redis.url), prefix = %redis.prefix, "herald listening")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Captured;
    use super::super::{Cli, FileConfig, DEV_APP_ID};
    use super::*;

    #[test]
    fn dev_secret_on_a_public_address_is_flagged() {
        let c = Config::resolve(FileConfig::default(), &Cli::default()).unwrap();
        assert!(c.exposed_dev_secrets().is_empty(), "loopback is fine");
        let public = Cli { host: Some("0.0.0.0".parse().unwrap()), ..Cli::default() };
        let c = Config::resolve(FileConfig::default(), &public).unwrap();
        assert_eq!(c.exposed_dev_secrets(), vec![DEV_APP_ID]);
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || c.log_started("0.0.0.0:6001".parse().unwrap()));
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN") && log.contains("public development secret"), "{log}");
        let own = Cli { app_secret: Some("a-real-secret".into()), ..public };
        assert!(Config::resolve(FileConfig::default(), &own).unwrap().exposed_dev_secrets().is_empty());
    }
}
