//! One typed configuration. Precedence: built-in defaults < config file (`--config FILE`, or
//! `neulbi.toml` in the working directory if present) < `NEULBI_*` environment variables <
//! command-line flags. The defaults are the embedded single-node setup: a SQLite file under
//! `./data`, listening on loopback.

pub mod calls;
pub mod chat;

use crate::actors::RegistryConfig;
use crate::store::StoreLimits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// An environment variable holds a value of the wrong shape.
    #[error("invalid value for {var}: {message}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// What was expected.
        message: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line for log shippers.
    Json,
}

/// Limits of the event store (see [`StoreLimits`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Largest accepted event (data + metadata), in bytes.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
    /// Most appends folded into one group commit.
    pub max_group_commit: usize,
    /// Run pending migrations when `serve` starts.
    pub auto_migrate: bool,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let l = StoreLimits::default();
        Self {
            max_event_bytes: l.max_event_bytes,
            max_events_per_append: l.max_events_per_append,
            max_group_commit: l.max_group_commit,
            auto_migrate: true,
        }
    }
}

/// Tuning of the actor runtime (see [`RegistryConfig`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorSettings {
    /// Commands that may wait for one aggregate before callers get "busy".
    pub mailbox_capacity: usize,
    /// Seconds without a command after which an aggregate actor is stopped.
    pub idle_timeout_secs: u64,
}

impl Default for ActorSettings {
    fn default() -> Self {
        let r = RegistryConfig::default();
        Self {
            mailbox_capacity: r.mailbox_capacity,
            idle_timeout_secs: r.idle_timeout.as_secs(),
        }
    }
}

/// The whole configuration of a Neulbi node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`NEULBI_LISTEN`).
    pub listen: SocketAddr,
    /// Where the SQLite file and local images live (`NEULBI_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; overrides the data-dir SQLite file
    /// (`NEULBI_DATABASE_URL`).
    pub database_url: Option<String>,
    /// Where data keys, read models and projector checkpoints live when the log itself is
    /// in KurrentDB (`NEULBI_STATE_DATABASE_URL`): `sqlite://...` or `postgres://...`;
    /// default the SQLite file in the data dir. Ignored for a SQLite or PostgreSQL log,
    /// which keeps them beside itself.
    pub state_database_url: Option<String>,
    /// The URL browsers use to reach this node (`NEULBI_PUBLIC_URL`); derived from `listen`
    /// when unset.
    pub public_url: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`NEULBI_TRUSTED_PROXIES`,
    /// comma-separated IPs), e.g. `127.0.0.1` behind a local nginx. Empty: the peer address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Where `/metrics` is served (`NEULBI_METRICS_LISTEN`), so Prometheus can scrape a
    /// private address; unset, `/metrics` is on `listen` with everything else.
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter in `tracing` syntax (`NEULBI_LOG`), e.g. `info,neulbi=debug`.
    pub log: String,
    /// `pretty` or `json` (`NEULBI_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Seconds `serve` waits for in-flight requests on shutdown (`NEULBI_SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout_secs: u64,
    /// Event-store limits.
    pub store: StoreSettings,
    /// Actor runtime tuning.
    pub actors: ActorSettings,
    /// Sign-in and tokens (`[auth]`; secrets from the environment only).
    pub auth: crate::auth::AuthSettings,
    /// Profile images (`[images]`): limits, sweeper and blob backend.
    pub images: crate::blob::ImageSettings,
    /// Chat over STOMP and SockJS (`[chat]`): limits, heart-beats, origins.
    pub chat: chat::ChatSettings,
    /// Video calls (`[calls]`): call rules, signaling limits, media addresses.
    pub calls: calls::CallSettings,
    /// Media relays (`[media.turn]`): the embedded TURN server or an external coturn.
    pub media: MediaConfig,
    /// Key-encryption keys (`[keys]`): what wraps the data keys, signing keys and secrets.
    pub keys: crate::privacy::KeySettings,
    /// HTTPS from PEM files (`[tls]`, `NEULBI_TLS_*`), reloaded on renewal.
    pub tls: crate::edge::tls::TlsSettings,
}

