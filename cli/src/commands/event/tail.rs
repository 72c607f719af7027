//! `event tail`: follow channels, resuming after the last message printed.

use clap::Args;

use super::{
    engine::{Printer, current_position, history_after, history_merged, reconnecting},
    input::channel_name,
};
use crate::{
    client::{Event, parse_seq},
    context::Context,
    error::{CliError, Result},
    output::sanitize,
};

pub(super) const EXAMPLES: &str = "\
Examples:
  core4ctl event tail message
  core4ctl event tail message system --last 10
  core4ctl event tail message --since 4711 -o json

Lines look like `12:00:01 alice > hello` (with [channel] when following several). If the
connection drops or core4d restarts, tail reconnects and resumes after the last message it
printed: nothing is lost or printed twice. Ctrl-C exits 0.";

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Channels to follow
    #[arg(required = true, value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Start after this message id (replays everything stored since)
    #[arg(long, value_name = "ID", conflicts_with = "last")]
    pub since: Option<String>,
    /// Print the last N stored messages first
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
}

pub(super) async fn run(args: &TailArgs, ctx: &Context) -> Result<()> {
    let channels = args
        .channels
        .iter()
        .map(|c| channel_name(c))
        .collect::<Result<Vec<_>>>()?;
    let client = ctx.client()?;
    let mut printer = Printer {
        last: None,
        json: ctx.json(),
        show_channel: channels.len() > 1,
        skip_author: None,
    };

    if let Some(since) = &args.since {
        let seq = parse_seq(since).ok_or_else(|| {
            CliError::Usage(format!(
                "--since: [{}] is not a message id",
                sanitize(since)
            ))
        })?;
        // An id beyond the newest stored one starts at the newest: what comes next is printed
        // (the printer skips ids up to where it starts). Unreadable channels are the socket's
        // to refuse.
        let mut newest: Option<u64> = None;
        for channel in &channels {
            if let Ok(latest) = history_after(&client, channel, None, Some(1), None).await {
                newest = Some(
                    latest
                        .iter()
                        .filter_map(Event::seq)
                        .fold(newest.unwrap_or(0), u64::max),
                );
            }
        }
        printer.last = Some(newest.map_or(seq, |n| seq.min(n)));
    } else if let Some(n) = args.last {
        let limit = Some(n.max(1));
        let recent = history_merged(&channels, None, |channel, after, below| {
            history_after(&client, channel, after, limit, below)
        })
        .await?;
        let skip = recent.len().saturating_sub(n);
        for event in recent.values().skip(skip) {
            printer.emit(event)?;
        }
        // Start after the newest stored message even when fewer than all were printed.
        printer.last = Some(recent.keys().next_back().copied().unwrap_or(0));
    } else {
        printer.last = Some(current_position(&client, &channels).await?);
    }

    reconnecting(&client, &channels, &channels, &mut printer, None).await
}
