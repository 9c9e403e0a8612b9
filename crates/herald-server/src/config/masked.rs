//! Config values that hold secrets (the Redis URL's password, the admin token), in types whose
//! `Debug` does not show them, so printing the config or logging it leaks nothing.

use herald_redis::redact;
use serde::Deserialize;

/// A Redis URL as given in the config; its `Debug` masks the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(s.to_string()))
    }
}

/// A secret from the config (the admin token); its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, Captured};
    use super::super::{Cli, Config, EngineConfig, EngineKind, FileConfig};
    use super::*;

    #[test]
    fn redis_password_is_not_in_debug_output_or_the_startup_log() {
        let url = "redis://alice:hunter2@db:6379/0";
        let cli = Cli { engine: Some(EngineKind::Redis), redis_url: Some(RedisUrl(url.into())), ..Cli::default() };
        let file = parse("redis_url = 'redis://:hunter2@other'\n");
        assert!(!format!("{cli:?}").contains("hunter2"), "{cli:?}");
        assert!(!format!("{file:?}").contains("hunter2"), "{file:?}");
        let c = Config::resolve(file, &cli).unwrap();
        match &c.engine {
            EngineConfig::Redis(r) => assert_eq!(r.url, url, "the real URL is used"),
            EngineConfig::Memory => panic!("expected redis"),
        }
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && debug.contains("redis://***@db:6379/0"), "{debug}");

        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || c.log_started("127.0.0.1:6001".parse().unwrap()));
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("herald listening") && log.contains("redis://***@db:6379/0"), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
    }

    #[tokio::test]
    async fn start_up_errors_do_not_quote_the_redis_password() {
        // herald-redis quotes the URL (redacted) when it cannot parse it.
        let url = "redis://alice:hunter2@127.0.0.1:notaport";
        let cli = Cli { engine: Some(EngineKind::Redis), redis_url: Some(RedisUrl(url.into())), ..Cli::default() };
        let c = Config::resolve(FileConfig::default(), &cli).unwrap();
        let Err(e) = crate::Herald::start(&c).await else { panic!("{url} is not a valid URL") };
        let text = format!("{e:#}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***@127.0.0.1"), "still says which URL: {text}");
    }
}
