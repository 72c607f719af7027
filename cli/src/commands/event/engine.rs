//! The reconnecting engine of `tail` and `chat`: one connection at a time (`follow`), across
//! reconnects with backoff (`reconnecting`); events printed once each in id order (`Printer`),
//! gaps and resumes filled from history, the token renewed before it expires, and chat lines
//! sent in order, each stored once (`Outbox`). `send` shares its keys and backoff.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use serde_json::Value;
use tokio::sync::mpsc;

use core4_proto::ErrorKind;

use crate::{
    client::{ApiClient, Event, EventSocket, Frame, parse_seq},
    commands::login::Profile,
    error::{CliError, Result},
    output::{self, clock_cell, display_value, json_line, print_line, sanitize},
};

/// Idempotency keys for the messages of this run: unique per process and message, so a
/// message sent again after a reconnect is stored once.
pub(super) struct Keys {
    prefix: String,
    next: u64,
}

impl Keys {
    pub(super) fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            prefix: format!("core4ctl-{:x}-{nanos:x}", std::process::id()),
            next: 0,
        }
    }

    pub(super) fn next(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

/// Prints events once each, in id order as they come; remembers the last id printed.
pub(super) struct Printer {
    pub(super) last: Option<u64>,
    pub(super) json: bool,
    pub(super) show_channel: bool,
    /// Messages by this author are not printed (chat already shows what you typed).
    pub(super) skip_author: Option<String>,
}

impl Printer {
    pub(super) fn emit(&mut self, event: &Event) -> Result<()> {
        let seq = event.seq();
        if let Some(seq) = seq
            && self.last.is_some_and(|last| seq <= last)
        {
            return Ok(());
        }
        let skip = matches!((&self.skip_author, &event.author),
            (Some(skip), Some(author)) if skip.eq_ignore_ascii_case(author));
        if !skip {
            print_line(&self.format(event))?;
        }
        // Only once printed: a failed print is not counted as shown.
        if seq.is_some() {
            self.last = seq;
        }
        Ok(())
    }

    pub(super) fn format(&self, event: &Event) -> String {
        if self.json {
            return json_line(event);
        }
        let author = event.author.as_deref().map(sanitize).unwrap_or_default();
        let text = display_value(&event.data);
        if self.show_channel {
            format!(
                "{} [{}] {author} > {text}",
                clock_cell(event.created.as_deref()),
                sanitize(&event.channel)
            )
        } else {
            format!("{} {author} > {text}", clock_cell(event.created.as_deref()))
        }
    }

    pub(super) fn since(&self) -> String {
        self.last.unwrap_or(0).to_string()
    }
}

/// Stored messages of one channel after `after` and before `below` (all, or the newest
/// `limit`), oldest first.
/// Pages backwards with `before` so that messages arriving meanwhile cannot shift the pages.
pub(super) async fn history_after(
    client: &ApiClient,
    channel: &str,
    after: Option<u64>,
    limit: Option<usize>,
    below: Option<u64>,
) -> Result<Vec<Event>> {
    let per_page = limit.unwrap_or(500).clamp(1, 500);
    let mut found: BTreeMap<u64, Event> = BTreeMap::new();
    let mut before: Option<u64> = below;
    loop {
        let mut query = vec![
            ("channel", channel.to_owned()),
            ("page", "0".to_owned()),
            ("per_page", per_page.to_string()),
        ];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        let page = client.get_page::<Event>("/event/history", &query).await?;
        let got = page.data.len();
        let mut oldest = before;
        for event in page.data {
            if let Some(seq) = event.seq() {
                if after.is_some_and(|a| seq <= a) {
                    continue;
                }
                oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
                found.insert(seq, event);
            }
        }
        let enough = limit.is_some_and(|l| found.len() >= l);
        if got < per_page || enough || oldest == before {
            break;
        }
        before = oldest;
    }
    let mut events: Vec<Event> = found.into_values().collect();
    if let Some(limit) = limit {
        events.drain(..events.len().saturating_sub(limit));
    }
    Ok(events)
}

/// The id of the newest stored message on any of the channels (0 when there is none).
pub(super) async fn current_position(client: &ApiClient, channels: &[String]) -> Result<u64> {
    let mut newest = 0;
    for channel in channels {
        let latest = history_after(client, channel, None, Some(1), None).await?;
        newest = latest.iter().filter_map(Event::seq).fold(newest, u64::max);
    }
    Ok(newest)
}

/// Stored messages of several channels after `after` (all, or as many as `fetch` returns
/// of each), by id. Channels are fetched one after another, so a message committed on one after its
/// fetch may have a smaller id than one fetched later from another; callers then treat the
/// highest id as "printed up to here" and would never print it. So each channel is fetched
/// again, after its own newest and up to that highest id: ids commit in increasing order
/// deployment-wide, so afterwards everything up to the highest id is here.
/// `fetch(channel, after, below)` reads one channel's history.
pub(super) async fn history_merged<'a, F, Fut>(
    channels: &'a [String],
    after: Option<u64>,
    mut fetch: F,
) -> Result<BTreeMap<u64, Event>>
where
    F: FnMut(&'a str, Option<u64>, Option<u64>) -> Fut,
    Fut: Future<Output = Result<Vec<Event>>>,
{
    let mut merged = BTreeMap::new();
    let mut newest = Vec::with_capacity(channels.len());
    for channel in channels {
        let events = fetch(channel, after, None).await?;
        newest.push(events.iter().filter_map(Event::seq).max());
        merge_events(&mut merged, events);
    }
    let Some(cap) = merged.keys().next_back().copied() else {
        return Ok(merged);
    };
    if channels.len() > 1 {
        for (channel, own) in channels.iter().zip(newest) {
            let from = own.or(after);
            if from.is_some_and(|f| f >= cap) {
                continue;
            }
            merge_events(&mut merged, fetch(channel, from, Some(cap + 1)).await?);
        }
    }
    Ok(merged)
}

pub(super) fn merge_events(merged: &mut BTreeMap<u64, Event>, events: Vec<Event>) {
    for event in events {
        if let Some(seq) = event.seq() {
            merged.insert(seq, event);
        }
    }
}

/// Fills a gap the server reported, from history, in id order.
pub(super) async fn fill_gap(
    client: &ApiClient,
    channels: &[String],
    printer: &mut Printer,
    after: &str,
) -> Result<()> {
    let from = printer.last.or_else(|| parse_seq(after));
    let missed = history_merged(channels, from, |channel, after, below| {
        history_after(client, channel, after, None, below)
    })
    .await?;
    let mut filled = 0;
    for event in missed.values() {
        let before = printer.last;
        printer.emit(event)?;
        filled += usize::from(printer.last != before);
    }
    if filled > 0 {
        eprintln!(
            "core4ctl: fell behind the live stream; {filled} missed message(s) came from history"
        );
    }
    Ok(())
}

/// Reconnect delays: 250 ms doubling to 8 s, back to the start after a good connection.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) const FIRST: Duration = Duration::from_millis(250);
    pub(super) const MAX: Duration = Duration::from_secs(8);

    pub(super) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub(super) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The delay before the next attempt; the one after it is twice as long, up to `MAX`.
    pub(super) fn advance(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub(super) async fn wait(&mut self, server: &str, why: &CliError) {
        let delay = self.advance();
        eprintln!(
            "core4ctl: lost the connection to {server} ({why}); reconnecting in {:.1}s",
            delay.as_secs_f32()
        );
        tokio::time::sleep(delay).await;
    }
}

/// Errors a reconnect can cure (the server restarting, the network); the rest end the command.
pub(super) fn retryable(err: &CliError) -> bool {
    matches!(
        err,
        CliError::Unreachable { .. } | CliError::Other(_) | CliError::Busy(_)
    )
}

pub(super) enum SessionEnd {
    /// The server closed the socket; reconnect.
    Closed,
    /// Input ended (chat); the command is done.
    Done,
}

/// Follows `channels` across reconnects until input ends (chat), Ctrl-C, or an error no
/// reconnect can cure.
pub(super) async fn reconnecting(
    client: &ApiClient,
    channels: &[String],
    wanted: &[String],
    printer: &mut Printer,
    mut outbox: Option<&mut Outbox<'_>>,
) -> Result<()> {
    let mut keeper = TokenKeeper::start(client).await?;
    let mut backoff = Backoff::new();
    loop {
        let session = follow(
            client,
            channels,
            wanted,
            printer,
            &mut backoff,
            &mut keeper,
            outbox.as_deref_mut(),
        );
        match session.await {
            Ok(SessionEnd::Done) => return Ok(()),
            Ok(SessionEnd::Closed) => {
                let closed = CliError::Other("closed by the server".into());
                backoff.wait(client.server(), &closed).await;
            }
            Err(e) if retryable(&e) => backoff.wait(client.server(), &e).await,
            Err(e) => return Err(e),
        }
    }
}

/// Outgoing chat lines, in input order, each with its idempotency key. One is in flight at a
/// time, so a line the rate limit refused goes out again before the next and lines are stored
/// in order; after a reconnect the line in flight is sent again with its key (stored once).
pub(super) struct Outbox<'a> {
    channel: &'a str,
    lines: mpsc::Receiver<std::io::Result<String>>,
    eof: bool,
    keys: Keys,
    /// (key, line) not yet acknowledged; the first is on its way when `in_flight`.
    queue: VecDeque<(String, String)>,
    in_flight: bool,
    /// The account may not send here (it was told at the start): typed lines are dropped.
    pub(super) read_only: bool,
    /// After a refusal worth retrying (rate limit, database away): when to send again.
    retry_at: Option<tokio::time::Instant>,
    pause: Duration,
}

