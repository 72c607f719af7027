//! The wire of core4d's event channels, defined once: the frames a client sends and the server
//! sends (on the WebSocket and, for server frames, as Server-Sent Events), the machine-readable
//! error kinds, the close codes and the paths. core4d derives its API document's frame schemas
//! from these types (feature `openapi`) and tests its hand-written hot-path encoders against
//! them; core4ctl and the load generator build and parse frames with them.
//!
//! Only event frames carry a `channel` key besides `truncated` (core4's `chat.py` prints every
//! frame that has one); every other server frame has a `type`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "openapi")]
use poem_openapi::{Enum, Object, Union};

/// The paths of the event API.
pub mod paths {
    /// The WebSocket (GET with an upgrade) and HTTP publish (POST).
    pub const EVENT: &str = "/core4/api/v1/event";
    /// Server-Sent Events.
    pub const EVENT_STREAM: &str = "/core4/api/v1/event/stream";
    /// Stored messages of one channel.
    pub const EVENT_HISTORY: &str = "/core4/api/v1/event/history";
    /// Stored messages per channel.
    pub const EVENT_STATS: &str = "/core4/api/v1/event/stats";
}

/// WebSocket close codes core4d sends (also the `code` of an SSE `close` event).
pub mod close {
    /// The server shuts down, or (reason [`NO_PONG`]) the client answered no ping.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol error (reserved bits, an unmasked frame, a bad opcode ...).
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The token was revoked or expired, or the user deactivated or deleted: reconnecting with
    /// the same token cannot help.
    pub const POLICY: u16 = 1008;
    /// A frame over the hard cap (16 × `events.max_frame_bytes`).
    pub const TOO_BIG: u16 = 1009;
    /// Reason of a close with [`GOING_AWAY`] for a socket that answered no ping.
    pub const NO_PONG: &str = "no pong";
}

/// Channel permissions, `event://<glob>/<r|w|rw>` (and `cop`, which may do anything), matched
/// as core4d matches them, so a client can tell before it tries.
pub mod perms {
    /// May the holder of `perms` (a user's `perm_total`) read (`write == false`) or write
    /// `channel`?
    pub fn channel_allowed<S: AsRef<str>>(perms: &[S], channel: &str, write: bool) -> bool {
        let want = if write { 'w' } else { 'r' };
        perms.iter().map(AsRef::as_ref).any(|p| {
            p == "cop"
                || p.strip_prefix("event://").is_some_and(|rest| {
                    rest.rsplit_once('/').is_some_and(|(pattern, acc)| {
                        acc.contains(want) && glob_match(pattern, channel)
                    })
                })
        })
    }

    /// `*` matches any run of characters. Iterative with one backtrack point, so the cost is at
    /// most pattern length × text length, whatever the pattern.
    pub fn glob_match(pattern: &str, text: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }

    #[cfg(test)]
    mod tests {
        use super::channel_allowed;

        #[test]
        fn channel_permissions_match_by_glob_and_mode() {
            let perms = ["event://team-*/r", "event://ops/rw", "api://x"];
            assert!(channel_allowed(&perms, "team-a", false));
            assert!(!channel_allowed(&perms, "team-a", true));
            assert!(channel_allowed(&perms, "ops", true));
            assert!(!channel_allowed(&perms, "opsx", false));
            assert!(channel_allowed(&["cop"], "anything", true));
            assert!(!channel_allowed::<&str>(&[], "message", false));
        }
    }
}

/// Longest correlation id a client may send.
pub const MAX_ID_CHARS: usize = 64;
/// Longest idempotency key a client may send.
pub const MAX_KEY_CHARS: usize = 128;

/// What went wrong, for programs: clients decide on the kind, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Enum))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub enum ErrorKind {
    /// The frame is not valid: not JSON, a missing or wrong field, a bad channel name.
    Malformed,
    /// The frame is over `events.max_frame_bytes`.
    TooLarge,
    /// No permission (e.g. no write permission on the channel).
    Forbidden,
    /// A token frame's token was refused.
    Unauthorized,
    /// Over the user's message rate: nothing was stored or changed; send again a little later.
    RateLimited,
    /// The message was certainly not stored (the database is away, the server shuts down):
    /// send it again, on another connection if need be.
    Unavailable,
    /// The commit's outcome is unknown (the database went away mid-commit): send it again with
    /// the same `key`, or check the history.
    InDoubt,
    /// A replay stopped early (the database is away): page the rest from history.
    ReplayStopped,
    /// The server failed; the details are in its log.
    Internal,
}

