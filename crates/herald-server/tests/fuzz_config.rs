//! Property tests of configuration: any config file (random bytes, TOML-ish text, every known key with
//! values of random types and ranges) and any flag values load to a valid [`Config`] or a clean
//! [`ConfigError`], never a panic; what loads satisfies the documented invariants and starts a server.
//! Values at the edge of what loads must not panic the server later either (last tests here).
//!
//! Cases per property: 512, or `PROPTEST_CASES`. Nothing is persisted: a failure prints the minimal
//! input; `PROPTEST_RNG_SEED` repeats a run.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_server::{AppConfig, Cli, Config, ConfigError, EngineConfig, EngineKind, Herald};
use proptest::prelude::*;
use serde_json::{json, Value};

/// 512 cases per property unless `PROPTEST_CASES` says otherwise; no regression files are written.
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { base.cases } else { 512 };
    ProptestConfig { cases, failure_persistence: None, ..base }
}

/// A config file in this process's temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("herald-fuzz-config-{}-{}.toml", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Loads `contents` as the config file, with `cli` flags on top.
fn load(contents: &[u8], cli: Cli) -> Result<Config, ConfigError> {
    let file = TempFile::new(contents);
    Config::load(&Cli { config: Some(file.0.clone()), ..cli })
}

/// What a loaded config promises (README: bad values fail at start-up, nothing is silently defaulted).
fn check_invariants(config: &Config) -> Result<(), TestCaseError> {
    prop_assert!(config.pusher.activity_timeout >= Duration::from_secs(1));
    prop_assert!(config.pusher.pong_timeout >= Duration::from_secs(1));
    prop_assert!(!config.apps.is_empty());
    let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
    for AppConfig { app, pusher, .. } in &config.apps {
        prop_assert!(!app.id.is_empty() && !pusher.key.is_empty() && !pusher.secret.is_empty());
        prop_assert_eq!(&app.id, &pusher.id, "the engine app and its Pusher settings name the same app");
        prop_assert!(ids.insert(&app.id), "duplicate id {:?}", app.id);
        prop_assert!(keys.insert(&pusher.key), "duplicate key {:?}", pusher.key);
        let l = &app.limits;
        prop_assert!(l.max_channels_per_connection > 0 && l.max_presence_members > 0 && l.max_presence_member_size > 0);
        prop_assert!(l.max_event_size > 0 && l.outbox.max_messages > 0 && l.outbox.max_bytes > 0);
    }
    for (app, targets) in &config.pusher.webhooks {
        prop_assert!(ids.contains(app), "webhooks for unknown app {:?}", app);
        prop_assert!(targets.iter().all(|t| t.url.starts_with("http://")));
    }
    if let EngineConfig::Redis(redis) = &config.engine {
        prop_assert!(!redis.prefix.is_empty() && !redis.prefix.contains([':', '{', '}']), "prefix {:?}", redis.prefix);
        prop_assert!(!redis.lease.is_zero());
    }
    Ok(())
}

/// Builds the server a loaded config describes (engine, front, webhooks), then shuts it down.
fn build_server(config: &Config) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let herald = Herald::new(config.apps.clone(), config.pusher.clone());
        let _ = herald.router();
        herald.drain(Duration::from_millis(100)).await;
    });
}

/// `key = value` lines.
type Pairs = Vec<(String, Toml)>;

/// A rendered TOML value, valid or not.
#[derive(Debug, Clone)]
enum Toml {
    Raw(String),
    Arr(Vec<Toml>),
    Table(Vec<(String, Toml)>),
}

impl Toml {
    fn render(&self) -> String {
        match self {
            Toml::Raw(s) => s.clone(),
            Toml::Arr(items) => format!("[{}]", items.iter().map(Toml::render).collect::<Vec<_>>().join(", ")),
            Toml::Table(fields) => {
                format!(
                    "{{ {} }}",
                    fields.iter().map(|(k, v)| format!("{} = {}", render_key(k), v.render())).collect::<Vec<_>>().join(", ")
                )
            }
        }
    }
}

fn render_key(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        key.to_string()
    } else {
        basic_string(key)
    }
}