impl Outbox<'_> {
    pub(super) fn new<'a>(
        channel: &'a str,
        lines: mpsc::Receiver<std::io::Result<String>>,
    ) -> Outbox<'a> {
        Outbox {
            channel,
            lines,
            eof: false,
            keys: Keys::new(),
            queue: VecDeque::new(),
            in_flight: false,
            read_only: false,
            retry_at: None,
            pause: Duration::from_millis(50),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.eof && self.queue.is_empty()
    }

    /// Sends the first queued line unless one is in flight or a retry is not due yet.
    pub(super) async fn send_next(&mut self, socket: &mut EventSocket<'_>) -> Result<()> {
        if self.in_flight || self.retry_at.is_some() {
            return Ok(());
        }
        if let Some((key, line)) = self.queue.front() {
            socket
                .send_message(self.channel, &Value::String(line.clone()), key)
                .await?;
            self.in_flight = true;
        }
        Ok(())
    }

    /// The line in flight was stored.
    pub(super) fn acked(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            self.queue.pop_front();
            self.pause = Duration::from_millis(50);
        }
    }

    /// The line in flight was refused for now: it goes out again after a pause.
    pub(super) fn retry_later(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            self.retry_at = Some(tokio::time::Instant::now() + self.pause);
            self.pause = (self.pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The line in flight was refused for good.
    pub(super) fn refused(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            self.queue.pop_front();
        }
    }
}

