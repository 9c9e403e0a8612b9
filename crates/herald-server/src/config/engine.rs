//! The engine section: memory or Redis, and the Redis keys (`redis_url`, `redis_prefix`,
//! `redis_lease`, `redis_timeout`, `redis_cluster`) resolved into one [`EngineConfig`]; apart from
//! the other keys because they only matter, and are only checked, when the engine is Redis.

use std::time::Duration;

use herald_redis::RedisConfig;
use serde::Deserialize;

use super::seconds::{positive_duration, Seconds};
use super::{Cli, ConfigError, FileConfig};

/// Which engine carries publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process only: one node.
    Memory,
    /// Nodes sharing one Redis behave as one server.
    Redis,
}

/// The resolved engine settings. `Debug` masks the Redis password.
#[derive(Debug, Clone)]
pub enum EngineConfig {
    /// In-process only.
    Memory,
    /// Through Redis.
    Redis(RedisConfig),
}

/// Default of `redis_timeout`.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The engine from flags over the file; with Redis, its keys validated.
pub(super) fn resolve(cli: &Cli, file: &FileConfig) -> Result<EngineConfig, ConfigError> {
    Ok(match cli.engine.or(file.engine).unwrap_or(EngineKind::Memory) {
        EngineKind::Memory => EngineConfig::Memory,
        EngineKind::Redis => {
            let d = RedisConfig::default();
            let prefix = cli.redis_prefix.clone().or(file.redis_prefix.clone()).unwrap_or(d.prefix);
            if prefix.is_empty() || prefix.contains([':', '{', '}']) {
                return Err(ConfigError::Invalid("redis_prefix must be non-empty and contain no ':', '{' or '}'".into()));
            }
            let lease = cli.redis_lease.or(file.redis_lease).map_or(d.lease, Duration::from_secs);
            if lease.is_zero() {
                return Err(ConfigError::Invalid("redis_lease must be at least 1 second".into()));
            }
            let cluster = cli.redis_cluster || file.redis_cluster;
            let timeout = match cli.redis_timeout.or(file.redis_timeout.map(Seconds::get)) {
                Some(secs) => positive_duration("redis_timeout", secs)?,
                None => DEFAULT_REDIS_TIMEOUT,
            };
            EngineConfig::Redis(RedisConfig {
                url: cli.redis_url.clone().or(file.redis_url.clone()).map_or(d.url, |u| u.0),
                prefix,
                lease,
                cluster,
                timeout,
                ..d
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::super::Config;
    use super::*;

    #[test]
    fn engine_from_file_and_flags() {
        let c = Config::resolve(parse("engine = \"redis\"\nredis_prefix = \"blue\"\n"), &Cli::default()).unwrap();
        match c.engine {
            EngineConfig::Redis(r) => assert_eq!((r.url.as_str(), r.prefix.as_str()), ("redis://127.0.0.1:6379", "blue")),
            EngineConfig::Memory => panic!("expected redis"),
        }
        let cli = Cli { engine: Some(EngineKind::Memory), ..Cli::default() };
        assert!(matches!(Config::resolve(parse("engine = \"redis\"\n"), &cli).unwrap().engine, EngineConfig::Memory));
        assert!(Config::resolve(parse("engine = \"redis\"\nredis_prefix = \"a:b\"\n"), &Cli::default()).is_err());
        assert!(toml::from_str::<FileConfig>("engine = \"nats\"\n").is_err());
    }
}