/// A TOML basic string holding `s` exactly.
fn basic_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn integer() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![0i64, 1, 2, 10, 60, 65535, 65536, -1, i64::MAX, i64::MIN]).prop_map(|n| n.to_string()),
        6 => (0i64..100_000).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec!["18446744073709551615", "9223372036854775808", "1_000", "0x10", "0o7", "0b1", "+3", "01", "1e3", "-0", "1__0"])
            .prop_map(str::to_string),
    ]
}

fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "k", "", "app-id", "127.0.0.1", "::1", "memory", "redis", "nats", "info", "herald", "a:b", "{x}", "http://127.0.0.1:9/hook", "https://h/x", "redis://127.0.0.1:1"])
            .prop_map(basic_string),
        2 => ".{0,20}".prop_map(|s| basic_string(&s)),
        1 => "[ -&(-~]{0,20}".prop_map(|s| format!("'{s}'")),
        1 => "[^\u{0}-\u{1f}\u{7f}]{0,20}".prop_map(|s| format!("\"\"\"\n{}\"\"\"", s.replace('\\', "\\\\").replace('"', "\\\""))),
        1 => prop::sample::select(vec!["\"\\x41\"", "\"\\ud800\"", "\"unterminated", "'''", "\"\\U0010FFFF\"", "\"\\U00110000\"", "\"\u{0}\""])
            .prop_map(str::to_string),
    ]
}

fn scalar() -> impl Strategy<Value = Toml> {
    prop_oneof![
        3 => integer().prop_map(Toml::Raw),
        3 => string_value().prop_map(Toml::Raw),
        1 => any::<bool>().prop_map(|b| Toml::Raw(b.to_string())),
        1 => prop::sample::select(vec!["1.5", "inf", "-nan", "1e400", "0.0", "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27", "tru", ""])
            .prop_map(|s| Toml::Raw(s.to_string())),
    ]
}

fn value() -> impl Strategy<Value = Toml> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Toml::Arr),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(Toml::Table),
        ]
    })
}

const TOP_KEYS: [&str; 13] = [
    "host",
    "port",
    "log",
    "activity_timeout",
    "pong_timeout",
    "max_connections",
    "max_request_body",
    "shutdown_grace",
    "engine",
    "redis_url",
    "redis_prefix",
    "redis_lease",
    "redis_cluster",
];

const APP_KEYS: [&str; 15] = [
    "id",
    "key",
    "secret",
    "enabled",
    "enable_client_messages",
    "enable_user_authentication",
    "enable_subscription_count",
    "max_connections",
    "max_channels_per_connection",
    "max_presence_members",
    "max_presence_member_size",
    "max_event_size",
    "client_events_per_second",
    "max_outbox_messages",
    "max_outbox_bytes",
];

/// How far generated documents stray from the schema.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Values of any type and form sometimes, unknown keys, junk lines: mostly parse errors.
    Loose,
    /// Every value has its key's type and parses; ranges and contents are random, so it comes down to
    /// `Config::resolve`'s validation (and what loads builds a server).
    Typed,
}

/// A well-typed value for `key` (any range; strings from a list of meaningful ones or random).
fn typed_value(key: &str) -> BoxedStrategy<Toml> {
    let text = |choices: Vec<&'static str>| {
        prop_oneof![4 => prop::sample::select(choices).prop_map(basic_string), 1 => ".{0,12}".prop_map(|s| basic_string(&s))]
            .prop_map(Toml::Raw)
            .boxed()
    };
    match key {
        "host" => prop::sample::select(vec!["127.0.0.1", "::1", "0.0.0.0", "10.1.2.3", "fe80::1"])
            .prop_map(|s| Toml::Raw(basic_string(s)))
            .boxed(),
        "log" => text(vec!["info", "debug", "herald_pusher=debug", "warn,herald=trace", ""]),
        "engine" => text(vec!["memory", "redis"]),
        "redis_url" => text(vec!["redis://127.0.0.1:1", "redis://:pw@h:6379/0"]),
        "redis_prefix" => text(vec!["herald", "blue", "a:b", "{x}", ""]),
        "id" | "key" | "secret" => text(vec!["a", "b", "k", "app-id", "app-key", ""]),
        "url" => text(vec!["http://127.0.0.1:9/hook", "https://h/x", "http://h"]),
        "event_types" => event_types(),
        "redis_cluster" | "enabled" | "enable_client_messages" | "enable_user_authentication" | "enable_subscription_count" => {
            any::<bool>().prop_map(|b| Toml::Raw(b.to_string())).boxed()
        }
        "port" => (0u16..=u16::MAX).prop_map(|n| Toml::Raw(n.to_string())).boxed(),
        "client_events_per_second" => prop_oneof![Just(0u32), Just(u32::MAX), 0u32..100].prop_map(|n| Toml::Raw(n.to_string())).boxed(),
        _ => prop_oneof![Just(0i64), Just(1), Just(i64::MAX), 0i64..100_000].prop_map(|n| Toml::Raw(n.to_string())).boxed(),
    }
}

