//! The private PostgreSQL cluster core4d runs when no database URL is configured.
//!
//! This module owns the cluster's whole life: finding the server binaries installed on the
//! machine, `initdb` on first start, starting `postgres` as a supervised child that listens only
//! on a unix socket in a 0700 directory, noticing when it exits, and stopping it.
//!
//! Layout, under `<data_dir>/pg` (the "cluster dir", mode 0700):
//! `data/` (PGDATA), `run/` (the socket directory), `server.log` (postgres' output; the previous
//! run's is kept as `server.log.1`) and `core4d.lock`, which one core4d holds while it runs the
//! cluster.
//!
//! As root: `initdb` and `postgres` refuse to run as root, so they run as the `postgres` system
//! user and the cluster dir belongs to that user. When that user cannot reach `<data_dir>`
//! (e.g. it is under `/root`, mode 0700), the cluster lives in `/var/lib/core4d/pg-<hash of
//! data_dir>` instead.
//!
//! A socket path longer than the kernel's limit (107 bytes) is an error that names the path;
//! there is no silent fallback to a shared directory such as /tmp.

use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::sync::watch;

/// Environment variable naming the directory that holds `initdb`, `postgres` and `pg_ctl`.
pub const BIN_DIR_ENV: &str = "CORE4_PG_BIN_DIR";

/// Where the cluster goes when running as root and the `postgres` user cannot reach data_dir.
const ROOT_FALLBACK_PARENT: &str = "/var/lib/core4d";
const PORT: u16 = 5432;
/// `sizeof(sockaddr_un.sun_path)` is 108 on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT_SECS: &str = "60";
const SERVER_BINARIES: [&str; 3] = ["initdb", "postgres", "pg_ctl"];
/// `application_name` of the connection that checks the server is up. Its backend may still be
/// exiting when the start returns, so checks for other sessions (restore) leave it out.
pub const STARTUP_PROBE: &str = "core4d-startup-probe";

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// core4d's data directory; the cluster lives in `data_dir/pg` (see the module doc for root).
    pub data_dir: PathBuf,
    /// `true` in production (PostgreSQL's defaults); `false` trades crash safety for speed.
    pub fsync: bool,
    /// Server settings, each passed as `-c key=value`.
    pub extra_settings: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries ({}) found in {searched}: install PostgreSQL \
         (e.g. `apt-get install postgresql`) or set DATABASE_URL to use an existing server",
        SERVER_BINARIES.join(", ")
    )]
    NoBinaries { searched: String },
    #[error(
        "the PostgreSQL socket path {path} is {len} bytes, longer than the {MAX_SOCKET_PATH} \
         bytes a unix socket allows: use a shorter data directory or set DATABASE_URL"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error(
        "running as root, but there is no `postgres` user in /etc/passwd to run PostgreSQL as \
         (PostgreSQL refuses to run as root): create that user or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "the embedded cluster in {dir} belongs to user `{owner}`: run core4d as that user \
         (e.g. `runuser -u {owner} -- core4d ...`), as its service does"
    )]
    OwnedByOther { dir: PathBuf, owner: String },
    #[error("another process is already running the private PostgreSQL cluster in {0}")]
    InUse(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("initdb failed for {dir}:\n{output}")]
    Initdb { dir: PathBuf, output: String },
    #[error("could not stop the PostgreSQL server in {dir}:\n{output}")]
    Stop { dir: PathBuf, output: String },
    #[error(
        "the embedded cluster in {pgdata} was created by PostgreSQL {cluster}, but the binaries \
         in {bin_dir} are PostgreSQL {binaries}: back it up with the old binaries \
         (`CORE4_PG_BIN_DIR={old_bin_dir} core4d backup FILE`), move the data directory aside and \
         `core4d restore FILE` with the new ones, or upgrade the cluster with pg_upgrade"
    )]
    VersionMismatch {
        pgdata: PathBuf,
        cluster: String,
        binaries: String,
        bin_dir: PathBuf,
        /// Where that version's binaries are, or would be on Debian and Ubuntu.
        old_bin_dir: PathBuf,
    },
    #[error(
        "there is no embedded cluster in {0} yet: start core4d once, or point --data-dir or \
         DATABASE_URL at the database you mean"
    )]
    NotInitialised(PathBuf),
    #[error("PostgreSQL exited while starting: {0}")]
    ExitedDuringStartup(PostgresExit),
    #[error(
        "PostgreSQL did not accept connections within {}s (last error: {last_error}); \
         end of {log}:\n{log_tail}",
        READY_TIMEOUT.as_secs()
    )]
    NotReady {
        last_error: String,
        log: PathBuf,
        log_tail: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// How the postmaster ended, with the end of its log so the reason can be shown.
#[derive(Debug, Clone)]
pub struct PostgresExit {
    /// `None` when the exit status could not be collected.
    pub status: Option<ExitStatus>,
    pub log: PathBuf,
    pub log_tail: String,
}

impl fmt::Display for PostgresExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "postgres exited ({status})")?,
            None => write!(f, "postgres exited (status unknown)")?,
        }
        write!(f, "; end of {}:\n{}", self.log.display(), self.log_tail)
    }
}

