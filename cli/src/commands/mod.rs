//! One module per command group; each has a clap `Subcommand` enum and a `run(&Context)`.
//! The prompts they share live in `prompt`.

pub mod event;
pub mod login;
pub mod prompt;
pub mod roles;
