//! core4ctl: the command-line client of core4d. It speaks only core4d's public HTTP and
//! WebSocket API. `main.rs` calls [`main`]; everything else is here so tests can reach it.

pub mod args;
pub mod client;
pub mod commands;
pub mod context;
pub mod error;
pub mod exit_codes;
pub mod output;
pub mod sanitize;
mod serde_util;

use clap::{CommandFactory, Parser};

use crate::{
    args::{Cli, Command},
    context::Context,
    error::{CliError, Result},
    exit_codes::ExitCode,
};

/// Parse once, resolve once, run, and turn the outcome into an exit code.
pub fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli =
        Cli::try_parse_from(&argv).unwrap_or_else(|err| args::point_to_event(err, &argv).exit());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::GeneralError.into();
        }
    };
    let outcome = runtime.block_on(run(cli));
    // A blocked stdin read (chat, send -) must not hold up the exit.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::Success.into(),
        Err(err) => report(&err).into(),
    }
}

fn report(err: &CliError) -> ExitCode {
    if !matches!(err, CliError::BrokenPipe) {
        eprintln!("error: {err}");
    }
    err.exit_code()
}

pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::from(shell),
            &mut Cli::command(),
            "core4ctl",
            &mut script,
        );
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(&mut out, &script)?;
        std::io::Write::flush(&mut out)?;
        return Ok(());
    }
    let ctx = Context::resolve(&cli.global)?;
    match &cli.command {
        Command::Auth(command) => commands::login::run(command, &ctx).await,
        Command::Roles(command) => commands::roles::run(command, &ctx).await,
        Command::Event(command) => commands::event::run(command, &ctx).await,
        Command::Chat(args) => commands::event::chat(args, &ctx).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}