/// Keeps a long-lived socket's token fresh. core4d closes a socket when its token expires, so
/// before that the token is renewed (any request may return a refreshed one in its `token`
/// header; `/profile` is the cheapest) and handed to the socket in a token frame.
pub(super) struct TokenKeeper {
    next_check: tokio::time::Instant,
}

impl TokenKeeper {
    pub(super) async fn start(client: &ApiClient) -> Result<Self> {
        let mut keeper = Self {
            next_check: tokio::time::Instant::now(),
        };
        keeper.check(client).await?;
        Ok(keeper)
    }

    /// Asks the server (which refreshes the token when it is due) and plans the next check at a
    /// third of the remaining lifetime, between 1 s and 10 min.
    pub(super) async fn check(&mut self, client: &ApiClient) -> Result<()> {
        const MAX: Duration = Duration::from_secs(600);
        let wait = match client.get::<Profile>("/profile", &[]).await {
            Ok(profile) => profile
                .token_expires
                .as_deref()
                .and_then(output::parse_timestamp)
                .map(|exp| (exp - time::OffsetDateTime::now_utc()) / 3)
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(MAX)
                .clamp(Duration::from_secs(1), MAX),
            // Without access to /profile there is no refresh; the socket lives as long as it can.
            Err(CliError::Auth(message)) if message.starts_with("forbidden") => MAX,
            Err(e) => return Err(e),
        };
        self.next_check = tokio::time::Instant::now() + wait;
        Ok(())
    }
}