impl ErrorKind {
    /// The wire name (`rate_limited`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::InDoubt => "in_doubt",
            Self::ReplayStopped => "replay_stopped",
            Self::Internal => "internal",
        }
    }
}

// ---- client frames ----

/// Client frame: replace this socket's channel set. A list of more than 4 × `max_channels`
/// names (default 256) is refused with an `error` frame and the set stays as it was; of the
/// rest, the first `max_channels` (default 64) readable ones are granted. Every interest frame
/// after a socket's first takes a token from the user's message rate limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct InterestRequestFrame {
    /// Channel names; trimmed and lowercased, duplicates and empty names dropped. An entry that
    /// is not a string gets a `malformed` error frame and leaves the set as it was.
    /// Missing: unsubscribe from everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<String>>,
    /// Replay the stored messages after this id on these channels first, then continue live
    /// (no gap, no duplicate): for every granted channel, also one this frame adds, the
    /// messages this socket was not sent yet. Replayed ids rise, but may be below ids sent
    /// earlier on other channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Correlation id (at most 64 characters), echoed on the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Client frame: store `text` on `channel` and broadcast it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct MessageRequestFrame {
    /// The channel (normalised like interests). Needs `event://<channel>/w`.
    pub channel: String,
    /// Any JSON value except null and the empty string; stored as the event's `data`.
    pub text: Value,
    /// Idempotency key (1 to 128 characters, no control characters): a message whose key the
    /// same account (not name: a rename keeps the keys) stored within
    /// `events.idempotency_window_secs` (24 h) is not stored again; the ack names the original
    /// `message_id` with `"duplicate": true`. Resend with the same key after a reconnect to
    /// publish exactly once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Correlation id (at most 64 characters), echoed on the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Client frame: replace the socket's token (before it expires) without reconnecting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct TokenRequestFrame {
    /// A token of the same user.
    pub token: String,
    /// Correlation id (at most 64 characters), echoed on the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Every frame a client may send: a JSON text frame, `type` picks the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Union))]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", oai(discriminator_name = "type"))]
pub enum ClientFrame {
    #[cfg_attr(feature = "openapi", oai(mapping = "interest"))]
    Interest(InterestRequestFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "message"))]
    Message(MessageRequestFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "token"))]
    Token(TokenRequestFrame),
}

impl ClientFrame {
    /// The frame as the JSON text to send.
    pub fn to_text(&self) -> String {
        // Serialising these types cannot fail (string keys, no maps of other keys).
        serde_json::to_string(self).unwrap_or_default()
    }
}

// ---- server frames ----

/// Server frame: a stored event, delivered to every socket interested in its channel (the
/// sender's too). The only frame with a `channel` key and no `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct EventFrame {
    /// The message id: a per-deployment increasing sequence, as a decimal string.
    #[serde(rename = "_id")]
    #[cfg_attr(feature = "openapi", oai(rename = "_id"))]
    pub id: String,
    /// Commit time, naive UTC with microseconds (`2018-10-31T06:37:15.734609`).
    pub created: String,
    /// `message` for chat messages.
    pub name: String,
    /// The sender's user name.
    pub author: String,
    pub channel: String,
    /// The `text` the sender sent.
    pub data: Value,
}

/// Server frame, `type` = `interest`: the reply to an interest frame (with `data`), or the
/// acknowledgement of a message that also added its channel (with `message_id`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct InterestReplyFrame {
    /// The channels this socket now receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<String>>,
    /// The stored message's id (acknowledgement only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `processed interest in ['message', 'system']`, plus what was left out and why.
    pub message: String,
    /// Acknowledgement only: `true` when a message with the same key was stored before and
    /// `message_id` is that message's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Requested channels that were left out, with the reason (e.g. `no read permission`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<std::collections::BTreeMap<String, String>>,
    /// Only when the interest frame had a `since`: the id the replay starts after (messages this
    /// socket was already sent are skipped, so none comes twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The correlation id of the frame this answers (absent on unsolicited frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Server frame, `type` = `send`: the message is committed in PostgreSQL under `message_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct SendReplyFrame {
    pub message_id: String,
    /// `OK`.
    pub message: String,
    /// `true` when a message with the same key was stored before and `message_id` is that
    /// message's (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// The correlation id of the message frame, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Server frame, `type` = `error`: the client frame was refused; the socket stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct ErrorReplyFrame {
    /// What went wrong, for programs.
    pub kind: ErrorKind,
    /// For people (e.g. "malformed message: missing `text`").
    pub message: String,
    /// The correlation id of the refused frame, if it had a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Server frame, `type` = `gap`: this socket fell behind and missed events after `after`; page
