//! Durations in seconds as the config gives them (whole or decimal) and the range every timeout
//! must fall in, shared by the server, app and engine keys.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Longest keep-alive timeout accepted (a day): beyond it, deadlines would overflow the clock.
pub(super) const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A duration in seconds in the config file: an integer or a decimal (`10`, `0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub(super) enum Seconds {
    Whole(u64),
    Decimal(f64),
}

impl Seconds {
    pub(super) fn get(self) -> f64 {
        match self {
            Seconds::Whole(n) => n as f64,
            Seconds::Decimal(x) => x,
        }
    }
}

/// `secs` as a positive duration, or an error naming `key`.
pub(super) fn positive_duration(key: &str, secs: f64) -> Result<Duration, ConfigError> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(86_400) => Ok(d),
        _ => Err(ConfigError::Invalid(format!("{key} must be a number of seconds above 0 and at most 86400, got {secs}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::super::{Cli, Config, FileConfig};
    use super::*;

    #[test]
    fn timeouts_parse_and_validate() {
        let c = Config::resolve(FileConfig::default(), &Cli::default()).unwrap();
        assert_eq!((c.http.header_timeout, c.pusher.body_timeout), (Duration::from_secs(10), Duration::from_secs(10)));
        let c = Config::resolve(parse("header_timeout = 0.5\nbody_timeout = 3\nwrite_timeout = 4\n"), &Cli::default()).unwrap();
        assert_eq!((c.http.header_timeout, c.pusher.body_timeout), (Duration::from_millis(500), Duration::from_secs(3)));
        assert_eq!(c.pusher.write_timeout, Duration::from_secs(4));
        let err = |text: &str, cli: &Cli| Config::resolve(parse(text), cli).unwrap_err().to_string();
        let none = Cli::default();
        assert!(err("header_timeout = 0", &none).contains("header_timeout"));
        assert!(err("body_timeout = -1", &none).contains("body_timeout"));
        assert!(err("write_timeout = 0", &none).contains("write_timeout"));
        assert!(err("body_timeout = 1e30", &none).contains("body_timeout"));
        assert!(err("max_connections = 0", &none).contains("max_connections"));
        assert!(err("engine = 'redis'\nredis_timeout = 0", &none).contains("redis_timeout"));
        assert!(Config::resolve(parse("engine = 'redis'\nredis_timeout = 0.25"), &none).is_ok());
        let cli = Cli { redis_timeout: Some(f64::NAN), ..Cli::default() };
        assert!(err("engine = 'redis'", &cli).contains("redis_timeout"));
        assert!(toml::from_str::<FileConfig>("header_timeout = 'soon'").is_err());
    }
}
