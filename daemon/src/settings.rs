//! Typed, layered configuration: defaults < TOML file < `CORE4_*` environment < flags.

use std::{fmt, net::SocketAddr, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// Everything core4d can be configured with. `Debug` redacts secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP and WebSocket API listens on.
    pub listen: SocketAddr,
    /// Use this PostgreSQL server instead of the embedded one.
    pub database_url: Option<String>,
    /// Where core4d keeps its private PostgreSQL cluster (embedded mode).
    pub data_dir: PathBuf,
    /// Maximum number of pooled database connections.
    pub db_max_connections: u32,
    /// Token lifetime in seconds (8 h).
    pub token_expiration: u64,
    /// After this many seconds a request returns a fresh token in the `token` header (1 h).
    pub token_refresh: u64,
    /// HS512 signing secret. Unset: generated once and persisted in the database.
    pub secret: Option<String>,
    /// Name of the bootstrap administrator (a `cop`).
    pub admin_username: String,
    /// Password of the bootstrap administrator. Unset: generated and printed once.
    pub admin_password: Option<String>,
    /// argon2id costs of new password hashes, hashing slots and the queue in front of them.
    pub argon2: Argon2Settings,
    /// Failed-login limits.
    pub login_limit: LoginLimitSettings,
    /// Largest `per_page` a listing accepts.
    pub max_per_page: u32,
    /// `Access-Control-Allow-Origin` value: which web pages may read replies (CORS). It never
    /// lets a page use the login cookie; see `trusted_origins`.
    pub allow_origin: String,
    /// Origins (`https://app.example.com`) besides core4d's own whose pages may send
    /// state-changing requests (and WebSocket upgrades) authenticated by the login cookie.
    /// core4d's own origin, taken from the `Host` header, is always trusted.
    pub trusted_origins: Vec<String>,
    /// Peers (CIDRs such as `127.0.0.1/32`, or addresses) whose `Forwarded` / `X-Forwarded-For`
    /// / `X-Forwarded-Proto` / `X-Forwarded-Host` headers are believed: your reverse proxies.
    /// Other peers' forwarding headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// HTTPS and WSS on the listener itself.
    pub tls: TlsSettings,
    /// Connection timeouts against slow or silent clients.
    pub http: HttpSettings,
    /// Event channel limits and tuning.
    pub events: EventSettings,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Embedded PostgreSQL only: turn off fsync (tests; never in production).
    pub embedded_fsync: bool,
}

