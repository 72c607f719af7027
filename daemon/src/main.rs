use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use core4d::{
    settings::{Overrides, Settings},
    startup::Application,
};

/// core4d — the core4 API server: login with revocable tokens, users and roles, and durable
/// event channels over a WebSocket, on PostgreSQL.
///
/// With no database configured, core4d runs its own private PostgreSQL under --data-dir (the
/// PostgreSQL server binaries must be installed). With DATABASE_URL it uses that server; several
/// core4d instances on one database deliver each other's messages.
///
/// Configuration, lowest to highest precedence: built-in defaults, the TOML file (--config or
/// CORE4_CONFIG), CORE4_* environment variables (CORE4_LISTEN, CORE4_SECRET,
/// CORE4_ADMIN_USERNAME, CORE4_ADMIN_PASSWORD, CORE4_TOKEN_EXPIRATION, CORE4_TOKEN_REFRESH,
/// CORE4_ARGON2__M_COST, CORE4_EVENTS__MAX_FRAME_BYTES, ...; nested keys use `__`), then flags.
/// `core4d config` shows every key with its effective value.
///
/// Secrets: there is no built-in secret. Without CORE4_SECRET a signing secret is generated once
/// and kept in the database. The admin is created once, when the database is first initialised:
/// with CORE4_ADMIN_PASSWORD, or else a generated password printed once on stderr.
/// `core4d admin reset-password` sets a forgotten one.
///
/// Exit codes: 0 success, 1 failure, 2 invalid configuration or input (including a data
/// directory whose cluster belongs to another user), 3 no such user or file (or no data yet),
/// 4 refused to protect data (restore over data without --force, or while core4d runs).
///
/// TLS: with tls.cert_file and tls.key_file (PEM; CORE4_TLS__CERT_FILE, CORE4_TLS__KEY_FILE) the
/// listener serves HTTPS and WSS; SIGHUP re-reads both files. Behind a reverse proxy, list it in
/// trusted_proxies (CIDRs) so that its X-Forwarded-For / Forwarded headers name the client.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Examples:\n  core4d                                  # serve on 127.0.0.1:5001, embedded PostgreSQL\n  DATABASE_URL=postgres://u:p@db/core4 core4d --listen 0.0.0.0:5001\n  core4d config                           # effective configuration, secrets redacted\n  core4d openapi > openapi/core4.json     # the API document\n  core4d admin reset-password --username admin\n  core4d backup core4d.dump               # online; restore with `core4d restore core4d.dump`"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "CORE4_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    listen: ListenArg,
    /// PostgreSQL URL; unset: the embedded private cluster. Also DATABASE_URL.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Data directory of the embedded cluster [default: ~/.local/share/core4d]. Also CORE4_DATA_DIR.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--listen`, only where it means something: serving, and `config`, which shows it.