/// The unprivileged account the server runs as when core4d runs as root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running private PostgreSQL. Call [`EmbeddedPostgres::stop`] for a clean shutdown; dropping
/// it instead stops the server with `pg_ctl stop` (fast, then immediate) synchronously.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    cluster_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    run_as: Option<RunAs>,
    initialized_now: bool,
    pid: u32,
    exit_rx: watch::Receiver<Option<PostgresExit>>,
    stopped: bool,
    // Held, never read: the flock tells a later core4d whether a postmaster here is orphaned.
    _lock: File,
}

impl EmbeddedPostgres {
    /// Find binaries, initdb on first start, start postgres as a supervised child, wait until it
    /// accepts connections.
    pub async fn start(opts: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_pg_bin_dir()?;
        Self::start_with_bin_dir(opts, bin_dir).await
    }

    /// [`EmbeddedPostgres::start`] with the binaries' directory already chosen.
    pub async fn start_with_bin_dir(
        opts: EmbeddedOptions,
        bin_dir: PathBuf,
    ) -> Result<Self, EmbeddedError> {
        let started = Instant::now();
        let run_as = if running_as_root()? {
            Some(postgres_user()?.ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let cluster_dir = choose_cluster_dir(&opts.data_dir, run_as)?;
        let socket_dir = cluster_dir.join("run");
        let socket_path = socket_dir.join(format!(".s.PGSQL.{PORT}"));
        let len = socket_path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(EmbeddedError::SocketPathTooLong {
                path: socket_path,
                len,
            });
        }
        private_dir(&cluster_dir, run_as)?;
        private_dir(&socket_dir, run_as)?;

        let lock_path = cluster_dir.join("core4d.lock");
        let lock = File::create(&lock_path).map_err(io_err(format!(
            "could not create lock file {}",
            lock_path.display()
        )))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(EmbeddedError::InUse(cluster_dir)),
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err(format!("could not lock {}", lock_path.display()))(e));
            }
        }

        let pgdata = cluster_dir.join("data");
        let log_path = cluster_dir.join("server.log");
        let mut pg = Self {
            bin_dir,
            cluster_dir,
            pgdata,
            socket_dir,
            log_path,
            run_as,
            initialized_now: false,
            pid: 0,
            // Replaced once the child runs; a closed channel until then.
            exit_rx: watch::channel(None).1,
            // Nothing to stop until the child runs.
            stopped: true,
            _lock: lock,
        };

        if !pg.pgdata.join("PG_VERSION").exists() {
            pg.initdb(opts.fsync).await?;
            pg.initialized_now = true;
        } else {
            check_version(&pg.pgdata, &pg.bin_dir).await?;
            pg.stop_orphan().await?;
        }
        pg.spawn_postmaster(&opts)?;
        pg.wait_until_ready().await?;
        tracing::info!(
            cluster = %pg.cluster_dir.display(),
            initdb = pg.initialized_now,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "private PostgreSQL is ready"
        );
        Ok(pg)
    }

    /// A URL sqlx (and libpq) accepts for database `db`, connecting over the unix socket as user
    /// postgres.
    pub fn url(&self, db: &str) -> String {
        socket_url(&self.socket_dir, db)
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The directory holding PGDATA, the socket directory and the server log.
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// PGDATA, for `pg_ctl -D`.
    pub fn data_directory(&self) -> &Path {
        &self.pgdata
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Was this start an initdb (first start)?
    pub fn initialized_now(&self) -> bool {
        self.initialized_now
    }

    /// Resolves when the postmaster exits for any reason, including [`EmbeddedPostgres::stop`].
    /// Cancel safe.
    pub async fn exited(&self) -> PostgresExit {
        let mut rx = self.exit_rx.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit
                .clone()
                .expect("wait_for returned a value that is Some"),
            // The supervising task is gone only when the runtime shuts down.
            Err(_) => PostgresExit {
                status: None,
                log: self.log_path.clone(),
                log_tail: log_tail(&self.log_path),
            },
        }
    }

    /// Clean shutdown (`pg_ctl stop -m fast`); waits for the postmaster to exit.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        if self.has_exited() {
            self.stopped = true;
            return Ok(());
        }
        let out = self
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", STOP_TIMEOUT_SECS])
            .output()
            .await
            .map_err(io_err("could not run pg_ctl stop"))?;
        if !out.status.success() && !self.has_exited() {
            return Err(EmbeddedError::Stop {
                dir: self.pgdata.clone(),
                output: command_output(&out),
            });
        }
        // pg_ctl returns once postmaster.pid is gone; the process exit follows at once.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.exited()).await;
        self.stopped = true;
        Ok(())
    }

    fn has_exited(&self) -> bool {
        self.exit_rx.borrow().is_some()
    }

    /// A command for one of the server binaries, as the server's user, in the cluster dir (so
    /// the tools never start in a directory that user cannot read, such as /root).
    fn std_command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(program));
        cmd.current_dir(&self.cluster_dir).stdin(Stdio::null());
        if let Some(RunAs { uid, gid }) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.std_command("pg_ctl");
        cmd.arg("-D").arg(&self.pgdata).args(args);
        cmd.into()
    }

    async fn initdb(&self, fsync: bool) -> Result<(), EmbeddedError> {
        let started = Instant::now();
        let mut cmd: tokio::process::Command = self.std_command("initdb").into();
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .arg("--locale=C.UTF-8");
        // Syncing the new cluster costs ~0.1 s on disk; only a throwaway cluster skips it.
        if !fsync {
            cmd.arg("-N");
        }
        let out = cmd.output().await.map_err(io_err(format!(
            "could not run {}/initdb",
            self.bin_dir.display()
        )))?;
        if !out.status.success() {
            return Err(EmbeddedError::Initdb {
                dir: self.pgdata.clone(),
                output: command_output(&out),
            });
        }
        tracing::info!(
            data = %self.pgdata.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "created a new PostgreSQL cluster"
        );
        Ok(())
    }

    /// We hold the cluster lock, so a postmaster still running here was left behind by a core4d
    /// that died without stopping it (e.g. SIGKILL). A pid file whose process is gone is left
    /// for postgres, which removes it itself.
    async fn stop_orphan(&self) -> Result<(), EmbeddedError> {
        let Some(pid) = postmaster_pid(&self.pgdata) else {
            return Ok(());
        };
        // The pid may have been reused; the postmaster is the process whose cwd is PGDATA.
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
        let ours = fs::canonicalize(&self.pgdata).ok();
        if cwd.is_none() || cwd != ours {
            return Ok(());
        }
        tracing::warn!(
            pid,
            data = %self.pgdata.display(),
            "stopping an orphaned PostgreSQL left running by an earlier core4d"
        );
        let out = self
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", STOP_TIMEOUT_SECS])
            .output()
            .await
            .map_err(io_err("could not run pg_ctl stop"))?;
        if !out.status.success() {
            return Err(EmbeddedError::Stop {
                dir: self.pgdata.clone(),
                output: command_output(&out),
            });
        }
        Ok(())
    }

    fn spawn_postmaster(&mut self, opts: &EmbeddedOptions) -> Result<(), EmbeddedError> {
        let log = self.open_log()?;
        let log_err = log
            .try_clone()
            .map_err(io_err("could not duplicate the server log handle"))?;
        let mut cmd = self.std_command("postgres");
        cmd.arg("-D")
            .arg(&self.pgdata)
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string(), "-c", "listen_addresses="]);
        if !opts.fsync {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        for (key, value) in &opts.extra_settings {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        cmd.stdout(log).stderr(log_err);
        let mut cmd: tokio::process::Command = cmd.into();
        // Its own process group keeps a terminal's Ctrl-C from reaching postgres, so core4d
        // decides the shutdown order. kill_on_drop is the last resort if the runtime goes away.
        cmd.process_group(0).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(io_err(format!(
            "could not start {}/postgres",
            self.bin_dir.display()
        )))?;
        self.pid = child.id().unwrap_or(0);
        self.stopped = false;

        let (tx, rx) = watch::channel(None);
        self.exit_rx = rx;
        let log_path = self.log_path.clone();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let exit = PostgresExit {
                status,
                log_tail: log_tail(&log_path),
                log: log_path,
            };
            tracing::debug!(%exit, "postgres exited");
            tx.send_replace(Some(exit));
        });
        Ok(())
    }

    /// Opens a fresh server.log, keeping the previous run's as server.log.1.
    fn open_log(&self) -> Result<File, EmbeddedError> {
        if self.log_path.exists() {
            let _ = fs::rename(&self.log_path, self.cluster_dir.join("server.log.1"));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log_path)
            .map_err(io_err(format!(
                "could not create {}",
                self.log_path.display()
            )))?;
        if let Some(RunAs { uid, gid }) = self.run_as {
            std::os::unix::fs::chown(&self.log_path, Some(uid), Some(gid)).map_err(io_err(
                format!("could not chown {}", self.log_path.display()),
            ))?;
        }
        Ok(log)
    }

    async fn wait_until_ready(&self) -> Result<(), EmbeddedError> {
        let url = self.url("postgres");
        let probe = sqlx::postgres::PgConnectOptions::from_str(&url)
            .map(|o| o.application_name(STARTUP_PROBE))
            .map_err(|e| EmbeddedError::NotReady {
                last_error: e.to_string(),
                log: self.log_path.clone(),
                log_tail: String::new(),
            })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("the socket never appeared");
        loop {
            if let Some(exit) = self.exit_rx.borrow().clone() {
                return Err(EmbeddedError::ExitedDuringStartup(exit));
            }
            if self.socket_dir.join(format!(".s.PGSQL.{PORT}")).exists() {
                match sqlx::PgConnection::connect_with(&probe).await {
                    Ok(conn) => {
                        let _ = conn.close().await;
                        return Ok(());
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::NotReady {
                    last_error,
                    log: self.log_path.clone(),
                    log_tail: log_tail(&self.log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EmbeddedPostgres {
    /// Best effort so the postmaster does not outlive core4d; synchronous because Drop is. A fast
    /// shutdown first, because an immediate one leaves its shared memory files in /dev/shm.
    fn drop(&mut self) {
        if self.stopped || self.has_exited() {
            return;
        }
        let stopped = ["fast", "immediate"].into_iter().any(|mode| {
            self.std_command("pg_ctl")
                .arg("-D")
                .arg(&self.pgdata)
                .args(["stop", "-m", mode, "-w", "-t", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !stopped {
            tracing::warn!(
                pid = self.pid,
                "could not stop the private PostgreSQL on drop"
            );
        }
    }
}

fn socket_url(socket_dir: &Path, db: &str) -> String {
    format!(
        "postgres://postgres@localhost:{PORT}/{}?host={}&sslmode=disable",
        percent_encode(db.as_bytes(), false),
        percent_encode(socket_dir.as_os_str().as_bytes(), true),
    )
}

/// The embedded cluster as an administrative command (`core4d admin`, `backup`, `restore`)
/// finds it: served by a running core4d, or started for the command and stopped after it.
#[derive(Debug)]
pub enum Attached {
    /// A running core4d holds the cluster; the command connects to its socket.
    Shared { url: String, bin_dir: PathBuf },
    /// Nobody ran the cluster: the command started it and stops it with [`Attached::release`].
    Own(EmbeddedPostgres),
}

impl Attached {
    /// Finds the cluster of `opts.data_dir`. `create`: initdb when there is none yet (restore
    /// into a fresh data dir); otherwise a missing cluster is [`EmbeddedError::NotInitialised`].
    pub async fn open(opts: EmbeddedOptions, create: bool) -> Result<Self, EmbeddedError> {
        let bin_dir = find_pg_bin_dir()?;
        let run_as = if running_as_root()? {
            Some(postgres_user()?.ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        if !create && !opts.data_dir.is_dir() {
            return Err(EmbeddedError::NotInitialised(opts.data_dir.clone()));
        }
        let cluster_dir = choose_cluster_dir(&opts.data_dir, run_as)?;
        if !create && !cluster_dir.join("data").join("PG_VERSION").exists() {
            return Err(EmbeddedError::NotInitialised(opts.data_dir.clone()));
        }
        let socket_dir = cluster_dir.join("run");
        let lock_path = cluster_dir.join("core4d.lock");
        let running = match File::open(&lock_path) {
            Ok(lock) => match lock.try_lock() {
                Ok(()) => false,
                Err(fs::TryLockError::WouldBlock) => true,
                Err(fs::TryLockError::Error(e)) => {
                    return Err(io_err(format!("could not lock {}", lock_path.display()))(e));
                }
            },
            Err(_) => false,
        };
        if !running {
            return Ok(Self::Own(
                EmbeddedPostgres::start_with_bin_dir(opts, bin_dir).await?,
            ));
        }
        // The core4d holding the lock may still be starting its postmaster.
        let socket = socket_dir.join(format!(".s.PGSQL.{PORT}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !socket.exists() {
            if Instant::now() >= deadline {
                return Err(EmbeddedError::NotReady {
                    last_error: format!("{} never appeared", socket.display()),
                    log: cluster_dir.join("server.log"),
                    log_tail: log_tail(&cluster_dir.join("server.log")),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self::Shared {
            url: socket_url(&socket_dir, "postgres"),
            bin_dir,
        })
    }

    /// The URL of core4d's database in the cluster.
    pub fn url(&self) -> String {
        match self {
            Self::Shared { url, .. } => url.clone(),
            Self::Own(pg) => pg.url("postgres"),
        }
    }

    pub fn bin_dir(&self) -> &Path {
        match self {
            Self::Shared { bin_dir, .. } => bin_dir,
            Self::Own(pg) => pg.bin_dir(),
        }
    }

    /// Whether a running core4d serves this cluster.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Shared { .. })
    }

    /// Stops the cluster if this command started it.
    pub async fn release(self) -> Result<(), EmbeddedError> {
        match self {
            Self::Shared { .. } => Ok(()),
            Self::Own(pg) => pg.stop().await,
        }
    }
}

/// A client tool (`pg_dump`, `pg_restore`, `psql`): from the server binaries' directory when it
/// is there (the same major version as the embedded cluster), else from `PATH`.
pub fn client_tool(name: &str) -> PathBuf {
    find_pg_bin_dir()
        .ok()
        .map(|dir| dir.join(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A cluster's files only work with the major version that wrote them; refuse a mismatch
/// before postgres does, with a line saying what to do.
async fn check_version(pgdata: &Path, bin_dir: &Path) -> Result<(), EmbeddedError> {
    let cluster = fs::read_to_string(pgdata.join("PG_VERSION"))
        .map_err(io_err(format!(
            "could not read {}",
            pgdata.join("PG_VERSION").display()
        )))?
        .trim()
        .to_string();
    let out = tokio::process::Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_err(format!(
            "could not run {}/postgres --version",
            bin_dir.display()
        )))?;
    let Some(binaries) = major_version(&String::from_utf8_lossy(&out.stdout)) else {
        // An unparsable answer is no reason to refuse: postgres itself checks PG_VERSION.
        return Ok(());
    };
    if binaries == cluster {
        return Ok(());
    }
    Err(EmbeddedError::VersionMismatch {
        pgdata: pgdata.to_path_buf(),
        old_bin_dir: PathBuf::from(format!("/usr/lib/postgresql/{cluster}/bin")),
        cluster,
        binaries,
        bin_dir: bin_dir.to_path_buf(),
    })
}

/// The major version in `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`, as PG_VERSION
/// writes it: `15` since version 10, `9.6` before.
fn major_version(version_output: &str) -> Option<String> {
    let number = version_output
        .split_once("(PostgreSQL) ")?
        .1
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = number.split('.');
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 {
        Some(first.to_string())
    } else {
        Some(format!("{first}.{}", parts.next()?))
    }
}

/// Finds the PostgreSQL server binaries, honouring `CORE4_PG_BIN_DIR`.
pub fn find_pg_bin_dir() -> Result<PathBuf, EmbeddedError> {
    find_pg_bin_dir_with(std::env::var_os(BIN_DIR_ENV).map(PathBuf::from).as_deref())
}

/// Finds the server binaries: only in `override_dir` when given; otherwise the first `PATH`
/// entry holding them, then `pg_config --bindir`, then the highest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bin_dir_with(override_dir: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = override_dir {
        return if has_server_binaries(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(EmbeddedError::NoBinaries {
                searched: format!("{BIN_DIR_ENV}={}", dir.display()),
            })
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server_binaries(&dir) {
                return Ok(real_bin_dir(&dir));
            }
        }
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versioned.sort();
    versioned
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(EmbeddedError::NoBinaries {
            searched: "PATH, `pg_config --bindir` or /usr/lib/postgresql/*/bin".into(),
        })
}

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|name| {
        fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    })
}

/// PATH often holds symlinks (e.g. /usr/local/bin/postgres); prefer the directory they point
/// into, where the rest of that version's tools live.
fn real_bin_dir(dir: &Path) -> PathBuf {
    fs::canonicalize(dir.join("postgres"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|real| has_server_binaries(real))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// `/proc/self` belongs to the effective uid; this avoids libc's geteuid, which needs unsafe.
fn running_as_root() -> Result<bool, EmbeddedError> {
    let meta = fs::metadata("/proc/self").map_err(io_err("could not read /proc/self"))?;
    Ok(meta.uid() == 0)
}

fn postgres_user() -> Result<Option<RunAs>, EmbeddedError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("could not read /etc/passwd"))?;
    Ok(passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != "postgres" {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(RunAs { uid, gid })
    }))
}

fn choose_cluster_dir(data_dir: &Path, run_as: Option<RunAs>) -> Result<PathBuf, EmbeddedError> {
    fs::create_dir_all(data_dir).map_err(io_err(format!(
        "could not create the data directory {}",
        data_dir.display()
    )))?;
    let data_dir = fs::canonicalize(data_dir).map_err(io_err(format!(
        "could not resolve the data directory {}",
        data_dir.display()
    )))?;
    check_owner(&data_dir.join("pg"), run_as)?;
    let reachable = run_as.is_none_or(|user| can_traverse(&data_dir, user));
    let dir = cluster_dir_of(&data_dir, reachable);
    if reachable {
        return Ok(dir);
    }
    let parent = Path::new(ROOT_FALLBACK_PARENT);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io_err(format!("could not create {}", parent.display())))?;
    tracing::info!(
        data_dir = %data_dir.display(),
        cluster = %dir.display(),
        "the postgres user cannot reach the data directory, so the private PostgreSQL cluster lives elsewhere"
    );
    Ok(dir)
}

/// The cluster dir of a canonical data dir: inside it, or (root, and the `postgres` user cannot
/// reach it) in the fallback parent under a stable name.
fn cluster_dir_of(data_dir: &Path, reachable: bool) -> PathBuf {
    if reachable {
        data_dir.join("pg")
    } else {
        Path::new(ROOT_FALLBACK_PARENT).join(format!("pg-{:016x}", fnv1a(data_dir.as_os_str())))
    }
}

/// Where the embedded cluster of `data_dir` is, or will be at the first start, without creating
/// anything: `core4d config` shows it, so the operator finds `server.log`.
pub fn cluster_dir_for(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let run_as = if running_as_root()? {
        postgres_user()?
    } else {
        None
    };
    let absolute = std::path::absolute(data_dir).map_err(io_err(format!(
        "could not resolve the data directory {}",
        data_dir.display()
    )))?;
    // The first start creates the missing part (mode 0755 under the usual umask): only the
    // directories that exist decide whether the `postgres` user gets through.
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        missing.push(name);
        existing = parent;
    }
    let mut canonical = fs::canonicalize(existing).map_err(io_err(format!(
        "could not resolve the data directory {}",
        data_dir.display()
    )))?;
    canonical.extend(missing.iter().rev());
    let reachable = run_as.is_none_or(|user| can_traverse(existing, user));
    Ok(cluster_dir_of(&canonical, reachable))
}

/// A cluster must be run by the user that owns it: PostgreSQL refuses others, and root would
/// otherwise look for its own cluster elsewhere (e.g. an operator's `core4d backup` as root on a
/// service's data directory).
fn check_owner(cluster_dir: &Path, run_as: Option<RunAs>) -> Result<(), EmbeddedError> {
    let Ok(meta) = fs::metadata(cluster_dir) else {
        return Ok(());
    };
    let expected = match run_as {
        Some(user) => user.uid,
        None => fs::metadata("/proc/self")
            .map_err(io_err("could not read /proc/self"))?
            .uid(),
    };
    if meta.uid() == expected {
        return Ok(());
    }
    Err(EmbeddedError::OwnedByOther {
        dir: cluster_dir.to_path_buf(),
        owner: user_name(meta.uid()).unwrap_or_else(|| meta.uid().to_string()),
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// Whether `user` may search every directory from / down to `dir` (owner, then group, then
/// other bits, as the kernel checks them; ACLs and supplementary groups are ignored).
fn can_traverse(dir: &Path, user: RunAs) -> bool {
    dir.ancestors().all(|d| {
        fs::metadata(d).is_ok_and(|m| {
            let bit = if m.uid() == user.uid {
                0o100
            } else if m.gid() == user.gid {
                0o010
            } else {
                0o001
            };
            m.mode() & bit != 0
        })
    })
}

/// A stable name for the fallback cluster: std's hashers may change between Rust releases.
fn fnv1a(s: &OsStr) -> u64 {
    s.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Creates `dir` if needed and makes it 0700 and owned by the server's user.
fn private_dir(dir: &Path, run_as: Option<RunAs>) -> Result<(), EmbeddedError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("could not create {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("could not chmod {}", dir.display())))?;
    if let Some(RunAs { uid, gid }) = run_as {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(io_err(format!("could not chown {}", dir.display())))?;
    }
    Ok(())
}

fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    const MAX_BYTES: u64 = 4096;
    const MAX_LINES: usize = 20;
    let Ok(mut file) = File::open(path) else {
        return String::from("(no server log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(MAX_LINES)..].join("\n")
}

fn command_output(out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim_end().to_owned()
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn percent_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_is_read_as_pg_version_writes_it() {
        let v = |s: &str| major_version(s);
        assert_eq!(
            v("postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(v("postgres (PostgreSQL) 17beta1").as_deref(), Some("17"));
        assert_eq!(v("postgres (PostgreSQL) 9.6.24").as_deref(), Some("9.6"));
        assert_eq!(v("something else"), None);
    }
}