/// How log lines are written on stderr. Spelt exactly (`text`, `json`), as `core4d config`
/// prints it: a value that is not one of them is a configuration error, not a silent `text`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// A configuration mistake found after the settings were loaded (a TLS file that cannot be
/// read, a cluster of another user): the start fails with exit code 2, as for a bad setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Settings {
    /// Memory cost in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
    /// Hashes computed at once; each slot keeps an `m_cost` KiB buffer for good. 0: one per CPU
    /// core.
    pub concurrency: usize,
    /// Logins that may wait for a free slot, all clients together; beyond it a login gets 503
    /// with `Retry-After` at once. Addresses that gave a correct password in the last 7 days
    /// have as many places again in a lane of their own, served first.
    pub max_queue: usize,
    /// Logins from one client address (an IPv6 client: its /64) that may wait for or hold a
    /// slot; beyond it 503 with `Retry-After`, so one flooding client cannot fill the queue.
    pub max_queue_per_client: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginLimitSettings {
    /// Failed logins allowed per (user name, client address) within the window.
    pub max_failures: u32,
    /// Failed logins allowed per client address, over all names, within the window.
    pub max_failures_per_address: u32,
    /// Failed logins allowed per user name from addresses it never logged in from, within the
    /// window. Addresses the user logged in from before are not subject to it.
    pub max_failures_per_user: u32,
    /// Window length in seconds.
    pub window: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first). With `key_file`, the listener speaks only TLS.
    /// Both files are read again on SIGHUP.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Seconds a request's line and headers may take to arrive in full, counted from when the
    /// server starts waiting for them (after accepting the connection or sending the previous
    /// reply), however slowly they trickle in.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay without any traffic in either direction before it is closed:
    /// a silent client, an idle keep-alive connection, a stalled request body or reply.
    /// Upgraded WebSockets are exempt (they have `events.ping_interval_secs`).
    pub idle_timeout_secs: u64,
    /// Seconds an accepted WebSocket upgrade may take to switch protocols after its 101 reply.
    pub websocket_handshake_timeout_secs: u64,
    /// Seconds a request may take from its headers to its reply, body included (a body that
    /// trickles in is cut off here); over it, 408. Streams and upgraded sockets are exempt once
    /// their reply has started.
    pub request_timeout_secs: u64,
    /// HTTP connections open at once (upgraded WebSockets not counted: `events.max_connections`
    /// bounds those); more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// HTTP connections open at once from one peer address (peers in `trusted_proxies` are
    /// exempt); 0: no per-address limit.
    pub max_connections_per_address: usize,
    /// Bytes of large replies (over 64 KiB, e.g. pages of history) that may wait in memory for
    /// their clients to read them, over all clients; past it, 503 with `Retry-After`.
    pub max_held_reply_bytes: usize,
    /// The same per client address; a client holding nothing may always have one reply.
    pub max_held_reply_bytes_per_address: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Largest accepted client frame in bytes.
    pub max_frame_bytes: usize,
    /// Channels one connection may be interested in.
    pub max_channels: usize,
    /// Sustained messages per second per user (token bucket rate).
    pub messages_per_second: u32,
    /// Token bucket burst.
    pub burst: u32,
    /// Open event connections per user and instance (over it the upgrade gets 429).
    pub max_connections_per_user: usize,
    /// Open event connections per instance, all users together (over it the upgrade gets 503).
    pub max_connections: usize,
    /// Seconds between the server's pings on each event socket; a socket that sent nothing (no
    /// pong, no frame) for two intervals is closed with 1001 `no pong`.
    pub ping_interval_secs: u64,
    /// `/event/history` counts at most this many matching messages for `total_count`.
    pub history_count_limit: u64,
    /// Frames queued per connection before it is declared slow and sent a gap frame.
    pub outbound_queue: usize,
    /// Most messages the writer commits in one transaction.
    pub batch_max: usize,
    /// Milliseconds between permission re-checks (and expiry checks) of open sockets.
    pub recheck_interval_ms: u64,
    /// Messages one socket may have waiting for their acknowledgement; beyond that the socket is
    /// not read until acks went out.
    pub max_unacked: usize,
    /// How long a message waits for an unreachable database before its sender gets an error frame.
    pub commit_timeout_ms: u64,
    /// Seconds between retention rounds.
    pub retention_interval_secs: u64,
    /// How long a message `key` is remembered: a message with the same key from the same
    /// account within it is not stored again and is acknowledged with the original id
    /// (`"duplicate": true`).
    pub idempotency_window_secs: u64,
    /// Which stored messages to keep, per channel: the first rule whose `channel` glob matches
    /// applies; a channel no rule matches keeps everything. TOML only (`[[events.retention]]`).
    pub retention: Vec<RetentionRule>,
}

/// The longest `max_age_secs` of a retention rule: 100 years.
pub const MAX_RETENTION_AGE_SECS: u64 = 100 * 365 * 24 * 3600;

/// Keep at most `max_count` messages and/or none older than `max_age_secs` on the channels
/// matching `channel` (a glob: `*` is any run of characters).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5001)),
            database_url: None,
            data_dir: default_data_dir(),
            db_max_connections: 20,
            token_expiration: 8 * 3600,
            token_refresh: 3600,
            secret: None,
            admin_username: "admin".into(),
            admin_password: None,
            argon2: Argon2Settings::default(),
            login_limit: LoginLimitSettings::default(),
            max_per_page: 1000,
            allow_origin: "*".into(),
            trusted_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            tls: TlsSettings::default(),
            http: HttpSettings::default(),
            events: EventSettings::default(),
            log_format: LogFormat::Text,
            embedded_fsync: true,
        }
    }
}

impl Default for Argon2Settings {
    fn default() -> Self {
        // OWASP's argon2id baseline: 19 MiB, 2 iterations, 1 lane.
        Self {
            m_cost: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            // More slots than cores add no throughput to CPU-bound hashing, only memory.
            concurrency: 0,
            max_queue: 64,
            max_queue_per_client: 8,
        }
    }
}

