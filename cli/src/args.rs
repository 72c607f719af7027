//! The command line, parsed once by clap. Every command's `--help` ends with examples.

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::{event::EventCommand, login::AuthCommand, roles::RolesCommand};
pub use crate::context::GlobalArgs;

const EXAMPLES: &str = "\
Examples:
  core4ctl login --username admin
  core4ctl roles list
  core4ctl roles create alice --email alice@example.com --password-prompt --role standard_user
  core4ctl event tail message system
  core4ctl event chat ops
  echo hello | core4ctl event send message -
  core4ctl -o json roles get alice | jq .perm_total
  core4ctl --server https://core4.example.com --cacert ca.pem login --username admin

Exit codes: 0 success, 1 error, 2 usage, 3 authentication, 4 not found, 5 conflict.";

/// Drive core4d from a terminal and from scripts.
#[derive(Debug, Parser)]
#[command(name = "core4ctl", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Auth(AuthCommand),
    /// Manage users and roles
    #[command(subcommand, after_help = crate::commands::roles::EXAMPLES)]
    Roles(Box<RolesCommand>),
    /// Send, follow and read channel messages
    #[command(subcommand, after_help = crate::commands::event::EXAMPLES)]
    Event(EventCommand),
    /// The old spelling of `event chat`, kept as an alias
    #[command(hide = true, after_help = crate::commands::event::CHAT_EXAMPLES)]
    Chat(crate::commands::event::ChatArgs),
    /// Print a shell completion script
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// Install lines that work on a fresh account too: each creates its directory first.
pub const COMPLETION_EXAMPLES: &str = "\
Examples:
  mkdir -p ~/.local/share/bash-completion/completions
  core4ctl completions bash > ~/.local/share/bash-completion/completions/core4ctl
  mkdir -p ~/.zfunc    # and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath)
  core4ctl completions zsh > ~/.zfunc/_core4ctl
  mkdir -p ~/.config/fish/completions
  core4ctl completions fish > ~/.config/fish/completions/core4ctl.fish";

/// `core4ctl tail message` names a channel command without `event`: clap finds no similar
/// top-level name, so the tip names `event tail`.
pub fn point_to_event(mut err: clap::Error, argv: &[impl AsRef<std::ffi::OsStr>]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::InvalidSubcommand
        || err.get(ContextKind::SuggestedSubcommand).is_some()
    {
        return err;
    }
    let Some(ContextValue::String(word)) = err.get(ContextKind::InvalidSubcommand) else {
        return err;
    };
    // Only a word in the command's place: not `roles tail`.
    let cli = Cli::command();
    let top_level = argv
        .iter()
        .skip(1)
        .filter_map(|a| a.as_ref().to_str())
        .find(|a| a == word || cli.find_subcommand(a).is_some())
        == Some(word.as_str());
    let event = cli.find_subcommand("event");
    if top_level && event.is_some_and(|e| e.find_subcommand(word).is_some()) {
        let tip = ContextValue::String(format!("event {word}"));
        err.insert(ContextKind::SuggestedSubcommand, tip);
    }
    err
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_name() != "help" {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Examples:"), "`{path}` has no examples");
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path);
            }
        }
        walk(&Cli::command(), "");
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["core4ctl", "roles", "list", "-o", "json", "--server", "h:1"])
                .unwrap();
        assert_eq!(cli.global.output, crate::output::OutputMode::Json);
        assert_eq!(cli.global.server.as_deref(), Some("h:1"));
    }

    #[test]
    fn global_options_are_listed_apart_from_the_commands_own() {
        let mut cli = Cli::command();
        cli.build(); // propagates the global options to the subcommands
        let list = cli
            .find_subcommand_mut("roles")
            .and_then(|r| r.find_subcommand_mut("list"))
            .unwrap();
        let help = list.render_long_help().to_string();
        let heading = help.find("Global options:").expect("a heading");
        let at = |option: &str| help.find(option).unwrap();
        assert!(
            at("--page") < at("--per-page") && at("--all") < heading,
            "{help}"
        );
        for global in ["--server", "--cacert", "--output"] {
            assert!(at(global) > heading, "{global}: {help}");
        }
    }

    #[test]
    fn a_channel_command_without_event_is_pointed_there() {
        let argv: Vec<String> = ["core4ctl", "tail", "message"].map(String::from).into();
        let err = point_to_event(Cli::try_parse_from(&argv).unwrap_err(), &argv);
        assert!(err.to_string().contains("'event tail'"), "{err}");
        let argv: Vec<String> = ["core4ctl", "-o", "json", "history", "x"]
            .map(String::from)
            .into();
        let err = point_to_event(Cli::try_parse_from(&argv).unwrap_err(), &argv);
        assert!(err.to_string().contains("'event history'"), "{err}");
        let argv: Vec<String> = ["core4ctl", "roles", "tail"].map(String::from).into();
        let err = point_to_event(Cli::try_parse_from(&argv).unwrap_err(), &argv);
        assert!(!err.to_string().contains("event tail"), "{err}");
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let err = Cli::try_parse_from(["core4ctl", "roles", "frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["core4ctl", "-o", "yaml", "whoami"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