/// One connection: subscribe from the last printed id, then print (and, for chat, send) until
/// the socket closes or input ends. `wanted` are the channels whose refusal matters.
pub(super) async fn follow(
    client: &ApiClient,
    channels: &[String],
    wanted: &[String],
    printer: &mut Printer,
    backoff: &mut Backoff,
    keeper: &mut TokenKeeper,
    mut outbox: Option<&mut Outbox<'_>>,
) -> Result<SessionEnd> {
    let mut socket = client.connect_events().await?;
    let mut socket_token = client.token();
    // The channels the server let this socket follow: only those are filled from history.
    let mut readable: Vec<String> = channels.to_vec();
    socket.interest(channels, Some(&printer.since())).await?;
    if let Some(out) = outbox.as_deref_mut() {
        // The line in flight when the last connection ended goes out again with its key.
        out.in_flight = false;
        if out.done() {
            socket.close().await;
            return Ok(SessionEnd::Done);
        }
        out.send_next(&mut socket).await?;
    }
    loop {
        let reading = outbox.as_deref().is_some_and(|o| !o.eof);
        let retry_at = outbox.as_deref().and_then(|o| o.retry_at);
        tokio::select! {
            line = async { outbox.as_deref_mut().expect("reading implies an outbox").lines.recv().await }, if reading => {
                let out = outbox.as_deref_mut().expect("reading implies an outbox");
                match line {
                    None => {
                        out.eof = true;
                        if out.done() {
                            socket.close().await;
                            return Ok(SessionEnd::Done);
                        }
                    }
                    Some(line) => {
                        let line = line?;
                        let line = line.trim_end_matches('\r');
                        if !line.trim().is_empty() && !out.read_only {
                            let key = out.keys.next();
                            out.queue.push_back((key, line.to_owned()));
                            out.send_next(&mut socket).await?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                let out = outbox.as_deref_mut().expect("a retry implies an outbox");
                out.retry_at = None;
                out.send_next(&mut socket).await?;
            }
            _ = tokio::time::sleep_until(keeper.next_check) => {
                keeper.check(client).await?;
                let current = client.token();
                if current != socket_token
                    && let Some(token) = &current
                {
                    socket.send_token(token).await?;
                    socket_token = current;
                }
            }
            frame = socket.next_frame() => match frame? {
                None => return Ok(SessionEnd::Closed),
                Some(Frame::Event(event)) => printer.emit(&event)?,
                Some(Frame::Interest { granted, denied }) => {
                    backoff.reset();
                    readable = channels
                        .iter()
                        .filter(|c| granted.iter().any(|g| g.eq_ignore_ascii_case(c)))
                        .cloned()
                        .collect();
                    let refused: Vec<&(String, String)> = denied
                        .iter()
                        .filter(|(ch, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(ch)))
                        .collect();
                    let granted_wanted = wanted.iter().any(|w| granted.iter().any(|g| g.eq_ignore_ascii_case(w)));
                    if !refused.is_empty() && !granted_wanted {
                        let (ch, why) = refused[0];
                        return Err(CliError::Auth(format!(
                            "cannot read channel {ch}: {why} — ask an administrator for event://{ch}/r"
                        )));
                    }
                    for (ch, why) in refused {
                        eprintln!("core4ctl: not following channel {ch}: {why}");
                    }
                }
                Some(Frame::Gap(after)) => fill_gap(client, &readable, printer, &after).await?,
                Some(Frame::Truncated { channel, first }) => {
                    eprintln!(
                        "core4ctl: messages on {channel} before {first} are no longer stored (retention)"
                    );
                }
                Some(Frame::Ack(_)) => {
                    if let Some(out) = outbox.as_deref_mut() {
                        out.acked();
                        if out.done() {
                            socket.close().await;
                            return Ok(SessionEnd::Done);
                        }
                        out.send_next(&mut socket).await?;
                    }
                }
                Some(Frame::Error { kind: Some(ErrorKind::ReplayStopped), .. }) => {
                    // The server could not finish replaying: the rest comes from history.
                    let after = printer.since();
                    fill_gap(client, &readable, printer, &after).await?;
                }
                Some(Frame::Error {
                    kind: Some(ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::InDoubt),
                    ..
                }) => {
                    // Not stored (or perhaps not): the same line, with its key, after a pause.
                    if let Some(out) = outbox.as_deref_mut() {
                        out.retry_later();
                    }
                }
                Some(Frame::Error { kind, message }) => {
                    // A refused chat line or token is worth a word, not the end of the session.
                    eprintln!("core4ctl: core4d: {message}");
                    if let Some(out) = outbox.as_deref_mut()
                        && kind != Some(ErrorKind::Unauthorized)
                    {
                        out.refused();
                        out.send_next(&mut socket).await?;
                    }
                }
                Some(Frame::Other(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, author: &str, text: &str) -> Event {
        Event {
            id: Some(id.into()),
            created: Some("2026-11-27T12:00:01.5".into()),
            name: Some("message".into()),
            author: Some(author.into()),
            channel: "message".into(),
            data: Value::String(text.into()),
        }
    }

    #[test]
    fn lines_read_time_author_text() {
        let printer = Printer {
            last: None,
            json: false,
            show_channel: false,
            skip_author: None,
        };
        assert_eq!(
            printer.format(&event("1", "alice", "hi")),
            "12:00:01 alice > hi"
        );
        let printer = Printer {
            show_channel: true,
            ..printer
        };
        assert_eq!(
            printer.format(&event("1", "alice", "hi")),
            "12:00:01 [message] alice > hi"
        );
    }

    #[test]
    fn hostile_text_cannot_fake_a_second_line_or_escape() {
        let printer = Printer {
            last: None,
            json: false,
            show_channel: false,
            skip_author: None,
        };
        let line = printer.format(&event("1", "eve\x1b[2J", "x\n12:00:02 admin > trust me"));
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
    }

    #[test]
    fn json_lines_keep_the_event_field_names() {
        let printer = Printer {
            last: None,
            json: true,
            show_channel: false,
            skip_author: None,
        };
        let value: Value = serde_json::from_str(&printer.format(&event("7", "a", "b"))).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["_id", "author", "channel", "created", "data", "name"]
        );
    }

    #[test]
    fn nothing_at_or_before_the_last_id_is_printed_again() {
        let mut printer = Printer {
            last: Some(5),
            json: false,
            show_channel: false,
            skip_author: None,
        };
        // emit prints to stdout; only the bookkeeping is checked here.
        printer.emit(&event("4", "a", "old")).unwrap();
        assert_eq!(printer.last, Some(5));
        printer.emit(&event("9", "a", "new")).unwrap();
        printer.emit(&event("6", "a", "late")).unwrap();
        assert_eq!(printer.last, Some(9));
        assert_eq!(printer.since(), "9");
    }

    /// A history where, between the fetches of `message` and `system`, id 3 is committed on
    /// `message` and id 4 on `system`: 3 is missed by the first round of fetches.
    #[tokio::test]
    async fn merged_history_is_complete_up_to_its_newest_id() {
        use std::cell::RefCell;
        let store = RefCell::new(vec![event("1", "a", "one")]);
        let calls = RefCell::new(0);
        let channels = ["message".to_owned(), "system".to_owned()];
        let merged = history_merged(&channels, None, |channel, after, below| {
            let mut n = calls.borrow_mut();
            *n += 1;
            if *n == 2 {
                store.borrow_mut().push(event("3", "a", "late"));
                let mut sys = event("4", "a", "notice");
                sys.channel = "system".into();
                store.borrow_mut().push(sys);
            }
            let found: Vec<Event> = store
                .borrow()
                .iter()
                .filter(|e| e.channel == channel)
                .filter(|e| after.is_none_or(|a| e.seq().unwrap() > a))
                .filter(|e| below.is_none_or(|b| e.seq().unwrap() < b))
                .cloned()
                .collect();
            async move { Ok(found) }
        })
        .await
        .unwrap();
        assert_eq!(merged.keys().copied().collect::<Vec<_>>(), [1, 3, 4]);
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.advance().as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        b.reset();
        assert_eq!(b.advance(), Duration::from_millis(250));
        assert_eq!(b.advance(), Duration::from_millis(500));
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(retryable(&CliError::Unreachable {
            server: "s".into(),
            detail: "d".into()
        }));
        assert!(retryable(&CliError::Busy(
            "too many open event connections".into()
        )));
        assert!(!retryable(&CliError::Auth("token expired".into())));
        assert!(!retryable(&CliError::Usage("bad".into())));
        let disk_full: CliError = std::io::Error::from(std::io::ErrorKind::StorageFull).into();
        assert!(!retryable(&disk_full));
        assert_eq!(disk_full.exit_code().code(), 1);
    }
}