impl Default for LoginLimitSettings {
    fn default() -> Self {
        Self {
            max_failures: 10,
            max_failures_per_address: 100,
            max_failures_per_user: 50,
            window: 60,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 30,
            idle_timeout_secs: 10,
            websocket_handshake_timeout_secs: 10,
            request_timeout_secs: 60,
            max_connections: 4096,
            max_connections_per_address: 256,
            max_held_reply_bytes: 256 << 20,
            max_held_reply_bytes_per_address: 32 << 20,
        }
    }
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_channels: 64,
            messages_per_second: 100,
            burst: 200,
            max_connections_per_user: 1_000,
            max_connections: 50_000,
            ping_interval_secs: 30,
            history_count_limit: 100_000,
            outbound_queue: 1024,
            batch_max: 1000,
            recheck_interval_ms: 500,
            max_unacked: 256,
            commit_timeout_ms: 10_000,
            retention_interval_secs: 60,
            idempotency_window_secs: 86_400,
            retention: Vec::new(),
        }
    }
}

/// The default data directory: the XDG data dir (`~/.local/share/core4d`). For root, whose home
/// the `postgres` user cannot enter, the embedded cluster itself moves to `/var/lib/core4d`.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "core4d")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".core4d"))
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    /// Layers defaults, the TOML file, `DATABASE_URL`, `CORE4_*` variables and the flags.
    pub fn load(config_file: Option<&std::path::Path>, flags: &Overrides) -> Result<Self, String> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::prefixed("CORE4_").filter(is_setting_key).split("__"))
            .merge(Serialized::defaults(flags));
        let mut settings: Settings = fig
            .extract()
            .map_err(|e| format!("invalid configuration: {}", config_error(e)))?;
        // Secrets and URLs are taken verbatim: figment would parse `12345678` as a number (and
        // quote the value in its error) or `[..]` as a list.
        let raw = |name: &str| std::env::var(name).ok();
        if let Some(v) = raw("CORE4_SECRET") {
            settings.secret = Some(v);
        }
        if let Some(v) = raw("CORE4_ADMIN_PASSWORD") {
            settings.admin_password = Some(v);
        }
        let from_env = ["CORE4_DATABASE_URL", "DATABASE_URL"]
            .into_iter()
            .find_map(|name| raw(name).map(|v| (name, v)));
        let url_source = match (&flags.database_url, from_env, config_file) {
            (Some(_), _, _) => "--database-url".to_string(),
            (None, Some((name, v)), _) => {
                settings.database_url = Some(v);
                name.to_string()
            }
            (None, None, Some(path)) => format!("{}: database_url", path.display()),
            (None, None, None) => "database_url".to_string(),
        };
        if let Some(url) = &settings.database_url {
            check_database_url(url)
                .map_err(|e| format!("invalid configuration: {url_source}: {e}"))?;
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        if self.token_expiration == 0 {
            return Err("token_expiration must be at least 1 second".into());
        }
        if self.admin_username.trim().is_empty() {
            return Err("admin_username must not be empty".into());
        }
        if let Some(secret) = &self.secret
            && secret.len() < 32
        {
            return Err("secret must be at least 32 characters".into());
        }
        if let Some(pw) = &self.admin_password
            && pw.is_empty()
        {
            return Err("admin_password must not be empty".into());
        }
        if self.argon2.max_queue_per_client == 0 {
            return Err("argon2.max_queue_per_client must be at least 1".into());
        }
        if self.max_per_page == 0 || self.events.outbound_queue == 0 || self.events.batch_max == 0 {
            return Err(
                "max_per_page, events.outbound_queue and events.batch_max must be positive".into(),
            );
        }
        let http = &self.http;
        if http.header_read_timeout_secs == 0
            || http.idle_timeout_secs == 0
            || http.websocket_handshake_timeout_secs == 0
            || http.request_timeout_secs == 0
        {
            return Err("the http.* timeouts must be at least 1 second".into());
        }
        if http.max_connections == 0 {
            return Err("http.max_connections must be at least 1".into());
        }
        if self.events.retention_interval_secs == 0 {
            return Err("events.retention_interval_secs must be at least 1".into());
        }
        for (i, rule) in self.events.retention.iter().enumerate() {
            let key = format!("events.retention[{i}]");
            crate::domain::Channel::parse_glob(&rule.channel)
                .map_err(|e| format!("{key}.channel [{}]: {e}", rule.channel))?;
            if rule.max_count.is_none() && rule.max_age_secs.is_none() {
                return Err(format!(
                    "{key} (channel [{}]) keeps everything: set max_count and/or max_age_secs",
                    rule.channel
                ));
            }
            if rule
                .max_age_secs
                .is_some_and(|s| s > MAX_RETENTION_AGE_SECS)
            {
                return Err(format!(
                    "{key}: max_age_secs is at most {MAX_RETENTION_AGE_SECS} (100 years)"
                ));
            }
            if rule.max_count == Some(0) || rule.max_age_secs == Some(0) {
                return Err(format!(
                    "{key}: max_count and max_age_secs must be at least 1"
                ));
            }
        }
        for origin in &self.trusted_origins {
            crate::web::origin::Origin::parse(origin)
                .map_err(|e| format!("trusted_origins: [{origin}] {e}"))?;
        }
        for proxy in &self.trusted_proxies {
            crate::web::proxy::parse_net(proxy).map_err(|e| {
                format!(
                    "trusted_proxies: [{proxy}] {e}; list your proxies' addresses, e.g. \
                     trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]"
                )
            })?;
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(
                    "tls.cert_file is set but tls.key_file is not: set both (PEM files) \
                     or neither"
                        .into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "tls.key_file is set but tls.cert_file is not: set both (PEM files) \
                     or neither"
                        .into(),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The TLS certificate files, when TLS is on.
    pub fn tls_files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.secret = copy.secret.map(|_| REDACTED.into());
        copy.admin_password = copy.admin_password.map(|_| REDACTED.into());
        copy.database_url = copy.database_url.as_deref().map(redact_url);
        toml_string(&copy)
    }
}

/// `CORE4_*` variables that are not settings (the CLI's `CORE4_SERVER`, `CORE4_CONFIG`,
/// `CORE4_PG_BIN_DIR`, ...) are left alone instead of failing the start; the TOML file stays
/// strict about unknown keys.
fn is_setting_key(key: &figment::value::UncasedStr) -> bool {
    let top = key
        .as_str()
        .split("__")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if matches!(top.as_str(), "secret" | "admin_password" | "database_url") {
        return false; // read verbatim in `Settings::load`
    }
    serde_json::to_value(Settings::default())
        .ok()
        .and_then(|v| v.as_object().map(|o| o.contains_key(&top)))
        .unwrap_or(false)
}

const REDACTED: &str = "<redacted>";

/// Removes the password from a `postgres://user:password@host/db` URL.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:{REDACTED}{}",
                    &base[..scheme + 3],
                    &userinfo[..colon],
                    &base[at..]
                ),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    match query {
        None => base,
        Some(q) => {
            let params: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={REDACTED}"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
    }
}

