//! Building the [`Config`] the server runs with: reading the file, then layering defaults, the
//! file, `HERALD_*` env and flags (clap has already merged those two), key by key, validating as
//! it goes. The apps, webhooks and engine are resolved by their own modules.

use std::net::IpAddr;
use std::time::Duration;

use herald_centrifugo::CentrifugoConfig;
use herald_pusher::PusherConfig;

use super::app::{validate_apps, FileApp};
use super::seconds::{positive_duration, Seconds, MAX_TIMEOUT_SECS};
use super::{dev_app, engine, webhooks, AppConfig, Cli, Config, ConfigError, FileConfig, Secret};
use crate::ip_limits::IpLimits;
use crate::listener::HttpConfig;
use crate::tls::TlsFiles;

impl Config {
    /// Layers defaults, the file named by `cli.config`, and `cli` (flags and env).
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source: Box::new(source) })?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, cli)
    }

    /// Applies `cli` on top of `file` and validates the result.
    pub fn resolve(file: FileConfig, cli: &Cli) -> Result<Config, ConfigError> {
        // Resolved while `file` is whole; an error is returned where the engine comes below, so the
        // first bad key reported stays the same.
        let engine = engine::resolve(cli, &file);
        let defaults = PusherConfig::default();
        let activity = cli.activity_timeout.or(file.activity_timeout).unwrap_or(defaults.activity_timeout.as_secs());
        if activity == 0 || activity > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Invalid(format!(
                "activity_timeout must be 1 to {MAX_TIMEOUT_SECS} seconds (pusher-js requires at least 1)"
            )));
        }
        let pong = cli.pong_timeout.or(file.pong_timeout).unwrap_or(defaults.pong_timeout.as_secs());
        if pong == 0 || pong > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Invalid(format!("pong_timeout must be 1 to {MAX_TIMEOUT_SECS} seconds")));
        }
        let seconds = |key: &str, flag: Option<f64>, file: Option<Seconds>, default: Duration| match flag.or(file.map(Seconds::get)) {
            Some(secs) => positive_duration(key, secs),
            None => Ok(default),
        };
        let header_timeout = seconds("header_timeout", cli.header_timeout, file.header_timeout, HttpConfig::default().header_timeout)?;
        let write_timeout = seconds("write_timeout", cli.write_timeout, file.write_timeout, defaults.write_timeout)?;
        let body_timeout = seconds("body_timeout", cli.body_timeout, file.body_timeout, defaults.body_timeout)?;
        let max_connections = cli.max_connections.or(file.max_connections).unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(ConfigError::Invalid("max_connections must be positive".into()));
        }
        let webhooks = webhooks::targets(&file.apps)?;
        let mut apps: Vec<AppConfig> = if file.apps.is_empty() {
            vec![dev_app::from_flags(cli)]
        } else {
            file.apps.into_iter().map(FileApp::into_app).collect::<Result<_, _>>()?
        };
        // An app's own API rate limit, else the server-wide one, else the default; 0 is no limit.
        let api_rate = cli.api_requests_per_minute.or(file.api_requests_per_minute);
        for app in &mut apps {
            let limit = app.pusher.api_requests_per_minute.or(api_rate).unwrap_or(herald_pusher::DEFAULT_API_REQUESTS_PER_MINUTE);
            app.pusher.api_requests_per_minute = (limit > 0).then_some(limit);
        }
        validate_apps(&apps)?;
        herald_ingest::validate_all(&file.sources, |id| apps.iter().any(|a| a.app.id == id))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let ip = IpLimits {
            max_connections_per_ip: cli.max_connections_per_ip.or(file.max_connections_per_ip),
            connects_per_ip_per_minute: cli.connects_per_ip_per_minute.or(file.connects_per_ip_per_minute),
        };
        if ip.max_connections_per_ip == Some(0) || ip.connects_per_ip_per_minute == Some(0) {
            return Err(ConfigError::Invalid(
                "max_connections_per_ip and connects_per_ip_per_minute must be positive (omit them for no limit)".into(),
            ));
        }
        let tls = match (cli.tls_cert.clone().or(file.tls_cert), cli.tls_key.clone().or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("tls_cert and tls_key go together: set both or neither".into())),
        };
        let admin_token = cli.admin_token.clone().or(file.admin_token);
        if admin_token.as_ref().is_some_and(|Secret(t)| t.len() < 16 || t.trim() != t) {
            return Err(ConfigError::Invalid("admin_token must be at least 16 characters, without surrounding spaces".into()));
        }
        Ok(Config {
            latency_histograms: cli.latency_histograms.or(file.latency_histograms).unwrap_or(true),
            sources: file.sources,
            admin_token,
            tls,
            host: cli.host.or(file.host).unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: cli.port.or(file.port).unwrap_or(6001),
            log: cli.log.clone().or(file.log).unwrap_or_else(|| "info".into()),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            apps,
            pusher: PusherConfig {
                activity_timeout: Duration::from_secs(activity),
                pong_timeout: Duration::from_secs(pong),
                max_request_body: cli.max_request_body.or(file.max_request_body).unwrap_or(defaults.max_request_body),
                max_connections,
                body_timeout,
                webhooks,
                write_timeout,
            },
            centrifugo: CentrifugoConfig {
                ping_interval: match file.centrifugo_ping_interval {
                    Some(s) => positive_duration("centrifugo_ping_interval", s.get())?,
                    None => CentrifugoConfig::default().ping_interval,
                },
                expired_grace: match file.centrifugo_expired_grace {
                    Some(s) => positive_duration("centrifugo_expired_grace", s.get())?,
                    None => CentrifugoConfig::default().expired_grace,
                },
                max_connections,
                write_timeout,
                ..CentrifugoConfig::default()
            },
            http: HttpConfig { header_timeout, ip },
            shutdown_grace: Duration::from_secs(cli.shutdown_grace.or(file.shutdown_grace).unwrap_or(10)),
            engine: engine?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::test_support::parse;
    use super::super::DEV_APP_ID;
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let file = parse("port = 7000\nactivity_timeout = 30\n");
        let cli = Cli { port: Some(7001), app_id: Some("i".into()), app_key: Some("k".into()), ..Cli::default() };
        let c = Config::resolve(file, &cli).unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(c.pusher.activity_timeout, Duration::from_secs(30));
        assert_eq!((c.apps[0].app.id.as_str(), c.apps[0].pusher.id.as_str()), ("i", "i"));
        assert_eq!((c.apps[0].pusher.key.as_str(), c.apps[0].pusher.secret.as_str()), ("k", "app-secret"));
    }

    #[test]
    fn the_shipped_relay_example_loads_and_bad_sources_fail_clearly() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/relay/seed-sync.toml"));
        let c = Config::load(&Cli { config: Some(path), ..Cli::default() }).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!((c.sources[0].name.as_str(), c.sources[0].app.as_str()), ("sync", "app-id"));
        assert_eq!(c.sources[0].rules.len(), 3);
        let bench = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/relay/bench.toml"));
        let c = Config::load(&Cli { config: Some(bench), ..Cli::default() }).unwrap();
        assert_eq!(c.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["bench-redis", "bench-nats"]);
        let err = |text: &str| Config::resolve(parse(text), &Cli::default()).unwrap_err().to_string();
        // The default config's dev app.
        let source = format!(
            "[[sources]]\nname = 's'\napp = '{DEV_APP_ID}'\n[sources.redis_streams]\nurl = 'redis://127.0.0.1'\nstreams = ['x']\ngroup = 'g'\n"
        );
        let source = source.as_str();
        let rule = "[[sources.rules]]\nuser = '{u}'\nevent = 'e'\n";
        assert!(Config::resolve(parse(&format!("{source}{rule}")), &Cli::default()).is_ok());
        assert!(err(source).contains("no [[sources.rules]]"));
        assert!(err(&format!("{}{rule}", source.replace(&format!("'{DEV_APP_ID}'"), "'nope'"))).contains("no app"));
        assert!(err(&format!("{source}[[sources.rules]]\nuser = '{{u'\nevent = 'e'\n")).contains("rule 1"));
        assert!(err(&format!("{}{rule}", source.replace("batch", "x").replace("group = 'g'", "group = 'g'\nbatch = 0"))).contains("batch"));
        assert!(err(&format!("{}{rule}", source.replace("redis://127.0.0.1", "nope://x"))).contains("redis_streams.url"));
        assert!(toml::from_str::<FileConfig>(&format!("{source}{rule}unknown = 1\n")).is_err(), "unknown keys are rejected");
    }

    #[test]
    fn bad_values_fail_clearly() {
        let err = |text: &str| Config::resolve(parse(text), &Cli::default()).unwrap_err().to_string();
        assert!(err("activity_timeout = 0").contains("activity_timeout"));
        assert!(err("[[apps]]\nid='a'\nkey='k'\nsecret='s'\n[[apps]]\nid='a'\nkey='k2'\nsecret='s'").contains("duplicate app id"));
        assert!(err("[[apps]]\nid='a'\nkey='k'\nsecret='s'\nmax_event_size=0").contains("max_event_size"));
        assert!(toml::from_str::<FileConfig>("nonsense_key = 1").is_err(), "unknown keys are rejected");
    }
}
