use std::path::PathBuf;

use clap::{Parser, Subcommand};
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
/// and kept in the database. Without CORE4_ADMIN_PASSWORD the first start generates the admin
/// password and prints it once on stderr.
///
/// TLS: with tls.cert_file and tls.key_file (PEM; CORE4_TLS__CERT_FILE, CORE4_TLS__KEY_FILE) the
/// listener serves HTTPS and WSS; SIGHUP re-reads both files. Behind a reverse proxy, list it in
/// trusted_proxies (CIDRs) so that its X-Forwarded-For / Forwarded headers name the client.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Examples:\n  core4d                                  # serve on 127.0.0.1:5001, embedded PostgreSQL\n  DATABASE_URL=postgres://u:p@db/core4 core4d --listen 0.0.0.0:5001\n  core4d config                           # effective configuration, secrets redacted\n  core4d openapi > openapi/core4.json     # the API document"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "CORE4_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5001].
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// PostgreSQL URL; unset: the embedded private cluster. Also DATABASE_URL.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Data directory of the embedded cluster [default: ~/.local/share/core4d]. Also CORE4_DATA_DIR.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the effective configuration as TOML, secrets redacted.
    Config,
    /// Print the OpenAPI document.
    Openapi,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
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
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Config => {
                print!("{}", settings.redacted_toml());
                Ok(())
            }
            Command::Openapi => {
                println!("{}", core4d::api::offline_spec(&settings).await?);
                Ok(())
            }
            Command::Serve => serve(settings).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("core4d: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    core4d::telemetry::init(&settings.log_format);
    raise_open_file_limit();
    let app = Application::build(settings).await?;
    if let Some(pw) = &app.generated_admin_password {
        eprintln!(
            "core4d: created the admin user `{}` with the password: {pw}",
            app.state().settings.admin_username
        );
        eprintln!("core4d: it is shown only this once; change it with `core4ctl roles update`.");
    }
    // Before "ready": a SIGHUP after it must not hit the default action (terminate).
    spawn_reload_on_sighup(app.reloader());
    let listen = app.state().settings.listen;
    tracing::info!(address = %std::net::SocketAddr::new(listen.ip(), app.port()), port = app.port(), "core4d is ready");
    app.run_until_stopped(shutdown_signal()).await
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Many idle WebSockets need many descriptors: lift the soft limit to the hard one.
fn raise_open_file_limit() {
    // `prlimit` from util-linux does it without unsafe code in this crate.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=unlimited:"])
        .output();
}