/// A webhook's `event_types`: known names and some that are not.
fn event_types() -> BoxedStrategy<Toml> {
    prop::collection::vec(
        prop::sample::select(vec!["channel_occupied", "channel_vacated", "member_added", "client_event", "cache_miss", "nope", ""])
            .prop_map(|s| Toml::Raw(basic_string(s))),
        0..4,
    )
    .prop_map(Toml::Arr)
    .boxed()
}

/// A value of the type `key` wants, usually; with [`Shape::Loose`], any value sometimes.
fn value_for(key: &str, shape: Shape) -> BoxedStrategy<Toml> {
    if shape == Shape::Typed {
        return typed_value(key);
    }
    let typed: BoxedStrategy<Toml> = match key {
        "host" | "log" | "engine" | "redis_url" | "redis_prefix" | "id" | "key" | "secret" | "url" => {
            string_value().prop_map(Toml::Raw).boxed()
        }
        "redis_cluster" | "enabled" | "enable_client_messages" | "enable_user_authentication" | "enable_subscription_count" => {
            any::<bool>().prop_map(|b| Toml::Raw(b.to_string())).boxed()
        }
        "event_types" => event_types(),
        _ => integer().prop_map(Toml::Raw).boxed(),
    };
    prop_oneof![8 => typed, 1 => value()].boxed()
}

/// `key = value` lines: known keys with fitting values, and sometimes an unknown key. Keys are not
/// repeated (a repeated key is a parse error; the junk lines cover it).
fn pairs(keys: &'static [&'static str], max: usize, shape: Shape) -> impl Strategy<Value = Pairs> {
    let known = prop::sample::select(keys).prop_flat_map(move |k| value_for(k, shape).prop_map(move |v| (k.to_string(), v)));
    let pair = prop_oneof![16 => known, 1 => ("[a-z_]{1,10}", value())];
    prop::collection::vec(pair, 0..max).prop_map(move |pairs| {
        let mut seen = HashSet::new();
        let wanted = move |k: &str| shape == Shape::Loose || keys.contains(&k);
        pairs.into_iter().filter(|(k, _)| wanted(k) && seen.insert(k.clone())).collect()
    })
}

/// An app with its required fields usually present, plus random settings and webhooks.
fn app(shape: Shape) -> impl Strategy<Value = (Pairs, Vec<Pairs>)> {
    let present = prop::array::uniform3(prop::bool::weighted(0.9));
    let required =
        (value_for("id", shape), value_for("key", shape), value_for("secret", shape), present).prop_map(|(id, key, secret, present)| {
            [("id", id), ("key", key), ("secret", secret)]
                .into_iter()
                .zip(present)
                .filter(|(_, keep)| *keep)
                .map(|((k, v), _)| (k.to_string(), v))
                .collect::<Vec<_>>()
        });
    let hook = ("[a-z]{0,1}", value_for("url", shape), value_for("event_types", shape)).prop_map(|(skip, url, types)| {
        let mut fields = vec![("url".to_string(), url)];
        if skip.is_empty() {
            fields.push(("event_types".to_string(), types));
        }
        fields
    });
    (required, pairs(&APP_KEYS, 5, shape), prop::collection::vec(hook, 0..2)).prop_map(|(mut fields, extra, hooks)| {
        fields.extend(extra.into_iter().filter(|(k, _)| !["id", "key", "secret"].contains(&k.as_str())));
        (fields, hooks)
    })
}

fn render_pairs(out: &mut String, pairs: &[(String, Toml)]) {
    for (k, v) in pairs {
        out.push_str(&format!("{} = {}\n", render_key(k), v.render()));
    }
}

