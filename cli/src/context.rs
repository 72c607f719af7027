//! What every command needs, resolved once: the server, the output mode and the config store
//! (saved servers and tokens in `$XDG_CONFIG_HOME/core4ctl/config.json`, mode 0600).

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    client::{API_PREFIX, ApiClient, TokenSink},
    error::{CliError, Result},
    output::OutputMode,
};

/// The options every command takes (flattened into the command line by `args`), listed under
/// their own heading so each command's own options stay together in `--help`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// core4d base URL [default: the server saved at login, else http://127.0.0.1:5001]
    #[arg(long, global = true, env = "CORE4_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Trust only the certificate(s) in this PEM file for https:// and wss:// (a self-signed
    /// certificate or a private CA) instead of the system's [default: the one given at login]
    #[arg(long, global = true, env = "CORE4_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Output format: tables for people, JSON with stable field names for scripts
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputMode::Table)]
    pub output: OutputMode,
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:5001";
const CONFIG_FILE: &str = "config.json";

/// The saved state: which server `login` used last, and a token per server.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The server used when neither `--server` nor `CORE4_SERVER` is given.
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostEntry>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostEntry {
    pub username: Option<String>,
    pub token: Option<String>,
    /// The `--cacert` given at login (absolute): used while no other is given. Kept at logout,
    /// as the server's certificate does not change with the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
}

/// The config file. Writes go to a private temporary file that is renamed into place, so a
/// `tail` saving a refreshed token and a `send` in another shell never leave a torn file.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

impl ConfigStore {
    /// The per-user config directory (`$XDG_CONFIG_HOME/core4ctl` or `~/.config/core4ctl`).
    pub fn from_env() -> Result<Self> {
        let dirs = directories::ProjectDirs::from("", "", "core4ctl").ok_or_else(|| {
            CliError::Other(
                "cannot find a home directory for the config: set HOME or XDG_CONFIG_HOME".into(),
            )
        })?;
        Ok(Self::at(dirs.config_dir()))
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    pub fn load(&self) -> Result<Config> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::Other(format!(
                    "the config file {} is damaged ({e}): delete it and run `core4ctl login`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(CliError::Other(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn save(&self, config: &Config) -> Result<()> {
        let fail = |e: std::io::Error| {
            CliError::Other(format!("cannot write {}: {e}", self.path().display()))
        };
        create_private_dir(&self.dir).map_err(fail)?;
        // Unique per process and call; a stale file of that name is removed, never followed.
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{CONFIG_FILE}.{}.{n}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut bytes = serde_json::to_vec_pretty(config).expect("config serialises");
        bytes.push(b'\n');
        let written = create_private_file(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, self.path()));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(fail(e));
        }
        Ok(())
    }

    /// Read, change, write.
    pub fn update(&self, change: impl FnOnce(&mut Config)) -> Result<Config> {
        let mut config = self.load()?;
        change(&mut config);
        self.save(&config)?;
        Ok(config)
    }