#[derive(Args, Clone, Copy, Default)]
struct ListenArg {
    /// Address to listen on [default: 127.0.0.1:5001]. Also CORE4_LISTEN.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve {
        #[command(flatten)]
        listen: ListenArg,
    },
    /// Print the effective configuration as TOML, secrets redacted, and where the embedded
    /// cluster (and its server.log) is.
    Config {
        #[command(flatten)]
        listen: ListenArg,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Administer users directly in the database, whether core4d runs or not.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Back up the database (embedded or configured) into FILE, a pg_dump custom-format file
    /// (mode 0600). Works while core4d runs.
    #[command(after_help = "Example:\n  core4d backup /var/backups/core4d-$(date +%F).dump")]
    Backup {
        /// The backup file to write (replaced when it exists).
        file: PathBuf,
    },
    /// Replace the database (embedded or configured) with a backup made by `core4d backup`.
    /// Stop core4d first. A data directory without a cluster gets a new one. All or nothing:
    /// on failure the database is left as it was.
    #[command(after_help = "Example:\n  core4d --data-dir /var/lib/core4d restore core4d.dump")]
    Restore {
        /// The backup file to read.
        file: PathBuf,
        /// Replace a database that already holds data (everything in its public schema).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set a user's password and end all of its tokens, on the embedded database (running or
    /// not) or the configured one. Asks twice on the terminal, or reads --password-stdin.
    #[command(
        after_help = "Examples:\n  core4d admin reset-password --username admin\n  printf '%s\\n' \"$PW\" | core4d admin reset-password --username admin --password-stdin"
    )]
    ResetPassword {
        /// The user whose password to set.
        #[arg(long)]
        username: String,
        /// Read the password from stdin (one trailing newline is dropped).
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve {
        listen: ListenArg::default(),
    });
    let listen = match &command {
        Command::Serve { listen } | Command::Config { listen } => listen.listen,
        _ => None,
    }
    .or(cli.listen.listen);
    let overrides = Overrides {
        listen,
        database_url: cli.database_url.clone(),
        data_dir: cli.data_dir.clone(),
    };
    let settings = match Settings::load(cli.config.as_deref(), &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("core4d: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Serving logs its start-up; the other commands' output is their result, so only warnings.
    let filter = match command {
        Command::Serve { .. } => core4d::telemetry::DEFAULT_FILTER,
        _ => "warn",
    };
    core4d::telemetry::init_with_default(settings.log_format.as_str(), filter);
    for warning in core4d::settings::unknown_variable_warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("core4d: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if matches!(
        command,
        Command::Admin(_) | Command::Backup { .. } | Command::Restore { .. }
    ) {
        return runtime.block_on(administer(command, settings));
    }
    let result = runtime.block_on(async move {
        match command {
            Command::Config { .. } => {
                print!("{}", config_text(&settings));
                Ok(())
            }
            Command::Openapi => {
                println!("{}", core4d::api::offline_spec(&settings).await?);
                Ok(())
            }
            Command::Serve { .. } => serve(settings).await,
            Command::Admin(_) | Command::Backup { .. } | Command::Restore { .. } => {
                unreachable!("handled by administer")
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("core4d: {e:#}");
            std::process::ExitCode::from(serve_exit_code(&e))
        }
    }
}

/// 2 for what the operator must fix in the configuration or invocation (as `--help` says), 1
/// for everything else.
fn serve_exit_code(e: &anyhow::Error) -> u8 {
    let config = e.chain().any(|cause| {
        cause.is::<core4d::settings::ConfigError>()
            || matches!(
                cause.downcast_ref::<core4d::embedded_pg::EmbeddedError>(),
                Some(core4d::embedded_pg::EmbeddedError::OwnedByOther { .. })
            )
    });
    if config { 2 } else { 1 }
}

/// The effective configuration, with the embedded cluster's directory after `data_dir`: for
/// root it is not under `data_dir`, and that is where `server.log` is.
fn config_text(settings: &Settings) -> String {
    let cluster = match &settings.database_url {
        Some(_) => "# embedded cluster: not used (database_url is set)".to_string(),
        None => match core4d::embedded_pg::cluster_dir_for(&settings.data_dir) {
            Ok(dir) => format!(
                "# embedded cluster: {} (PostgreSQL's data and server.log)",
                dir.display()
            ),
            Err(e) => format!("# embedded cluster: unknown ({e})"),
        },
    };
    let mut out = String::new();
    for line in settings.redacted_toml().lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("data_dir = ") {
            out.push_str(&cluster);
            out.push('\n');
        }
    }
    out
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    raise_open_file_limit();
    let app = Application::build(settings).await?;
    if let Some(pw) = &app.generated_admin_password {
        let settings = &app.state().settings;
        let name = settings.admin_username.trim();
        eprintln!("core4d: created the admin user `{name}` with the password: {pw}");
        eprintln!(
            "core4d: it is shown only this once; change it with `core4ctl roles update {name} \
             --password-prompt` (or `{}`).",
            core4d::admin::reset_password_command(settings, name)
        );
    }
    let shutdown = shutdown_signal();
    // Before "ready": a SIGHUP after it must not hit the default action (terminate).
    spawn_reload_on_sighup(app.reloader());
    let listen = app.state().settings.listen;
    tracing::info!(address = %std::net::SocketAddr::new(listen.ip(), app.port()), port = app.port(), "core4d is ready");
    app.run_until_stopped(shutdown).await
}

/// The administrative commands: what was done goes to stdout, errors to stderr, and the exit
/// code says which kind of failure it was.
async fn administer(command: Command, settings: Settings) -> std::process::ExitCode {
    let done = match command {
        Command::Admin(AdminCommand::ResetPassword {
            username,
            password_stdin,
        }) => reset_password(&settings, &username, password_stdin).await,
        Command::Backup { file } => core4d::backup::backup(&settings, &file).await.map(|r| {
            println!(
                "backed up {} into {} ({} bytes)",
                r.contents,
                r.file.display(),
                r.bytes
            );
        }),
        Command::Restore { file, force } => core4d::backup::restore(&settings, &file, force)
            .await
            .map(|r| {
                let how = if r.replaced {
                    "replaced the database with"
                } else {
                    "restored"
                };
                println!("{how} {} from {}", r.contents, file.display());
            }),
        _ => unreachable!("not an administrative command"),
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("core4d: {e:#}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

async fn reset_password(
    settings: &Settings,
    username: &str,
    password_stdin: bool,
) -> Result<(), core4d::admin::AdminError> {
    let password = core4d::admin::read_new_password(password_stdin)?;
    let r = core4d::admin::reset_password(settings, username, &password).await?;
    println!(
        "set the password of user `{}` (id {}); every token it held is now invalid{}",
        r.username,
        r.id,
        if r.core4d_running {
            ", also in the running core4d"
        } else {
            ""
        }
    );
    if !r.is_active {
        println!(
            "note: `{}` is inactive and cannot log in until a cop activates it",
            r.username
        );
    }
    Ok(())
}

/// SIGHUP re-reads the TLS certificate and key; a failed reload keeps the old ones.
fn spawn_reload_on_sighup(reloader: core4d::startup::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: certificates reload only on restart");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = reloader.reload() {
                    tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the previous certificate");
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Resolves at SIGTERM or Ctrl-C. The handlers are installed when this is called, not when it is
/// first polled, so a stop that comes right after "ready" still shuts down cleanly.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match signals {
            Ok((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}

/// Many idle WebSockets need many descriptors: lift the soft limit to the hard one.
fn raise_open_file_limit() {
    // `prlimit` from util-linux does it without unsafe code in this crate.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=unlimited:"])
        .output();
}
