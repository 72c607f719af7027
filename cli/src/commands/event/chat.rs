//! `event chat` (and its old spelling `chat`): send typed lines, print others' messages.

use clap::Args;

use super::{
    engine::{Outbox, Printer, current_position, reconnecting},
    input::{channel_name, stdin_lines, with_ctrl_c},
};
use crate::{
    commands::login::Profile, commands::prompt::interactive, context::Context, error::Result,
    output::sanitize,
};

pub const CHAT_EXAMPLES: &str = "\
Examples:
  core4ctl event chat           # the `message` channel
  core4ctl event chat ops
  core4ctl chat ops             # the same: `chat` is an alias of `event chat`

Lines you type are sent; messages from others are printed as `time author > text`.
Ctrl-D or Ctrl-C leaves.";

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Channel to chat on
    #[arg(default_value = "message")]
    pub channel: String,
}

pub async fn chat(args: &ChatArgs, ctx: &Context) -> Result<()> {
    with_ctrl_c(chat_inner(args, ctx)).await
}

async fn chat_inner(args: &ChatArgs, ctx: &Context) -> Result<()> {
    let channel = channel_name(&args.channel)?;
    let client = ctx.client()?;
    let me: Profile = client.get("/profile", &[]).await?;
    let mut channels = vec![channel.clone()];
    let mut last = current_position(&client, &channels).await?;
    if !channel.eq_ignore_ascii_case("system") {
        // Like chat.py, system notices too, if this account may read them.
        if let Ok(system) = current_position(&client, &["system".to_owned()]).await {
            channels.push("system".to_owned());
            last = last.max(system);
        }
    }
    let mut printer = Printer {
        last: Some(last),
        json: ctx.json(),
        show_channel: false,
        skip_author: Some(me.name.clone()),
    };
    if interactive() {
        eprintln!(
            "Chatting on {} at {} as {}. Type a line and press Enter; Ctrl-D leaves.",
            sanitize(&channel),
            client.server(),
            sanitize(&me.name)
        );
    }
    let mut outbox = Outbox::new(&channel, stdin_lines());
    if !core4_proto::perms::channel_allowed(&me.perm_total, &channel, true) {
        // Said once, up front, rather than as a refusal of every line typed.
        eprintln!(
            "warning: your account may not send to {} (ask an administrator for event://{}/w): \
             showing messages only; lines you type are not sent",
            sanitize(&channel),
            sanitize(&channel)
        );
        outbox.read_only = true;
    }
    let wanted = [channel.clone()];
    reconnecting(&client, &channels, &wanted, &mut printer, Some(&mut outbox)).await
}
