//! One subscriber (a WebSocket or an event stream) as the rest of the hub sees it: its principal, its interests, and its
//! bounded outbound queue with the lag rule.
//!
//! The queue holds at most `outbound_queue` event frames (queued or being written). When an event
//! finds it full, the subscriber is marked lagged and every further event is dropped for it, until
//! the sender has written everything queued; then it gets one `gap` frame naming the last id it
//! received, and live delivery resumes. Replies (acks, errors) never count against the limit:
//! each client frame takes one of `max_unacked` reply permits first, so they are bounded too.
//!
//! A subscriber gets every id at most once, also across re-subscriptions, and live events in
//! increasing order. A re-subscription with `since` replays, per channel, what this subscriber was
//! not sent yet: for each channel the outbox remembers the id ranges in which it may have sent
//! that channel's events (from subscribing to unsubscribing), and the replay skips them.
//!
//! Replies go out in the order of the client frames they answer: each frame reserves a slot, and
//! a reply filled early (an error) waits for the slots before it (an ack waiting for its commit).
//! Events are not replies and keep flowing in between.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{limits::UserShare, protocol};
use crate::{domain::PermissionSet, metrics::Metrics};

/// A frame waiting for the subscriber's sender (the task that writes it to the transport).
#[derive(Debug)]
pub enum Out {
    /// An event and its id (counts against the queue limit).
    Event(i64, Utf8Bytes),
    /// The reply to a client frame (returns a reply permit once written).
    Reply(Utf8Bytes),
    /// Unsolicited: gap, interest withdrawn.
    Notice(Utf8Bytes),
    /// The server's keepalive ping.
    Ping,
    /// Write everything before this, then close with this code and reason.
    Close(u16, String),
}

/// Who the subscriber is and what they listen to; changed by interest and token frames and by the
/// permission re-check.
#[derive(Debug, Clone)]
pub struct SubscriberAuth {
    pub token: Arc<str>,
    pub name: String,
    pub perms: Arc<PermissionSet>,
    /// Token expiry, epoch seconds.
    pub exp: i64,
    /// The current interests, normalised, in the order granted.
    pub channels: Vec<String>,
}

/// Bytes of replayed events a subscriber may have queued and not yet taken by its sender; with
/// what the sender is writing, a replay to a client that does not read holds about twice this.
const REPLAY_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Out>,
    /// Event frames queued or being written.
    events: usize,
    /// Id of the last event queued for this subscriber (or the position it subscribed at); events
    /// with ids up to it are skipped.
    last_id: i64,
    /// Id of the last event the sender took from the queue: it is on its way to the client and
    /// cannot be called back, so a replay must start after it.
    handed: i64,
    lagged: bool,
    /// Bytes of replayed events queued and not yet taken by the sender: a replay reads its own
    /// copy of every row, so it is bounded in bytes too, not only by `events`.
    replay_bytes: usize,
    /// A ping is queued and not yet taken.
    ping_queued: bool,
    /// While a replay runs: live events wait here.
    held: Option<VecDeque<(i64, Utf8Bytes)>>,
    closing: bool,
    /// Reply slots from `first_slot` on, in frame order; `None` until filled.
    slots: VecDeque<Option<Utf8Bytes>>,
    first_slot: u64,
    /// Subscribed channels and the id after which their events may have been sent.
    subscribed: HashMap<String, i64>,
    /// Earlier subscriptions of channels: `(after, through]` id ranges whose events may have
    /// been sent.
    were_sent: HashMap<String, Vec<(i64, i64)>>,
}

/// Ranges kept per unsubscribed channel; older ones merge into one (skipping more, never less).
const RANGES_KEPT: usize = 8;

/// What a replay must skip: per channel, id ranges `(after, through]` already sent.
#[derive(Debug, Default)]
pub struct Sent(HashMap<String, Vec<(i64, i64)>>);

impl Sent {
    /// Was the event `id` of `channel` sent to this subscriber before the replay?
    pub fn contains(&self, channel: &str, id: i64) -> bool {
        self.0
            .get(channel)
            .is_some_and(|ranges| ranges.iter().any(|&(a, b)| a < id && id <= b))
    }
}

/// The place of one client frame's reply in the subscriber's reply order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySlot(u64);

/// What happened to an event offered to a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Already had it (resume overlap).
    Skipped,
    /// Dropped: the subscriber is behind and will get a gap frame.
    Dropped,
}