    /// Replaces the token saved for `server` with a refreshed one, keeping the rest — but only
    /// while the saved token is still `previous` (the one this process used): a `login` or
    /// `logout` meanwhile wins, and the file is left alone. Returns whether it was saved.
    pub fn save_token(&self, server: &str, previous: Option<&str>, token: &str) -> Result<bool> {
        let mut config = self.load()?;
        let saved = config.hosts.get(server).and_then(|h| h.token.as_deref());
        if saved == Some(token) {
            return Ok(true);
        }
        if saved != previous {
            return Ok(false);
        }
        config.hosts.entry(server.to_owned()).or_default().token = Some(token.to_owned());
        self.save(&config)?;
        Ok(true)
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // It may have existed already, with looser permissions.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Accepts `host:port`, `http://host:port/` and the like, and the API URL itself
/// (`…/core4/api/v1`); returns `scheme://host[:port][/path]` without a trailing slash, which is
/// also the key tokens are saved under.
pub fn normalize_server(raw: &str) -> Result<String> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| {
        CliError::Usage(format!(
            "invalid server URL [{raw}]: {e} (example: http://127.0.0.1:5001)"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(CliError::Usage(format!(
            "invalid server URL [{raw}]: use http://HOST:PORT or https://HOST:PORT"
        )));
    }
    // The API URL the README and Swagger UI show: the server is what comes before it.
    let mut url = url;
    let base = url
        .path()
        .trim_end_matches('/')
        .strip_suffix(API_PREFIX)
        .map(str::to_owned);
    if let Some(base) = base {
        url.set_path(&base);
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Resolved global options plus the config store.
#[derive(Debug)]
pub struct Context {
    pub server: String,
    /// `--cacert`, else the one saved at login: the only certificates trusted for TLS.
    pub cacert: Option<PathBuf>,
    /// Whether `cacert` is the one saved at login (for the message when it is unusable).
    cacert_saved: bool,
    pub output: OutputMode,
    pub store: ConfigStore,
    pub config: Config,
}

impl Context {
    /// `--server`/`CORE4_SERVER`, else the server saved at login, else the default.
    pub fn resolve(global: &GlobalArgs) -> Result<Self> {
        Self::resolve_with(global, ConfigStore::from_env()?)
    }

    pub fn resolve_with(global: &GlobalArgs, store: ConfigStore) -> Result<Self> {
        let config = store.load()?;
        let server = match (&global.server, &config.current) {
            (Some(flag), _) => normalize_server(flag)?,
            (None, Some(saved)) => normalize_server(saved)?,
            (None, None) => DEFAULT_SERVER.to_owned(),
        };
        let saved_cacert = config.hosts.get(&server).and_then(|h| h.cacert.clone());
        let cacert_saved = global.cacert.is_none() && saved_cacert.is_some();
        Ok(Self {
            server,
            cacert: global.cacert.clone().or(saved_cacert),
            cacert_saved,
            output: global.output,
            store,
            config,
        })
    }

    pub fn host(&self) -> Option<&HostEntry> {
        self.config.hosts.get(&self.server)
    }

    pub fn saved_token(&self) -> Option<&str> {
        self.host().and_then(|h| h.token.as_deref())
    }

    /// A client with no credentials (for `login`).
    pub fn anonymous_client(&self) -> Result<ApiClient> {
        self.trusting(ApiClient::new(&self.server, None, None)?)
    }

    fn trusting(&self, client: ApiClient) -> Result<ApiClient> {
        match &self.cacert {
            Some(file) => client.with_cacert(file).map_err(|e| match e {
                CliError::Usage(why) if self.cacert_saved => CliError::Usage(format!(
                    "{why} (it was saved at login to {}; pass --cacert again)",
                    self.server
                )),
                other => other,
            }),
            None => Ok(client),
        }
    }

    /// The `--cacert` to save at login: absolute, so it works from any directory later.
    pub fn cacert_to_save(&self) -> Result<Option<PathBuf>> {
        self.cacert
            .as_deref()
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| CliError::Usage(format!("cannot use --cacert: {e}")))
    }

    /// A client carrying the saved token, saving refreshed tokens as they arrive.
    pub fn client(&self) -> Result<ApiClient> {
        let token = self.saved_token().ok_or_else(|| {
            CliError::Auth(format!(
                "not logged in to {} — run `core4ctl login`",
                self.server
            ))
        })?;
        // The file is only changed while it still holds the token this process used: a later
        // `login` or `logout` in another shell is not undone by a long-running tail.
        let (store, server) = (self.store.clone(), self.server.clone());
        let sink: TokenSink =
            Box::new(move |previous, token| store.save_token(&server, previous, token).map(drop));
        self.trusting(ApiClient::new(
            &self.server,
            Some(token.to_owned()),
            Some(sink),
        )?)
    }

    pub fn json(&self) -> bool {
        self.output == OutputMode::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(server: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            server: server.map(str::to_owned),
            cacert: None,
            output: OutputMode::Table,
        }
    }

    #[test]
    fn servers_are_normalised_to_one_key() {
        assert_eq!(
            normalize_server("127.0.0.1:5001").unwrap(),
            "http://127.0.0.1:5001"
        );
        assert_eq!(
            normalize_server("http://Localhost:5001/").unwrap(),
            "http://localhost:5001"
        );
        assert_eq!(
            normalize_server("https://core4.example/").unwrap(),
            "https://core4.example"
        );
        assert_eq!(
            normalize_server(" http://h:1/base/ ").unwrap(),
            "http://h:1/base"
        );
    }

    #[test]
    fn the_api_url_names_its_server() {
        for (given, server) in [
            (
                "http://127.0.0.1:5001/core4/api/v1",
                "http://127.0.0.1:5001",
            ),
            (
                "http://127.0.0.1:5001/core4/api/v1/",
                "http://127.0.0.1:5001",
            ),
            ("127.0.0.1:5001/core4/api/v1", "http://127.0.0.1:5001"),
            ("https://h/proxy/core4/api/v1/", "https://h/proxy"),
            // Only the whole suffix: a path that merely ends alike is kept.
            ("http://h:1/my-core4/api/v1", "http://h:1/my-core4/api/v1"),
            ("http://h:1/core4/api", "http://h:1/core4/api"),
        ] {
            assert_eq!(normalize_server(given).unwrap(), server, "{given}");
        }
    }

    #[test]
    fn the_cacert_given_at_login_is_used_until_another_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path());
        // A config file written before the cacert was saved still loads.
        fs::write(
            store.path(),
            r#"{"current":"https://h:1","hosts":{"https://h:1":{"username":"a","token":"t"}}}"#,
        )
        .unwrap();
        let ctx = Context::resolve_with(&global(None), store.clone()).unwrap();
        assert_eq!(ctx.cacert, None);
        store
            .update(|c| {
                c.hosts.get_mut("https://h:1").unwrap().cacert = Some("/etc/saved.pem".into());
            })
            .unwrap();
        let ctx = Context::resolve_with(&global(None), store.clone()).unwrap();
        assert_eq!(ctx.cacert.as_deref(), Some(Path::new("/etc/saved.pem")));
        let mut flag = global(None);
        flag.cacert = Some("given.pem".into());
        let ctx = Context::resolve_with(&flag, store.clone()).unwrap();
        assert_eq!(ctx.cacert.as_deref(), Some(Path::new("given.pem")));
        assert!(ctx.cacert_to_save().unwrap().unwrap().is_absolute());
        // Another server does not get this one's certificate.
        let ctx = Context::resolve_with(&global(Some("https://other:1")), store).unwrap();
        assert_eq!(ctx.cacert, None);
    }

    #[test]
    fn bad_server_urls_are_usage_errors() {
        for bad in ["ftp://x", "http://", "http://a b"] {
            let err = normalize_server(bad).unwrap_err();
            assert_eq!(err.exit_code().code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn missing_config_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path().join("core4ctl"));
        assert_eq!(store.load().unwrap(), Config::default());
    }

    #[test]
    fn config_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path().join("nested/core4ctl"));
        store
            .update(|c| {
                c.current = Some("http://h:1".into());
                c.hosts.insert(
                    "http://h:1".into(),
                    HostEntry {
                        username: Some("admin".into()),
                        token: Some("t1".into()),
                        cacert: None,
                    },
                );
            })
            .unwrap();
        assert!(store.save_token("http://h:1", Some("t1"), "t2").unwrap());
        let config = store.load().unwrap();
        assert_eq!(config.hosts["http://h:1"].token.as_deref(), Some("t2"));
        assert_eq!(
            config.hosts["http://h:1"].username.as_deref(),
            Some("admin")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = fs::metadata(dir.path().join("nested/core4ctl"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("nested/core4ctl"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files remain");
    }

    #[test]
    fn a_refreshed_token_does_not_overwrite_a_later_login_or_logout() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path());
        let set = |token: Option<&str>| {
            store
                .update(|c| {
                    c.hosts.entry("http://h:1".into()).or_default().token = token.map(Into::into);
                })
                .unwrap();
        };
        let saved = || store.load().unwrap().hosts["http://h:1"].token.clone();
        set(Some("from-login"));
        assert!(
            !store
                .save_token("http://h:1", Some("old"), "refreshed")
                .unwrap()
        );
        assert_eq!(saved().as_deref(), Some("from-login"));
        set(None);
        assert!(
            !store
                .save_token("http://h:1", Some("old"), "refreshed")
                .unwrap()
        );
        assert_eq!(saved(), None);
        set(Some("old"));
        assert!(
            store
                .save_token("http://h:1", Some("old"), "refreshed")
                .unwrap()
        );
        assert_eq!(saved().as_deref(), Some("refreshed"));
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_config_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("core4ctl");
        fs::create_dir(&conf).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o755)).unwrap();
        ConfigStore::at(&conf).save(&Config::default()).unwrap();
        let mode = fs::metadata(&conf).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_damaged_config_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path());
        fs::write(store.path(), "{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("core4ctl login"), "{err}");
    }

    #[test]
    fn the_server_flag_beats_the_saved_server_which_beats_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::at(dir.path());
        let ctx = Context::resolve_with(&global(None), store.clone()).unwrap();
        assert_eq!(ctx.server, DEFAULT_SERVER);
        store
            .update(|c| c.current = Some("http://saved:1".into()))
            .unwrap();
        let ctx = Context::resolve_with(&global(None), store.clone()).unwrap();
        assert_eq!(ctx.server, "http://saved:1");
        let ctx = Context::resolve_with(&global(Some("flag:2")), store).unwrap();
        assert_eq!(ctx.server, "http://flag:2");
    }

    #[test]
    fn a_client_without_a_saved_token_asks_for_login() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::resolve_with(&global(None), ConfigStore::at(dir.path())).unwrap();
        let err = ctx.client().unwrap_err();
        assert_eq!(err.exit_code().code(), 3);
        assert!(err.to_string().contains("run `core4ctl login`"), "{err}");
    }
}