/// A config file: top-level keys, `[[apps]]` with `[[apps.webhooks]]`, and sometimes a junk line.
fn document(shape: Shape) -> impl Strategy<Value = String> {
    let junk = prop::option::weighted(
        0.2,
        prop_oneof![
            prop::sample::select(vec![
                "[apps]",
                "[[apps.webhooks]]",
                "[x]",
                "= 1",
                "a =",
                "a = 1\na = 2",
                "[[apps]]\n[[apps]]",
                "port = 1 2",
                "\u{feff}"
            ])
            .prop_map(str::to_string),
            ".{0,30}",
        ],
    );
    (pairs(&TOP_KEYS, 6, shape), prop::collection::vec(app(shape), 0..3), junk, any::<prop::sample::Index>()).prop_map(
        move |(top, apps, junk, at)| {
            let mut out = String::new();
            render_pairs(&mut out, &top);
            for (fields, hooks) in &apps {
                out.push_str("[[apps]]\n");
                render_pairs(&mut out, fields);
                for hook in hooks {
                    out.push_str("[[apps.webhooks]]\n");
                    render_pairs(&mut out, hook);
                }
            }
            if let Some(junk) = junk.filter(|_| shape == Shape::Loose) {
                let lines: Vec<usize> = std::iter::once(0).chain(out.match_indices('\n').map(|(i, _)| i + 1)).collect();
                out.insert_str(lines[at.index(lines.len())], &format!("{junk}\n"));
            }
            out
        },
    )
}