/// The `[media]` section: TURN. The embedded TURN server runs when `media.turn.secret` is set
/// (`NEULBI_TURN_SECRET`) and no external one is configured; with an external one
/// (`NEULBI_TURN_EXTERNAL_URLS` + `NEULBI_TURN_EXTERNAL_SECRET`), its credentials are handed
/// out instead; with neither, clients get host candidates (and `calls.ice_urls`) only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// TURN settings (`NEULBI_TURN_*`).
    pub turn: crate::media::turn::TurnSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            state_database_url: None,
            public_url: None,
            metrics_listen: None,
            trusted_proxies: Vec::new(),
            log: "info".into(),
            log_format: LogFormat::Pretty,
            shutdown_timeout_secs: 30,
            store: StoreSettings::default(),
            actors: ActorSettings::default(),
            auth: crate::auth::AuthSettings::default(),
            images: crate::blob::ImageSettings::default(),
            chat: chat::ChatSettings::default(),
            calls: calls::CallSettings::default(),
            media: MediaConfig::default(),
            keys: crate::privacy::KeySettings::default(),
            tls: crate::edge::tls::TlsSettings::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then the file (explicit, or `neulbi.toml` if present), then the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let default_file = Path::new("neulbi.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Parses a TOML config file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies `NEULBI_*` variables read through `get` (injected so tests need no process env).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                message: e.to_string(),
            })
        }
        if let Some(v) = get("NEULBI_LISTEN") {
            self.listen = parse("NEULBI_LISTEN", &v)?;
        }
        if let Some(v) = get("NEULBI_TRUSTED_PROXIES") {
            self.trusted_proxies =
                crate::edge::http::client_ip::parse_list(&v).map_err(|message| {
                    ConfigError::Env {
                        var: "NEULBI_TRUSTED_PROXIES",
                        message,
                    }
                })?;
        }
        if let Some(v) = get("NEULBI_METRICS_LISTEN").filter(|v| !v.is_empty()) {
            self.metrics_listen = Some(parse("NEULBI_METRICS_LISTEN", &v)?);
        }
        if let Some(v) = get("NEULBI_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("NEULBI_DATABASE_URL").filter(|v| !v.is_empty()) {
            self.database_url = Some(v);
        }
        if let Some(v) = get("NEULBI_STATE_DATABASE_URL").filter(|v| !v.is_empty()) {
            self.state_database_url = Some(v);
        }
        if let Some(v) = get("NEULBI_PUBLIC_URL").filter(|v| !v.is_empty()) {
            self.public_url = Some(v.trim_end_matches('/').to_owned());
        }
        if let Some(v) = get("NEULBI_LOG") {
            self.log = v;
        }
        if let Some(v) = get("NEULBI_LOG_FORMAT") {
            self.log_format = match v.trim() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Env {
                        var: "NEULBI_LOG_FORMAT",
                        message: format!("{other:?} is not one of pretty, json"),
                    });
                }
            };
        }
        if let Some(v) = get("NEULBI_SHUTDOWN_TIMEOUT") {
            self.shutdown_timeout_secs = parse("NEULBI_SHUTDOWN_TIMEOUT", &v)?;
        }
        if let Some(v) = get("NEULBI_MAX_EVENT_BYTES") {
            self.store.max_event_bytes = parse("NEULBI_MAX_EVENT_BYTES", &v)?;
        }
        if let Some(v) = get("NEULBI_MAILBOX_CAPACITY") {
            self.actors.mailbox_capacity = parse("NEULBI_MAILBOX_CAPACITY", &v)?;
        }
        if let Some(v) = get("NEULBI_ACTOR_IDLE_SECS") {
            self.actors.idle_timeout_secs = parse("NEULBI_ACTOR_IDLE_SECS", &v)?;
        }
        self.auth.apply_env(&get);
        self.images
            .apply_env(&get)
            .map_err(|message| ConfigError::Env {
                var: "NEULBI_IMAGES_*/NEULBI_S3_*",
                message,
            })?;
        self.chat
            .apply_env(&get)
            .map_err(|message| ConfigError::Env {
                var: "NEULBI_CHAT_*",
                message,
            })?;
        self.calls
            .apply_env(&get)
            .map_err(|message| ConfigError::Env {
                var: "NEULBI_CALL_*/NEULBI_MEDIA_*",
                message,
            })?;
        self.media
            .turn
            .apply_env(&get)
            .map_err(|e| ConfigError::Env {
                var: "NEULBI_TURN_*",
                message: e.to_string(),
            })?;
        self.keys
            .apply_env(&get)
            .map_err(|message| ConfigError::Env {
                var: "NEULBI_KEK*/NEULBI_KMS_*",
                message,
            })?;
        self.tls
            .apply_env(&get)
            .map_err(|message| ConfigError::Env {
                var: "NEULBI_TLS_*",
                message,
            })?;
        Ok(())
    }

    /// Opens the configured database with this configuration's keys (`[keys]`).
    pub async fn open_storage(
        &self,
        migrate: bool,
    ) -> Result<crate::store::Storage, crate::store::StoreError> {
        crate::store::open_storage_in(
            &self.database_url(),
            &self.state_url(),
            self.store_limits(),
            migrate,
            &self.keys,
            &self.data_dir,
        )
        .await
    }

    /// The database URL in force: the explicit one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("neulbi.db").display()))
    }

    /// The SQL database that holds data keys, read models and checkpoints: the log's own
    /// database, or with a KurrentDB log the state database (see `state_database_url`).
    pub fn state_url(&self) -> String {
        let log = self.database_url();
        crate::store::state_url_for(&log, self.state_database_url.as_deref(), &self.data_dir)
    }

    /// The URL browsers use, for links and redirects; derived from the bound address when
    /// no public URL is configured.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let host = if bound.ip().is_unspecified() {
            "localhost".to_owned()
        } else if bound.is_ipv6() {
            format!("[{}]", bound.ip())
        } else {
            bound.ip().to_string()
        };
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        format!("{scheme}://{host}:{}", bound.port())
    }

    /// The store limits in force.
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimits {
            max_event_bytes: self.store.max_event_bytes,
            max_events_per_append: self.store.max_events_per_append.max(1),
            max_group_commit: self.store.max_group_commit.max(1),
            ..StoreLimits::default()
        }
    }

    /// The actor runtime settings in force.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig {
            mailbox_capacity: self.actors.mailbox_capacity.max(1),
            idle_timeout: Duration::from_secs(self.actors.idle_timeout_secs.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://./data/neulbi.db");
        assert_eq!(c.public_url(c.listen), "http://127.0.0.1:8080");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("neulbi.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nlog = \"debug\"\n[store]\nmax_event_bytes = 10\n",
        )
        .expect("write");
        let mut c = Config::from_file(&path).expect("parse");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.store.max_event_bytes, 10);
        c.apply_env(env(&[
            ("NEULBI_LISTEN", "127.0.0.1:9100"),
            ("NEULBI_DATABASE_URL", "postgres://x/y"),
        ]))
        .expect("env");
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.log, "debug");
        assert_eq!(c.database_url(), "postgres://x/y");
    }

    #[test]
    fn bad_values_name_their_source() {
        let mut c = Config::default();
        let err = c
            .apply_env(env(&[("NEULBI_LISTEN", "nowhere")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("NEULBI_LISTEN"), "{err}");
        let err = c
            .apply_env(env(&[("NEULBI_LOG_FORMAT", "xml")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("NEULBI_LOG_FORMAT"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "nonsense_key = 1\n").expect("write");
        assert!(matches!(
            Config::from_file(&path),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn unspecified_listen_address_gets_a_browsable_public_url() {
        let c = Config::default();
        assert_eq!(
            c.public_url("0.0.0.0:80".parse().expect("addr")),
            "http://localhost:80"
        );
    }
}
