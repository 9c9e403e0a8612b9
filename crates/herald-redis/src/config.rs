//! How to reach Redis, why starting failed, and keeping credentials out of both.
//!
//! A Redis URL may carry a password (`redis://user:secret@host`). It is needed to connect and must
//! never reach a log line or an error message: everything this crate prints goes through [`redact`].

use std::fmt;
use std::time::Duration;

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every Redis channel name; deployments sharing a Redis use different prefixes.
    pub prefix: String,
    /// Publications queued for Redis before new ones are dropped (counted).
    pub publish_queue: usize,
    /// `url` lists seed nodes of a Redis Cluster (comma-separated); use sharded pub/sub.
    pub cluster: bool,
    /// How long a node's lease lives without renewal; a node silent this long is reaped (its presence
    /// members and counts taken out of the cluster) within one more reaper round.
    pub lease: Duration,
    /// Deadline of every Redis call made for a client or an API request (and of lease renewals): an
    /// outage answers an error within it. While Redis is known unreachable such calls fail at once.
    pub timeout: Duration,
    /// Redis Cluster only: pushed messages queued between the connection and the task that delivers
    /// them. Beyond it pushes are dropped (counted, `herald_redis_push_dropped_total`) and the node
    /// re-subscribes and reconciles its counts.
    pub push_queue: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald".into(),
            publish_queue: 65_536,
            cluster: false,
            lease: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            push_queue: 65_536,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("publish_queue", &self.publish_queue)
            .field("cluster", &self.cluster)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .field("push_queue", &self.push_queue)
            .finish()
    }
}

/// Why the broker could not start. The URL it carries is already [`redact`]ed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBrokerError {
    /// The URL is not a Redis URL.
    #[error("invalid redis url {url:?}: {source}")]
    Url {
        /// The URL given, credentials redacted.
        url: String,
        /// The parse error.
        source: redis::RedisError,
    },
    /// Redis did not answer at start-up.
    #[error("cannot reach redis at {url}: {source}")]
    Connect {
        /// The URL given, credentials redacted.
        url: String,
        /// The connection error.
        source: redis::RedisError,
    },
}

/// `url` with any credentials replaced by `***` (`redis://***@host:6379/0`). Handles the
/// comma-separated seed lists of a Redis Cluster, each seed on its own. Everything between the scheme
/// and the last `@` of a seed counts as credentials, so a password containing `@` or `/` is hidden too.
pub fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(seed: &str) -> String {
    let Some(at) = seed.rfind('@') else { return seed.to_string() };
    let start = seed.find("://").map_or(0, |i| i + 3);
    if start > at {
        return seed.to_string();
    }
    let lead = seed.len() - seed.trim_start().len();
    let start = start.max(lead);
    format!("{}***{}", &seed[..start], &seed[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_credentials_in_urls_and_seed_lists() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:s3cret@10.0.0.1:6379/2"), "redis://***@10.0.0.1:6379/2");
        assert_eq!(redact("rediss://bob:p@ss/word@host"), "rediss://***@host");
        assert_eq!(redact("bob:secret@host:1"), "***@host:1");
        assert_eq!(
            redact("redis://a:pw1@n1:7000, redis://n2:7001,redis://:pw3@n3:7002"),
            "redis://***@n1:7000, redis://n2:7001,redis://***@n3:7002"
        );
        assert_eq!(redact(""), "");
    }

    #[test]
    fn config_debug_redacts_the_url() {
        let config = RedisConfig { url: "redis://u:hunter2@h:1".into(), ..RedisConfig::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://***@h:1"), "{shown}");
    }
}