/// Flags and `HERALD_*` values, which clap has already parsed into their types.
fn cli() -> impl Strategy<Value = Cli> {
    let any_or_edge = || prop::option::of(prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()]);
    (
        any_or_edge(),
        any_or_edge(),
        prop::option::of(prop_oneof![Just(EngineKind::Memory), Just(EngineKind::Redis)]),
        prop::option::of(prop_oneof![Just(String::new()), Just("a:b".to_string()), "[a-z{}:]{0,6}"]),
        prop::option::of(prop_oneof![Just(String::new()), "[a-z]{0,4}"]),
        any::<bool>(),
    )
        .prop_map(|(activity_timeout, redis_lease, engine, redis_prefix, app_key, redis_cluster)| Cli {
            activity_timeout,
            redis_lease,
            engine,
            redis_prefix,
            app_key,
            redis_cluster,
            ..Cli::default()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_load_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let utf8 = std::str::from_utf8(&bytes).is_ok();
        match load(&bytes, Cli::default()) {
            Ok(config) => check_invariants(&config)?,
            // Not UTF-8: a read error naming the file.
            Err(ConfigError::Read { .. }) => prop_assert!(!utf8, "valid UTF-8 refused as unreadable"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn random_text_loads_or_fails_cleanly(text in ".{0,200}") {
        match load(text.as_bytes(), Cli::default()) {
            Ok(config) => check_invariants(&config)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn known_keys_with_random_values_load_or_fail_cleanly(text in document(Shape::Loose), cli in cli()) {
        match load(text.as_bytes(), cli) {
            Ok(config) => {
                check_invariants(&config)?;
                build_server(&config);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn well_typed_values_load_or_are_refused_by_validation(text in document(Shape::Typed), cli in cli()) {
        match load(text.as_bytes(), cli) {
            Ok(config) => {
                check_invariants(&config)?;
                build_server(&config);
            }
            // Every value parses: only a missing required field, an unknown engine or a range fails.
            Err(ConfigError::Parse { source, .. }) => {
                let message = source.to_string();
                prop_assert!(message.contains("missing field") || message.contains("unknown variant"), "{}", message);
            }
            Err(e) => prop_assert!(matches!(e, ConfigError::Invalid(_)), "{}", e),
        }
    }
}

/// Loads `text` (with defaults for everything else) or says why it was refused.
fn load_text(text: &str) -> Result<Config, ConfigError> {
    load(text.as_bytes(), Cli::default())
}

/// A server for `config` on 127.0.0.1:0; the WebSocket handshake and `connection_established` must
/// succeed (a panicking handler drops the connection instead).
async fn connect(config: &Config) -> (common::Server, common::Client) {
    let server = common::start(config.apps.clone(), config.pusher.clone()).await;
    let url = format!("ws://{}/app/{}?protocol=7&client=test&version=1", server.addr, config.apps[0].pusher.key);
    let ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("the handshake failed (did the connect handler panic?): {e}"),
    };
    let mut client = common::Client { ws, socket_id: String::new() };
    let established = client.expect("pusher:connection_established").await;
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    client.socket_id = data["socket_id"].as_str().unwrap().to_string();
    (server, client)
}

/// The session still answers: a ping gets a pong, a subscribe succeeds, a client event is checked.
async fn assert_session_works(client: &mut common::Client) {
    client.send(json!({"event":"pusher:ping","data":{}})).await;
    client.expect("pusher:pong").await;
    client.subscribe("news").await;
    client.subscribe_private("private-room").await;
    client.send(json!({"event":"client-typing","channel":"private-room","data":{"x":1}})).await;
    client.send(json!({"event":"pusher:ping","data":{}})).await;
    client.expect("pusher:pong").await;
}

const APP: &str = "[[apps]]\nid = \"a\"\nkey = \"app-key\"\nsecret = \"app-secret\"\nenable_client_messages = true\n";

/// The largest value every size limit accepts still gives a working connection (or is refused at
/// load). Found while writing these tests (the properties only load and build): `lib.rs` `connect` computes `max_event_size * 2 + 4096`,
/// which overflows (a panic in debug builds, a 4 KiB frame limit in release) when
/// `max_event_size = 9223372036854775807`.
#[tokio::test]
async fn largest_max_event_size_does_not_break_connections() {
    let Ok(config) = load_text(&format!("{APP}max_event_size = {}\n", i64::MAX)) else { return };
    let (_server, mut client) = connect(&config).await;
    assert_session_works(&mut client).await;
}

#[tokio::test]
async fn largest_size_limits_do_not_break_connections() {
    let max = i64::MAX;
    let text = format!(
        "max_connections = {max}\nmax_request_body = {max}\n{APP}max_connections = {max}\nmax_channels_per_connection = {max}\n\
         max_presence_members = {max}\nmax_presence_member_size = {max}\nclient_events_per_second = 4294967295\n\
         max_outbox_messages = {max}\nmax_outbox_bytes = {max}\n"
    );
    let Ok(config) = load_text(&text) else { return };
    let (_server, mut client) = connect(&config).await;
    assert_session_works(&mut client).await;
}

/// An idle connection is pinged after `activity_timeout`, then waits `pong_timeout` for an answer.
/// Found while writing these tests (the properties only load and build): with `pong_timeout = 9223372036854775807` the session computes
/// `now + pong_timeout` (session.rs, keepalive branch: `keepalive.as_mut().reset(now + ...)`), which
/// overflows `Instant` and panics the session when it pings; the connection drops without a close
/// frame and its cleanup is skipped.
#[tokio::test]
async fn largest_pong_timeout_does_not_panic_the_session() {
    let Ok(config) = load_text(&format!("activity_timeout = 1\npong_timeout = {}\n", i64::MAX)) else { return };
    let (_server, mut client) = connect(&config).await;
    client.expect("pusher:ping").await;
    client.send(json!({"event":"pusher:pong","data":{}})).await;
    assert_session_works(&mut client).await;
}

#[tokio::test]
async fn largest_activity_timeout_does_not_break_connections() {
    let Ok(config) = load_text(&format!("activity_timeout = {}\n", i64::MAX)) else { return };
    let (_server, mut client) = connect(&config).await;
    assert_session_works(&mut client).await;
}

/// `Config::load` itself on the documented error paths: each names what is wrong.
#[test]
fn load_errors_name_the_problem() {
    let missing = Cli { config: Some(PathBuf::from("/nonexistent/herald.toml")), ..Cli::default() };
    assert!(matches!(Config::load(&missing), Err(ConfigError::Read { .. })));
    assert!(matches!(load(b"\xff\xfe", Cli::default()), Err(ConfigError::Read { .. })));
    assert!(load_text("port = 70000").unwrap_err().to_string().contains("port"));
    assert!(load_text("port = \"x\"").unwrap_err().to_string().contains("port"));
    assert!(load_text(&format!("{APP}max_event_size = -1")).unwrap_err().to_string().contains("max_event_size"));
    assert!(load_text("a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[").is_err());
    let deep = format!("a = {}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(load_text(&deep).is_err(), "unknown key or recursion limit, not a stack overflow");
    let deep_table = format!("a = {}1{}", "{ b = ".repeat(10_000), " }".repeat(10_000));
    assert!(load_text(&deep_table).is_err());
}
