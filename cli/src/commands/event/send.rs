//! `event send`: one message, or one per line of stdin, each stored exactly once.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use core4_proto::ErrorKind;

use super::{
    engine::{Backoff, Keys, retryable},
    input::{channel_name, stdin_lines},
};
use crate::{
    client::{ApiClient, EventSocket, Frame},
    context::Context,
    error::{CliError, Result},
    output::{json_line, print_line, sanitize},
};

pub(super) const EXAMPLES: &str = "\
Examples:
  core4ctl event send message 'hello, world'        # prints the message id
  core4ctl event send jobs '{\"done\": 3}' --json
  printf 'one\\ntwo\\n' | core4ctl event send message -   # one message per line, one id per line";

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Channel name, e.g. message
    pub channel: String,
    /// The text, or - to send each line of stdin as its own message
    pub text: String,
    /// Send TEXT (or each line) as JSON instead of as a string
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(args: &SendArgs, ctx: &Context) -> Result<()> {
    let channel = channel_name(&args.channel)?;
    if args.text.is_empty() {
        return Err(CliError::Usage("the message text must not be empty".into()));
    }
    let single = (args.text != "-")
        .then(|| message_text(&args.text, args.json))
        .transpose()?;
    let client = ctx.client()?;
    let mut keys = Keys::new();
    let mut socket = Some(client.connect_events().await?);
    if let Some(text) = single {
        let id = send_reconnecting(&client, &mut socket, &channel, &text, &keys.next()).await?;
        if let Some(socket) = socket {
            socket.close().await;
        }
        return print_ack(ctx, &channel, &id);
    }
    // One at a time, so that a line refused by the rate limit is sent again before the next
    // one and lines are stored in input order. The rate limit, not the round trip, bounds the
    // pace. Every line has its own key: resent after a reconnect, it is stored once.
    // While waiting for the next line the socket is read too, so that pings are answered and
    // a close is noticed (and the next line goes over a new connection).
    let mut lines = stdin_lines();
    loop {
        let line = match socket.as_mut() {
            Some(open) => tokio::select! {
                line = lines.recv() => line,
                frame = open.next_frame() => {
                    match frame {
                        Ok(Some(_)) => {}
                        Ok(None) => socket = None,
                        Err(e) if retryable(&e) => socket = None,
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            },
            None => lines.recv().await,
        };
        let Some(line) = line else { break };
        let line = line?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let text = message_text(line, args.json)?;
        let id = send_reconnecting(&client, &mut socket, &channel, &text, &keys.next()).await?;
        print_ack(ctx, &channel, &id)?;
    }
    if let Some(socket) = socket {
        socket.close().await;
    }
    Ok(())
}

fn message_text(raw: &str, as_json: bool) -> Result<Value> {
    if as_json {
        serde_json::from_str(raw)
            .map_err(|e| CliError::Usage(format!("--json: the text is not JSON ({e})")))
    } else {
        Ok(Value::String(raw.to_owned()))
    }
}

fn print_ack(ctx: &Context, channel: &str, id: &str) -> Result<()> {
    if ctx.json() {
        print_line(&json_line(&json!({"message_id": id, "channel": channel})))
    } else {
        print_line(&sanitize(id))
    }
}

/// Sends one message over `socket`, (re)connecting with backoff when there is none or the
/// connection was lost before the ack (the key makes sending it again safe); returns its id
/// once stored.
async fn send_reconnecting<'c>(
    client: &'c ApiClient,
    socket: &mut Option<EventSocket<'c>>,
    channel: &str,
    text: &Value,
    key: &str,
) -> Result<String> {
    let mut backoff = Backoff::new();
    loop {
        let open = match socket {
            Some(open) => open,
            None => match client.connect_events().await {
                Ok(open) => socket.insert(open),
                Err(e) if retryable(&e) => {
                    backoff.wait(client.server(), &e).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        match send_one(open, channel, text, key).await? {
            Sent::Stored(id) => return Ok(id),
            Sent::NotSent(why) => {
                *socket = None;
                backoff.wait(client.server(), &why).await;
            }
        }
    }
}

enum Sent {
    Stored(String),
    /// Not acknowledged (the socket was gone, or the server could not store it): send it again,
    /// with the same key.
    NotSent(CliError),
}

/// Sends one message and waits until it is stored; waits and retries when rate-limited.
async fn send_one(
    socket: &mut EventSocket<'_>,
    channel: &str,
    text: &Value,
    key: &str,
) -> Result<Sent> {
    let mut pause = Duration::from_millis(50);
    loop {
        if let Err(e) = socket.send_message(channel, text, key).await {
            return if retryable(&e) {
                Ok(Sent::NotSent(e))
            } else {
                Err(e)
            };
        }
        loop {
            match socket.next_frame().await {
                Ok(Some(Frame::Ack(id))) => return Ok(Sent::Stored(id)),
                Ok(Some(Frame::Error {
                    kind: Some(ErrorKind::RateLimited),
                    ..
                })) => break,
                Ok(Some(Frame::Error {
                    kind: Some(ErrorKind::Unavailable | ErrorKind::InDoubt),
                    message,
                })) => return Ok(Sent::NotSent(CliError::Other(message))),
                Ok(Some(Frame::Error { kind, message })) => {
                    return Err(send_error(kind, channel, &message));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Ok(Sent::NotSent(CliError::Other(
                        "the connection closed before the message was acknowledged".into(),
                    )));
                }
                Err(e) if retryable(&e) => return Ok(Sent::NotSent(e)),
                Err(e) => return Err(e),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

fn send_error(kind: Option<ErrorKind>, channel: &str, message: &str) -> CliError {
    if kind == Some(ErrorKind::Forbidden) {
        CliError::Auth(format!(
            "{message}: your account may not send to {} — ask an administrator for event://{}/w",
            sanitize(channel),
            sanitize(channel)
        ))
    } else {
        CliError::Usage(format!("core4d rejected the message: {message}"))
    }
}