pub struct Subscriber {
    pub id: u64,
    pub user_id: String,
    pub user: Arc<UserShare>,
    cap: usize,
    auth: Mutex<SubscriberAuth>,
    out: Mutex<Outbox>,
    /// Wakes the sender.
    wake: Notify,
    /// The sender finished a round (room for replay frames).
    drained: Notify,
    /// Every reserved reply slot was filled.
    settled: Notify,
    closed: AtomicBool,
    close_notify: Notify,
    /// Replies still to be written; the reader takes one per client frame.
    pub replies: Semaphore,
    /// When the client last sent anything (a frame, a pong), in ms of the hub's clock.
    last_seen: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (plain pushes and counters).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscriber {
    /// A subscriber positioned at `head` (the hub's last published id): a gap before its first
    /// event names that position, never 0. `now_ms` starts its silence clock.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        user_id: String,
        user: Arc<UserShare>,
        auth: SubscriberAuth,
        cap: usize,
        max_unacked: usize,
        head: i64,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            user_id,
            user,
            cap: cap.max(1),
            auth: Mutex::new(auth),
            out: Mutex::new(Outbox {
                last_id: head,
                ..Outbox::default()
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            settled: Notify::new(),
            closed: AtomicBool::new(false),
            close_notify: Notify::new(),
            replies: Semaphore::new(max_unacked.max(1)),
            last_seen: AtomicU64::new(now_ms),
        }
    }

    /// The client sent something (`now_ms` on the hub's clock).
    pub fn seen(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Queues a keepalive ping unless one is still waiting for the sender.
    pub fn push_ping(&self) {
        {
            let mut o = lock(&self.out);
            if o.closing || o.ping_queued {
                return;
            }
            o.ping_queued = true;
            o.frames.push_back(Out::Ping);
        }
        self.wake.notify_one();
    }

    /// A subscription without `since` starts live at `head` (the last id the hub published: every
    /// event up to it was offered before this subscriber joined the index). A subscriber that is behind
    /// keeps its position, so its gap frame still covers what it missed.
    pub fn start_live(&self, head: i64) {
        let mut o = lock(&self.out);
        if !o.lagged && o.held.is_none() {
            o.last_id = o.last_id.max(head);
        }
    }

    pub fn with_auth<R>(&self, f: impl FnOnce(&mut SubscriberAuth) -> R) -> R {
        f(&mut lock(&self.auth))
    }

    /// Offers a live event (events arrive in id order).
    pub fn push_event(&self, id: i64, frame: &Utf8Bytes) -> Pushed {
        let pushed = {
            let mut o = lock(&self.out);
            if o.closing || id <= o.last_id {
                return Pushed::Skipped;
            }
            let cap = self.cap;
            if let Some(held) = &mut o.held {
                if held.len() >= cap {
                    o.lagged = true;
                    return Pushed::Dropped;
                }
                held.push_back((id, frame.clone()));
                return Pushed::Queued;
            }
            if o.lagged {
                Pushed::Dropped
            } else if o.events >= cap {
                o.lagged = true;
                Pushed::Dropped
            } else {
                o.frames.push_back(Out::Event(id, frame.clone()));
                o.events += 1;
                o.last_id = id;
                Pushed::Queued
            }
        };
        if pushed == Pushed::Queued {
            self.wake.notify_one();
        }
        pushed
    }

    /// Reserves the next reply's place (the reader does so for every client frame, in order).
    pub fn reserve_reply(&self) -> ReplySlot {
        let mut o = lock(&self.out);
        let slot = ReplySlot(o.first_slot + o.slots.len() as u64);
        o.slots.push_back(None);
        slot
    }

    /// Fills a reserved slot; the reply is queued once every earlier slot is filled too.
    pub fn fill_reply(&self, slot: ReplySlot, frame: Utf8Bytes) {
        let (queued, settled) = {
            let mut o = lock(&self.out);
            let Some(i) = slot.0.checked_sub(o.first_slot) else {
                return;
            };
            match o.slots.get_mut(i as usize) {
                Some(s @ None) => *s = Some(frame),
                _ => return,
            }
            let mut queued = false;
            while let Some(Some(_)) = o.slots.front() {
                let Some(Some(frame)) = o.slots.pop_front() else {
                    break;
                };
                o.first_slot += 1;
                if !o.closing {
                    o.frames.push_back(Out::Reply(frame));
                    queued = true;
                }
            }
            (queued, o.slots.is_empty())
        };
        if settled {
            self.settled.notify_waiters();
        }
        if queued {
            self.wake.notify_one();
        }
    }

    /// A reply to the frame being read now (after every earlier reply).
    pub fn push_reply(&self, frame: Utf8Bytes) {
        let slot = self.reserve_reply();
        self.fill_reply(slot, frame);
    }

    /// Waits until every reserved reply was filled (or the subscriber is closed).
    pub async fn replies_settled(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if lock(&self.out).slots.is_empty() || self.is_closed() {
                return;
            }
            settled.await;
        }
    }

    pub fn push_notice(&self, frame: Utf8Bytes) {
        self.push(Out::Notice(frame));
    }

    fn push(&self, out: Out) {
        {
            let mut o = lock(&self.out);
            if o.closing {
                return;
            }
            o.frames.push_back(out);
        }
        self.wake.notify_one();
    }

    /// Records interest changes: events of `joined` channels may be sent after the current
    /// position; those of `left` channels may have been sent up to it.
    pub fn track_channels(&self, left: &[String], joined: &[String]) {
        let mut o = lock(&self.out);
        let at = o.last_id;
        for ch in left {
            if let Some(after) = o.subscribed.remove(ch)
                && after < at
            {
                let ranges = o.were_sent.entry(ch.clone()).or_default();
                ranges.push((after, at));
                if ranges.len() > RANGES_KEPT {
                    let (a, _) = ranges.remove(0);
                    let (_, b) = ranges.remove(0);
                    ranges.insert(0, (a, b));
                }
            }
        }
        for ch in joined {
            o.subscribed.entry(ch.clone()).or_insert(at);
        }
    }

    /// Starts a resume from `since` on `channels` (already in the interest set): events queued
    /// but not yet taken by the sender are dropped (the replay brings them again), live events
    /// are held until [`Self::end_hold`]. Returns what the replay must skip: per channel, the
    /// events this subscriber was already sent.
    pub fn begin_hold(&self, since: i64, channels: &[String]) -> Sent {
        let mut o = lock(&self.out);
        let before = o.frames.len();
        o.frames.retain(|f| !matches!(f, Out::Event(..)));
        let removed = before - o.frames.len();
        o.events -= removed;
        o.replay_bytes = 0;
        let handed = o.handed;
        o.last_id = handed;
        o.lagged = false;
        o.held = Some(VecDeque::new());
        let mut sent = Sent::default();
        for ch in channels {
            let mut ranges = o.were_sent.get(ch).cloned().unwrap_or_default();
            let after = o.subscribed.get(ch).copied().unwrap_or(handed);
            if after < handed {
                ranges.push((after, handed));
            }
            if !ranges.is_empty() {
                sent.0.insert(ch.clone(), ranges);
            }
            o.subscribed.insert(ch.clone(), after.min(since));
        }
        sent
    }

    /// Is there room for another replayed event?
    pub fn has_room(&self) -> bool {
        let o = lock(&self.out);
        o.closing || (o.events < self.cap && o.replay_bytes < REPLAY_BYTES)
    }

    /// Waits until the sender made room (or the subscriber is closed).
    pub async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.has_room() || self.is_closed() {
                return;
            }
            drained.await;
        }
    }

    /// Queues a replayed event the subscriber was not sent yet (the caller waited for room and
    /// skipped what [`Sent`] names). Replayed ids rise; they may be below live ids sent earlier
    /// on other channels.
    pub fn push_replayed(&self, id: i64, frame: Utf8Bytes) {
        {
            let mut o = lock(&self.out);
            if o.closing {
                return;
            }
            o.replay_bytes += frame.len();
            o.frames.push_back(Out::Event(id, frame));
            o.events += 1;
            o.last_id = o.last_id.max(id);
        }
        self.wake.notify_one();
    }

    /// Ends a resume: held events newer than the replay follow it. With `failed`, the replay
    /// stopped early and the subscriber gets a gap frame instead of the rest.
    pub fn end_hold(&self, failed: bool) {
        {
            let mut o = lock(&self.out);
            let Some(held) = o.held.take() else { return };
            if failed {
                o.lagged = true;
            } else {
                for (id, frame) in held {
                    if id > o.last_id {
                        o.frames.push_back(Out::Event(id, frame));
                        o.events += 1;
                        o.last_id = id;
                    }
                }
            }
            // An empty queue with a pending gap: the sender must look now.
        }
        self.wake.notify_one();
    }

    /// For the sender: takes every queued frame (swapped into `into`, which must be empty).
    pub fn take(&self, into: &mut VecDeque<Out>) {
        let mut o = lock(&self.out);
        std::mem::swap(&mut o.frames, into);
        // The sender holds them now; the replay may queue the next bytes while they are written.
        o.replay_bytes = 0;
        if let Some(id) = into
            .iter()
            .filter_map(|f| match f {
                Out::Event(id, _) => Some(*id),
                _ => None,
            })
            .max()
        {
            o.handed = o.handed.max(id);
        }
        o.ping_queued = false;
    }

    /// For the sender, after writing `events` event frames: frees their room and, if the subscriber
    /// is lagged and now fully drained, queues its gap frame. Returns true when it queued one.
    pub fn written(&self, events: usize, metrics: &Metrics) -> bool {
        let gap = {
            let mut o = lock(&self.out);
            o.events = o.events.saturating_sub(events);
            if o.lagged && o.events == 0 && o.held.is_none() && !o.closing {
                o.lagged = false;
                let frame = protocol::gap_frame(o.last_id);
                o.frames.push_back(Out::Notice(frame));
                true
            } else {
                false
            }
        };
        if gap {
            metrics
                .gap_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.drained.notify_waiters();
        gap
    }

    /// Waits until there may be frames to take.
    pub async fn wait_for_frames(&self) {
        self.wake.notified().await
    }

    /// Asks the sender to close the transport after what is queued, and the reader to stop.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        {
            let mut o = lock(&self.out);
            if o.closing {
                return;
            }
            o.closing = true;
            o.frames.push_back(Out::Close(code, reason.into()));
            o.held = None;
        }
        self.mark_closed();
        self.wake.notify_one();
    }

    /// Marks the subscriber gone without a close frame (the peer went away).
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.close_notify.notify_waiters();
        self.settled.notify_waiters();
        self.drained.notify_waiters();
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once [`Self::close`] or [`Self::mark_closed`] was called.
    pub async fn closed(&self) {
        loop {
            let n = self.close_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }

    #[cfg(test)]
    fn frames(&self) -> Vec<String> {
        let mut q = VecDeque::new();
        self.take(&mut q);
        q.into_iter()
            .map(|f| match f {
                Out::Event(_, b) | Out::Reply(b) | Out::Notice(b) => b.to_string(),
                Out::Ping => "ping".into(),
                Out::Close(code, reason) => format!("close {code} {reason}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::limits::Users;

    fn sub(cap: usize) -> Subscriber {
        sub_at(cap, 0)
    }

    /// A subscriber admitted when the hub had published up to `head`.
    fn sub_at(cap: usize, head: i64) -> Subscriber {
        let users = Users::default();
        let share = users.admit("u", 10, 10).unwrap();
        Subscriber::new(
            1,
            "u".into(),
            share,
            SubscriberAuth {
                token: "t".into(),
                name: "u".into(),
                perms: Arc::new(PermissionSet::default()),
                exp: 0,
                channels: vec![],
            },
            cap,
            8,
            head,
            0,
        )
    }

    fn ev(id: i64) -> Utf8Bytes {
        Utf8Bytes::from(format!("e{id}"))
    }

    #[test]
    fn a_full_queue_drops_then_sends_one_gap_after_draining() {
        let c = sub(2);
        let m = Metrics::default();
        assert_eq!(c.push_event(1, &ev(1)), Pushed::Queued);
        assert_eq!(c.push_event(2, &ev(2)), Pushed::Queued);
        assert_eq!(c.push_event(3, &ev(3)), Pushed::Dropped);
        assert_eq!(c.frames(), ["e1", "e2"]);
        // Taken but not yet written: still counted, still lagged.
        assert_eq!(c.push_event(4, &ev(4)), Pushed::Dropped);
        assert!(!c.written(1, &m));
        assert_eq!(c.push_event(5, &ev(5)), Pushed::Dropped);
        assert!(c.written(1, &m));
        assert_eq!(c.push_event(6, &ev(6)), Pushed::Queued);
        assert_eq!(c.frames(), [r#"{"type":"gap","after":"2"}"#, "e6"]);
        assert_eq!(c.push_event(6, &ev(6)), Pushed::Skipped);
    }

    #[test]
    fn a_replay_is_bounded_in_bytes_as_well_as_in_events() {
        let c = sub(1000);
        c.begin_hold(0, &[]);
        let big = Utf8Bytes::from("x".repeat(REPLAY_BYTES / 4));
        for id in 1..=4 {
            assert!(c.has_room(), "event {id}");
            c.push_replayed(id, big.clone());
        }
        // Four events of a thousand allowed, but a MiB of copies: the replay waits.
        assert!(!c.has_room());
        let mut taken = VecDeque::new();
        c.take(&mut taken);
        assert_eq!(taken.len(), 4);
        // The sender holds them now; the replay may queue the next MiB while they are written.
        assert!(c.has_room());
    }

    #[test]
    fn resume_holds_live_events_and_skips_what_the_replay_brought() {
        let c = sub(10);
        c.push_event(1, &ev(1));
        c.push_reply("r".into());
        c.begin_hold(0, &[]);
        assert_eq!(c.push_event(3, &ev(3)), Pushed::Queued);
        assert_eq!(c.push_event(4, &ev(4)), Pushed::Queued);
        for id in 1..=3 {
            c.push_replayed(id, ev(id));
        }
        c.end_hold(false);
        assert_eq!(c.frames(), ["r", "e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn an_overflowing_hold_ends_in_a_gap_after_the_last_held_event() {
        let c = sub(1);
        let m = Metrics::default();
        c.begin_hold(5, &[]);
        c.push_event(7, &ev(7));
        assert_eq!(c.push_event(8, &ev(8)), Pushed::Dropped);
        c.push_replayed(6, ev(6));
        c.end_hold(false);
        assert_eq!(c.frames(), ["e6", "e7"]);
        assert!(c.written(2, &m));
        assert_eq!(c.frames(), [r#"{"type":"gap","after":"7"}"#]);
    }

    #[test]
    fn a_replay_skips_per_channel_what_the_subscriber_was_sent() {
        let (a, b) = (
            vec!["a".to_string()],
            vec!["a".to_string(), "b".to_string()],
        );
        let c = sub(10);
        c.track_channels(&[], &a);
        for id in 1..=3 {
            c.push_event(id, &ev(id));
        }
        // The sender took 1..=3 (they are on the wire); 4 is still queued.
        assert_eq!(c.frames(), ["e1", "e2", "e3"]);
        c.push_event(4, &ev(4));
        // Re-subscribing to a and the new b from 1: a skips what it was sent, b gets it all.
        c.track_channels(&[], &b[1..]);
        let sent = c.begin_hold(1, &b);
        assert!(sent.contains("a", 2) && sent.contains("a", 3));
        assert!(!sent.contains("a", 4) && !sent.contains("b", 2));
        assert_eq!(c.push_event(5, &ev(5)), Pushed::Queued);
        for id in 2..=5 {
            if !sent.contains("a", id) {
                c.push_replayed(id, ev(id));
            }
        }
        c.end_hold(false);
        assert_eq!(c.frames(), ["e4", "e5"]);
        // Leaving a and coming back with an old `since`: nothing of a is sent twice.
        c.track_channels(&a, &[]);
        c.track_channels(&[], &a);
        let sent = c.begin_hold(0, &a);
        assert!(sent.contains("a", 1) && sent.contains("a", 5) && !sent.contains("a", 6));
    }

    #[test]
    fn a_subscription_without_since_starts_at_the_hub_position() {
        let c = sub(1);
        let m = Metrics::default();
        c.start_live(40);
        // Events up to the position were published before the subscriber joined.
        assert_eq!(c.push_event(40, &ev(40)), Pushed::Skipped);
        assert_eq!(c.push_event(41, &ev(41)), Pushed::Queued);
        assert_eq!(c.push_event(42, &ev(42)), Pushed::Dropped);
        // A subscriber that is behind keeps its position: its gap must cover what it missed.
        c.start_live(50);
        assert_eq!(c.frames(), ["e41"]);
        assert!(c.written(1, &m));
        assert_eq!(c.frames(), [r#"{"type":"gap","after":"41"}"#]);
    }

    #[test]
    fn replies_keep_frame_order_and_events_pass_them() {
        let c = sub(10);
        let ack = c.reserve_reply();
        c.push_reply("error".into());
        c.push_event(1, &ev(1));
        assert_eq!(c.frames(), ["e1"]);
        c.fill_reply(ack, "ack".into());
        c.fill_reply(ack, "again".into());
        assert_eq!(c.frames(), ["ack", "error"]);
    }

    #[test]
    fn one_ping_waits_at_a_time() {
        let c = sub(4);
        c.push_ping();
        c.push_ping();
        assert_eq!(c.frames(), ["ping"]);
        c.push_ping();
        assert_eq!(c.frames(), ["ping"]);
        c.seen(7);
        assert_eq!(c.last_seen(), 7);
    }

    #[test]
    fn close_goes_after_queued_frames_and_stops_further_pushes() {
        let c = sub(4);
        c.push_event(1, &ev(1));
        c.close(1008, "token revoked");
        c.push_event(2, &ev(2));
        c.push_reply("late".into());
        assert!(c.is_closed());
        assert_eq!(c.frames(), ["e1", "close 1008 token revoked"]);
    }
}