fn toml_string(settings: &Settings) -> String {
    // figment brings the `toml` crate; serialising through serde_json keeps our own code small.
    let value = serde_json::to_value(settings).unwrap_or_default();
    let mut out = String::new();
    write_toml_table(&mut out, "", &value);
    out
}

fn write_toml_table(out: &mut String, prefix: &str, value: &serde_json::Value) {
    let Some(map) = value.as_object() else { return };
    let mut tables = Vec::new();
    let mut arrays = Vec::new();
    for (k, v) in map {
        match v {
            serde_json::Value::Object(_) => tables.push((k, v)),
            serde_json::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_object()) =>
            {
                arrays.push((k, items))
            }
            serde_json::Value::Null => out.push_str(&format!("# {k} is not set\n")),
            other => out.push_str(&format!("{k} = {other}\n")),
        }
    }
    for (k, v) in tables {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push_str(&format!("\n[{name}]\n"));
        write_toml_table(out, &name, v);
    }
    for (k, items) in arrays {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        for item in items {
            out.push_str(&format!("\n[[{name}]]\n"));
            write_toml_table(out, &name, item);
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_toml())
    }
}

/// One line per figment error, in our words: where the value came from (the file, or the
/// `CORE4_*` variable), the key, and what was wrong with it. figment's own text names its
/// internals ("for key \"default.foo\" in c1.toml TOML file", "`CORE4_` environment variable(s)").
fn config_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let variable = e
                .metadata
                .as_ref()
                .filter(|m| m.name.contains("environment variable"))
                .map(|_| format!("CORE4_{}", e.path.join("__").to_ascii_uppercase()));
            let file = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .and_then(|s| s.file_path())
                .map(|p| p.display().to_string());
            let what = describe(e.kind, variable.as_deref());
            match (variable, file) {
                (Some(variable), _) => format!("{variable}: {what}"),
                (None, Some(file)) if !key.is_empty() => format!("{file}: {key}: {what}"),
                (None, Some(file)) => format!("{file}: {what}"),
                (None, None) if !key.is_empty() => format!("{key}: {what}"),
                (None, None) => what,
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What was wrong with one value, without serde's type names; `variable` is the `CORE4_*`
/// variable it came from, for the hint on how to write a list there.
fn describe(kind: figment::error::Kind, variable: Option<&str>) -> String {
    use figment::error::{Actual, Kind};
    let list = |expected: &[&str]| {
        expected
            .iter()
            .map(|x| format!("`{x}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plain = |expected: &str| -> String {
        match expected {
            "a sequence" => "a list".into(),
            "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
            "a boolean" => "true or false".into(),
            other => other.into(),
        }
    };
    match kind {
        Kind::UnknownField(found, expected) => {
            format!("unknown key `{found}`; expected one of {}", list(expected))
        }
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown value `{found}`; expected one of {}",
                list(expected)
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            let expected = plain(&expected);
            let mut text = format!("found {actual}, expected {expected}");
            if let Some(variable) = variable
                && expected == "a list"
            {
                let items = match &actual {
                    Actual::Str(s) => s
                        .split(',')
                        .map(|item| format!("\"{}\"", item.trim()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => "\"...\"".into(),
                };
                text.push_str(&format!(
                    "; a list is written as TOML, e.g. {variable}='[{items}]'"
                ));
            }
            text
        }
        other => other.to_string(),
    }
}

/// `database_url` must be a URL sqlx can use; `notaurl` would otherwise fail only at the first
/// connection, as "relative URL without a base". A value that is no URL is not echoed: it
/// may be a libpq keyword string holding a password.
fn check_database_url(url: &str) -> Result<(), String> {
    const EXAMPLE: &str = "postgres://core4:PASSWORD@db.example.com:5432/core4";
    match url.split_once("://") {
        Some((scheme, _))
            if scheme.eq_ignore_ascii_case("postgres")
                || scheme.eq_ignore_ascii_case("postgresql") => {}
        Some((scheme, _)) => {
            return Err(format!(
                "`{scheme}://` is not a PostgreSQL URL: write postgres://USER:PASSWORD@HOST:PORT/DATABASE, e.g. {EXAMPLE}"
            ));
        }
        None => {
            return Err(format!(
                "not a postgres:// URL: write postgres://USER:PASSWORD@HOST:PORT/DATABASE, e.g. {EXAMPLE}"
            ));
        }
    }
    use std::str::FromStr;
    sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| {
        let why = match e {
            sqlx::Error::Configuration(cause) => cause.to_string(),
            other => other.to_string(),
        };
        format!(
            "{} is not a valid PostgreSQL URL ({why}); e.g. {EXAMPLE}",
            redact_url(url)
        )
    })?;
    Ok(())
}

/// `CORE4_*` variables that are not settings but belong to core4d or core4ctl.
const OTHER_VARIABLES: &[&str] = &[
    "CORE4_CONFIG",
    "CORE4_PG_BIN_DIR",
    "CORE4_SERVER",
    "CORE4_CACERT",
];

/// One warning per `CORE4_*` variable in the environment that is neither a setting nor one of
/// [`OTHER_VARIABLES`] (a misspelt `CORE4_LISTN` would otherwise be ignored without a word),
/// with the closest known name when one is near.
pub fn unknown_variable_warnings() -> Vec<String> {
    unknown_variables(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
}

fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let mut known: Vec<String> = OTHER_VARIABLES.iter().map(|s| s.to_string()).collect();
    for (key, value) in defaults.as_object().into_iter().flatten() {
        known.push(format!("CORE4_{}", key.to_ascii_uppercase()));
        for nested in value.as_object().into_iter().flat_map(|o| o.keys()) {
            known.push(format!(
                "CORE4_{}__{}",
                key.to_ascii_uppercase(),
                nested.to_ascii_uppercase()
            ));
        }
    }
    let mut warnings = Vec::new();
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort();
    for name in names {
        let upper = name.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("CORE4_") else {
            continue;
        };
        if OTHER_VARIABLES.contains(&upper.as_str())
            || is_setting_key(figment::value::UncasedStr::new(rest))
            || matches!(rest, "SECRET" | "ADMIN_PASSWORD" | "DATABASE_URL")
        {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (edit_distance(&upper, k), k))
            .min_by_key(|(d, _)| *d)
            .filter(|(d, k)| *d <= 2 || *d * 5 <= k.len());
        warnings.push(match closest {
            Some((_, k)) => {
                format!("{name} is not a core4d setting and is ignored; did you mean {k}?")
            }
            None => format!(
                "{name} is not a core4d setting and is ignored (`core4d config` lists the keys; \
                 the variable is CORE4_ and the key in capitals, nested keys joined with __)"
            ),
        });
    }
    warnings
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_unknown_key_is_named_once_without_doubled_backticks() {
        let err = figment::Figment::new()
            .merge(figment::providers::Toml::string("[events]\nnope = 1"))
            .extract::<Settings>()
            .unwrap_err();
        let msg = super::config_error(err);
        assert!(msg.contains("events.nope: unknown key `nope`"), "{msg}");
        assert!(msg.contains("`max_frame_bytes`"), "{msg}");
        assert!(!msg.contains("``"), "{msg}");
    }
    use super::*;

    #[test]
    fn retention_rules_are_checked_and_printed_as_toml_tables() {
        let rule = |channel: &str, max_count, max_age_secs| RetentionRule {
            channel: channel.into(),
            max_count,
            max_age_secs,
        };
        let mut s = Settings::default();
        s.events.retention = vec![
            rule("chat*", Some(1000), None),
            rule("*", None, Some(86400)),
        ];
        assert!(s.validate().is_ok());
        let text = s.redacted_toml();
        assert!(
            text.contains("[[events.retention]]\nchannel = \"chat*\"\nmax_count = 1000\n"),
            "{text}"
        );
        let parsed: Settings = Figment::from(Toml::string(&text)).extract().unwrap();
        assert_eq!(parsed.events.retention, s.events.retention);
        s.events.retention = vec![rule("logs", None, None)];
        let err = s.validate().unwrap_err();
        assert!(
            err.starts_with("events.retention[0]") && err.contains("set max_count"),
            "{err}"
        );
        s.events.retention = vec![rule("a b", Some(1), None)];
        assert!(
            s.validate()
                .unwrap_err()
                .contains("events.retention[0].channel")
        );
        s.events.retention = vec![rule(&"*".repeat(9), Some(1), None)];
        assert!(s.validate().unwrap_err().contains("at most 8"));
    }

    #[test]
    fn an_unknown_retention_key_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core4d.toml");
        std::fs::write(
            &path,
            "[[events.retention]]\nchanel = \"logs\"\nmax_count = 5\n",
        )
        .unwrap();
        let err = Settings::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.contains("chanel") && err.contains("retention"), "{err}");
        std::fs::write(&path, "[[events.retention]]\nchannel = \"logs\"\n").unwrap();
        let err = Settings::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.contains("set max_count and/or max_age_secs"), "{err}");
    }

    #[test]
    fn known_env_keys_are_settings_and_others_are_ignored() {
        use figment::value::UncasedStr;
        assert!(is_setting_key(UncasedStr::new("LISTEN")));
        assert!(is_setting_key(UncasedStr::new("EVENTS__MAX_FRAME_BYTES")));
        assert!(!is_setting_key(UncasedStr::new("SERVER")));
        assert!(!is_setting_key(UncasedStr::new("PG_BIN_DIR")));
        assert!(
            !is_setting_key(UncasedStr::new("ADMIN_PASSWORD")),
            "secrets are read verbatim"
        );
    }

    #[test]
    fn a_log_format_that_is_not_text_or_json_is_an_error_listing_both() {
        for bad in ["xml", "JSON"] {
            let err = Figment::from(Toml::string(&format!("log_format = \"{bad}\"")))
                .extract::<Settings>()
                .unwrap_err();
            let msg = config_error(err);
            assert!(
                msg.starts_with("log_format: ")
                    && msg.contains(&format!("unknown value `{bad}`"))
                    && msg.contains("`text`, `json`"),
                "{msg}"
            );
        }
        let json: Settings = Figment::from(Toml::string("log_format = \"json\""))
            .extract()
            .unwrap();
        assert_eq!(json.log_format, LogFormat::Json);
    }

    #[test]
    fn file_errors_name_the_file_and_the_key_without_figment_internals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c1.toml");
        std::fs::write(&path, "foo = 1\n").unwrap();
        let err = Settings::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(
            err.contains(&format!("{}: foo: unknown key `foo`", path.display())),
            "{err}"
        );
        assert!(
            !err.contains("default.") && !err.contains("TOML file") && !err.contains('\n'),
            "{err}"
        );
        std::fs::write(&path, "[events]\nmax_frame_bytes = \"big\"\n").unwrap();
        let err = Settings::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(
            err.ends_with(&format!(
                "{}: events.max_frame_bytes: found string \"big\", expected a whole number (0 or more)",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_database_url_must_be_a_postgres_url_and_is_not_echoed_otherwise() {
        assert!(check_database_url("postgres://u:pw@db:5432/core4").is_ok());
        assert!(check_database_url("postgresql:///core4?host=/run/pg").is_ok());
        let err = check_database_url("host=db password=hunter2").unwrap_err();
        assert!(err.starts_with("not a postgres:// URL") && err.contains("e.g. postgres://"));
        assert!(!err.contains("hunter2"), "{err}");
        let err = check_database_url("mysql://u@db/x").unwrap_err();
        assert!(err.contains("`mysql://` is not a PostgreSQL URL"), "{err}");
        let err = check_database_url("postgres://u:hunter2@db:port/x").unwrap_err();
        assert!(err.contains("not a valid PostgreSQL URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_core4_variables_are_warned_about_with_the_closest_name() {
        let names = [
            "CORE4_LISTN",
            "CORE4_EVENTS_MAX_FRAME_BYTES",
            "CORE4_WHATEVER_ELSE_ENTIRELY",
            "CORE4_LISTEN",
            "CORE4_EVENTS__BURST",
            "CORE4_SECRET",
            "CORE4_DATABASE_URL",
            "CORE4_SERVER",
            "CORE4_CACERT",
            "CORE4_CONFIG",
            "CORE4_PG_BIN_DIR",
            "PATH",
        ];
        let warnings = unknown_variables(names.iter().map(|s| s.to_string()));
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("CORE4_EVENTS_MAX_FRAME_BYTES is not a core4d setting")
                && warnings[0].ends_with("did you mean CORE4_EVENTS__MAX_FRAME_BYTES?"),
            "{warnings:#?}"
        );
        assert!(
            warnings[1].ends_with("did you mean CORE4_LISTEN?"),
            "{warnings:#?}"
        );
        assert!(
            warnings[2].starts_with("CORE4_WHATEVER_ELSE_ENTIRELY is not a core4d setting")
                && !warnings[2].contains("did you mean"),
            "{warnings:#?}"
        );
        assert_eq!(edit_distance("LISTN", "LISTEN"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("postgres://bob:pw@h:5/db"),
            "postgres://bob:<redacted>@h:5/db"
        );
        assert_eq!(redact_url("postgres://bob@h/db"), "postgres://bob@h/db");
        assert_eq!(
            redact_url("postgres:///db?host=/tmp"),
            "postgres:///db?host=/tmp"
        );
    }

    #[test]
    fn redacted_toml_never_contains_secrets() {
        let s = Settings {
            secret: Some("s".repeat(40)),
            admin_password: Some("hunter22".into()),
            database_url: Some("postgres://u:topsecret@h/db".into()),
            ..Settings::default()
        };
        let text = s.redacted_toml();
        assert!(
            !text.contains("hunter22")
                && !text.contains("topsecret")
                && !text.contains(&"s".repeat(40))
        );
        assert!(text.contains("admin_username = \"admin\""));
    }
}