/// them from `/event/history?after=<after>`. Live delivery continues after this frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct GapFrame {
    /// The id of the last event this socket received before the gap.
    pub after: String,
}

/// Server frame, `type` = `truncated`: a resume reached below the oldest message retention kept
/// on `channel`; messages before `first` are gone (pruned), not missed. Sent before the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct TruncatedFrame {
    /// The channel.
    pub channel: String,
    /// The oldest retained message id of the channel (the next id, if none is left).
    pub first: String,
}

/// Server frame, `type` = `token`: a token frame was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct TokenReplyFrame {
    /// `token accepted`.
    pub message: String,
    /// When the new token expires (naive UTC); the socket is closed then unless refreshed again.
    pub expires: String,
    /// The correlation id of the token frame, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Every frame the server sends besides event frames (`EventFrame`); `type` picks the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Union))]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", oai(discriminator_name = "type"))]
pub enum ServerReply {
    #[cfg_attr(feature = "openapi", oai(mapping = "interest"))]
    Interest(InterestReplyFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "send"))]
    Send(SendReplyFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "error"))]
    Error(ErrorReplyFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "gap"))]
    Gap(GapFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "truncated"))]
    Truncated(TruncatedFrame),
    #[cfg_attr(feature = "openapi", oai(mapping = "token"))]
    Token(TokenReplyFrame),
}

/// Every frame the server sends: events and replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Union))]
#[serde(untagged)]
pub enum ServerFrame {
    Event(EventFrame),
    Reply(ServerReply),
}

impl ServerFrame {
    /// Parses a server frame: a frame with a `type` is a reply, one without is an event.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        if value.get("type").is_some() {
            serde_json::from_value(value).map(ServerFrame::Reply)
        } else {
            serde_json::from_value(value).map(ServerFrame::Event)
        }
    }
}

/// The body of `POST /core4/api/v1/event`: the fields of the socket's message frame. Any other
/// field is refused (a 400 naming it), as on the roles endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(deny_unknown_fields))]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Required: the channel (trimmed and lowercased). Needs `event://<channel>/w`.
    #[serde(default)]
    pub channel: Option<String>,
    /// Required: any JSON value except null and the empty string; stored as the event's
    /// `data`. (Both are checked after the credentials, with the socket's error phrases.)
    #[serde(default)]
    pub text: Option<Value>,
    /// Idempotency key (1 to 128 characters, no control characters); the `Idempotency-Key` header does the same (both given, they must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The `data` of a successful `POST /core4/api/v1/event`: the message is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
pub struct Published {
    /// The stored message's id, or for a `duplicate` the id of the message stored before.
    pub message_id: String,
    /// `true` when the same account stored a message with the same key within
    /// `events.idempotency_window_secs` and this one was not stored again.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip_with_their_type() {
        let frame = ClientFrame::Message(MessageRequestFrame {
            channel: "message".into(),
            text: Value::String("hi".into()),
            key: Some("k".into()),
            id: None,
        });
        let text = frame.to_text();
        assert_eq!(
            text,
            r#"{"type":"message","channel":"message","text":"hi","key":"k"}"#
        );
        assert_eq!(serde_json::from_str::<ClientFrame>(&text).unwrap(), frame);
    }

    #[test]
    fn server_frames_are_told_apart_by_type() {
        let event =
            r#"{"_id":"4","created":"x","name":"message","author":"a","channel":"c","data":1}"#;
        assert!(matches!(ServerFrame::parse(event), Ok(ServerFrame::Event(e)) if e.id == "4"));
        let truncated = r#"{"type":"truncated","channel":"c","first":"9"}"#;
        assert!(matches!(
            ServerFrame::parse(truncated),
            Ok(ServerFrame::Reply(ServerReply::Truncated(_)))
        ));
        let error = r#"{"type":"error","kind":"rate_limited","message":"slow down"}"#;
        match ServerFrame::parse(error).unwrap() {
            ServerFrame::Reply(ServerReply::Error(e)) => assert_eq!(e.kind, ErrorKind::RateLimited),
            other => panic!("{other:?}"),
        }
        assert_eq!(ErrorKind::InDoubt.as_str(), "in_doubt");
        assert_eq!(
            serde_json::to_string(&ErrorKind::ReplayStopped).unwrap(),
            r#""replay_stopped""#
        );
    }
}
