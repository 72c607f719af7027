//! `core4ctl event ...`: channel messages over the event WebSocket, with history
//! (`/event/history`) to start from, resume after and fill gaps. One module per subcommand; the
//! reconnecting engine they share (printing, resuming, gap filling, token renewal) is `engine`,
//! reading input is `input`.

mod chat;
mod engine;
mod history;
mod input;
mod send;
mod stats;
mod tail;

use clap::Subcommand;

pub use chat::{CHAT_EXAMPLES, ChatArgs, chat};
use history::HistoryArgs;
use send::SendArgs;
use tail::TailArgs;

use crate::{context::Context, error::Result};

pub const EXAMPLES: &str = "\
Examples:
  core4ctl event send message 'deploy finished'
  tail -f app.log | core4ctl event send ops -
  core4ctl event tail message system
  core4ctl event tail message --last 20 -o json | jq -r .data
  core4ctl event history message --per-page 50
  core4ctl event chat ops";

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Send a message to a channel and print its id
    #[command(after_help = send::EXAMPLES)]
    Send(SendArgs),
    /// Print messages on channels as they arrive, resuming across reconnects
    #[command(after_help = tail::EXAMPLES)]
    Tail(TailArgs),
    /// Show stored messages of a channel, newest first
    #[command(after_help = history::EXAMPLES)]
    History(HistoryArgs),
    /// Show what each readable channel stores: messages, oldest and newest id, size, and what
    /// retention deleted
    #[command(after_help = stats::EXAMPLES)]
    Stats,
    /// Chat on a channel: lines you type are sent, others' messages are printed as they arrive
    #[command(after_help = CHAT_EXAMPLES)]
    Chat(ChatArgs),
}

pub async fn run(command: &EventCommand, ctx: &Context) -> Result<()> {
    match command {
        EventCommand::Send(args) => send::run(args, ctx).await,
        EventCommand::Tail(args) => input::with_ctrl_c(tail::run(args, ctx)).await,
        EventCommand::History(args) => history::run(args, ctx).await,
        EventCommand::Stats => stats::run(ctx).await,
        EventCommand::Chat(args) => chat(args, ctx).await,
    }
}
