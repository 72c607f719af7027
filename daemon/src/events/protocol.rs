//! The wire protocol of `/event` (reference §6): parsing client frames into typed requests,
//! encoding server frames, and the JSON Schemas of both for the API document.
//!
//! Only event frames carry a `channel` key: core4's `chat.py` prints every frame that has one.

use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{envelope::format_ts, storage::events::EventRow};

/// A client frame, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Replace the interest set; the raw names are normalised and checked by the hub.
    Interest {
        data: Vec<String>,
        since: Option<i64>,
    },
    /// Store and broadcast `text` (compact JSON) on the raw `channel`; with a `key`, at most once
    /// per (account, key) within the idempotency window.
    Message {
        channel: String,
        text: String,
        key: Option<String>,
    },
    /// Replace the socket's token.
    Token { token: String },
}

/// Why a client frame was refused (always [`ErrorKind::Malformed`]); the text goes into an
/// `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError(pub String);

impl FrameError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

pub use core4_proto::{MAX_ID_CHARS, MAX_KEY_CHARS};

/// A client frame with its correlation id (echoed on the reply, also on an error reply).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub id: Option<String>,
    pub request: Result<Request, FrameError>,
}

/// Parses one text frame (the size limit is checked before).
pub fn parse_frame(text: &str) -> Parsed {
    let mut obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => obj,
        Ok(value) => {
            return Parsed {
                id: None,
                request: Err(FrameError::new(format!(
                    "a frame must be a JSON object, not {}",
                    kind(&value)
                ))),
            };
        }
        Err(e) => {
            return Parsed {
                id: None,
                request: Err(FrameError(format!("error parsing json data: {e}"))),
            };
        }
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_CHARS => Some(s),
        Some(_) => {
            return Parsed {
                id: None,
                request: Err(FrameError::new(format!(
                    "malformed frame: `id` must be a string of at most {MAX_ID_CHARS} characters"
                ))),
            };
        }
    };
    Parsed {
        id,
        request: parse_object(obj),
    }
}

/// The correlation id of a frame that is refused unparsed (over the size limit), so that its
/// error reply can still carry it; the rest of the document is skipped, not built.
pub fn frame_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct OnlyId {
        id: Option<String>,
    }
    serde_json::from_str::<OnlyId>(text)
        .ok()?
        .id
        .filter(|id| id.chars().count() <= MAX_ID_CHARS)
}

/// Parses one text frame, without its correlation id.
pub fn parse(text: &str) -> Result<Request, FrameError> {
    parse_frame(text).request
}

fn parse_object(mut obj: Map<String, Value>) -> Result<Request, FrameError> {
    let ty = match obj.get("type") {
        None | Some(Value::Null) => {
            return Err(FrameError::new(
                "missing `type`: expected interest, message or token",
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(FrameError::new(format!(
                "`type` must be a string, not {}",
                kind(other)
            )));
        }
    };
    match ty.as_str() {
        "interest" => parse_interest(&obj),
        "message" => {
            let channel = match obj.get("channel") {
                None | Some(Value::Null) => {
                    return Err(FrameError::new("malformed message: missing `channel`"));
                }
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(FrameError::new(format!(
                        "malformed message: `channel` must be a string, not {}",
                        kind(other)
                    )));
                }
            };
            let text = match obj.remove("text") {
                None | Some(Value::Null) => {
                    return Err(FrameError::new("malformed message: missing `text`"));
                }
                Some(Value::String(s)) if s.is_empty() => {
                    return Err(FrameError::new("malformed message: `text` is empty"));
                }
                Some(v) => v.to_string(),
            };
            let key = match obj.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) if valid_key(k) => Some(k.clone()),
                Some(_) => return Err(FrameError::new(invalid_key_message())),
            };
            Ok(Request::Message { channel, text, key })
        }
        "token" => match obj.get("token") {
            Some(Value::String(s)) if !s.is_empty() => Ok(Request::Token { token: s.clone() }),
            _ => Err(FrameError::new("malformed token frame: missing `token`")),
        },
        other => Err(FrameError(format!(
            "unknown type [{}]: expected interest, message or token",
            clip(other)
        ))),
    }
}

fn parse_interest(obj: &Map<String, Value>) -> Result<Request, FrameError> {
    let data = match obj.get("data") {
        // core4: a missing list unsubscribes from everything.
        None => Vec::new(),
        // core4 dropped non-strings silently, so `[1, null]` unsubscribed from everything; a
        // client that sends them has a bug worth hearing of. Empty names go after normalisation.
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(FrameError::new(format!(
                    "malformed interest: `data` must be a list of channel names, but entry {i} is {}; interest unchanged",
                    kind(other)
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(FrameError::new(format!(
                "malformed interest: `data` must be a list of channel names, not {}",
                kind(other)
            )));
        }
    };
    let since =
        match obj.get("since") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_id(v).ok_or_else(|| {
                FrameError::new("malformed interest: `since` must be a message id")
            })?),
        };
    Ok(Request::Interest { data, since })
}

/// Is `key` a valid idempotency key (1 to [`MAX_KEY_CHARS`] characters, none a control
/// character: PostgreSQL's text cannot even hold NUL)?
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().count() <= MAX_KEY_CHARS && !key.chars().any(char::is_control)
}

/// The error phrase for a key [`valid_key`] refuses.
pub fn invalid_key_message() -> String {
    format!(
        "malformed message: `key` must be a string of 1 to {MAX_KEY_CHARS} characters, none of them control characters"
    )
}

/// A message id as sent by clients: a decimal string (or number), not negative.
pub fn parse_id(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => parse_id_str(s),
        Value::Number(n) => n.as_i64().filter(|n| *n >= 0),
        _ => None,
    }
}

pub fn parse_id_str(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|n| *n >= 0)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Client strings quoted back are cut short.
pub(crate) fn clip(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// The event frame, encoded once per event and shared by every receiving socket.
pub fn event_frame(e: &EventRow) -> Utf8Bytes {
    let mut out = String::with_capacity(112 + e.author.len() + e.channel.len() + e.data.len());
    out.push_str("{\"_id\":\"");
    out.push_str(&e.id.to_string());
    out.push_str("\",\"created\":\"");
    out.push_str(&format_ts(e.created));
    out.push_str("\",\"name\":");
    push_json_str(&mut out, &e.name);
    out.push_str(",\"author\":");
    push_json_str(&mut out, &e.author);
    out.push_str(",\"channel\":");
    push_json_str(&mut out, &e.channel);
    out.push_str(",\"data\":");
    out.push_str(&e.data);
    out.push('}');
    Utf8Bytes::from(out)
}

/// `{"type":"send","message_id":"<id>","message":"OK"}`, or the `interest` variant when the
/// message also added its channel to the socket's interests (as core4 does); a keyed message
/// that was stored before acks the original id with `"duplicate":true`.
pub fn ack_frame(id: i64, added_interest: bool, duplicate: bool) -> Utf8Bytes {
    let dup = if duplicate { ",\"duplicate\":true" } else { "" };
    Utf8Bytes::from(if added_interest {
        format!(
            "{{\"type\":\"interest\",\"message_id\":\"{id}\",\"message\":\"OK, added interest in channel\"{dup}}}"
        )
    } else {
        format!("{{\"type\":\"send\",\"message_id\":\"{id}\",\"message\":\"OK\"{dup}}}")
    })
}

/// The reply with the client frame's correlation `id` added (unchanged without one).
pub fn with_id(frame: Utf8Bytes, id: Option<&str>) -> Utf8Bytes {
    let Some(id) = id else { return frame };
    let mut out = String::with_capacity(frame.len() + id.len() + 8);
    out.push_str(frame.strip_suffix('}').unwrap_or(&frame));
    out.push_str(",\"id\":");
    push_json_str(&mut out, id);
    out.push('}');
    Utf8Bytes::from(out)
}

pub fn error_frame(kind: ErrorKind, message: &str) -> Utf8Bytes {
    let mut out = String::from("{\"type\":\"error\",\"kind\":\"");
    out.push_str(kind.as_str());
    out.push_str("\",\"message\":");
    push_json_str(&mut out, message);
    out.push('}');
    Utf8Bytes::from(out)
}

pub fn gap_frame(after: i64) -> Utf8Bytes {
    Utf8Bytes::from(format!("{{\"type\":\"gap\",\"after\":\"{after}\"}}"))
}

pub fn truncated_frame(channel: &str, first: i64) -> Utf8Bytes {
    let mut out = String::from("{\"type\":\"truncated\",\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(&format!(",\"first\":\"{first}\"}}"));
    Utf8Bytes::from(out)
}

/// Left-out channels the reply's `message` names (`denied` has all of them).
const LEFT_OUT_SHOWN: usize = 8;

/// The reply to an interest frame: the granted channels, a core4-style message, what was left
/// out and why, and with a resume where the replay starts.
pub fn interest_frame(
    granted: &[String],
    denied: &[(String, String)],
    since: Option<i64>,
    context: &str,
) -> Utf8Bytes {
    let repr = granted
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut message = format!("{context} [{repr}]");
    if !denied.is_empty() {
        let mut left_out = denied
            .iter()
            .take(LEFT_OUT_SHOWN)
            .map(|(c, why)| format!("'{}' ({why})", clip(c)))
            .collect::<Vec<_>>()
            .join(", ");
        if denied.len() > LEFT_OUT_SHOWN {
            left_out.push_str(&format!(" and {} more", denied.len() - LEFT_OUT_SHOWN));
        }
        message.push_str(&format!("; left out: {left_out}"));
    }
    let denied: Map<String, Value> = denied
        .iter()
        .map(|(c, why)| (c.clone(), Value::String(why.clone())))
        .collect();
    let mut frame = serde_json::json!({
        "type": "interest",
        "data": granted,
        "message": message,
        "denied": denied,
    });
    if let Some(since) = since {
        frame["since"] = Value::String(since.to_string());
    }
    Utf8Bytes::from(frame.to_string())
}

pub fn token_frame(expires: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"token\",\"message\":\"token accepted\",\"expires\":\"{expires}\"}}"
    ))
}

// The frames' types and JSON Schemas are defined once, in core4-proto; the encoders above are
// tested against them below.
pub use core4_proto::{
    ClientFrame, ErrorKind, EventFrame, PublishRequest, Published, ServerFrame, ServerReply,
    TruncatedFrame,
};

#[cfg(test)]
mod tests {
    use poem_openapi::types::ParseFromJSON;
    use time::macros::datetime;

    use super::*;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().0
    }

    #[test]
    fn client_frames_parse() {
        assert_eq!(
            parse(r#"{"type":"interest","data":["Message"," system "],"since":"12"}"#),
            Ok(Request::Interest {
                data: vec!["Message".into(), " system ".into()],
                since: Some(12)
            })
        );
        assert_eq!(
            parse(r#"{"type":"interest"}"#),
            Ok(Request::Interest {
                data: vec![],
                since: None
            })
        );
        assert_eq!(
            parse(r#"{"type":"message","channel":"message","text":{"b":1,"a":[true]}}"#),
            Ok(Request::Message {
                channel: "message".into(),
                text: r#"{"a":[true],"b":1}"#.into(),
                key: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"token","token":"a.b.c"}"#),
            Ok(Request::Token {
                token: "a.b.c".into()
            })
        );
    }

    #[test]
    fn every_malformed_class_gets_a_message() {
        assert!(err("nope").starts_with("error parsing json data"));
        assert_eq!(err("[]"), "a frame must be a JSON object, not a list");
        assert_eq!(err("5"), "a frame must be a JSON object, not a number");
        assert_eq!(err("null"), "a frame must be a JSON object, not null");
        assert!(err("{}").starts_with("missing `type`"));
        assert!(err(r#"{"type":7}"#).starts_with("`type` must be a string"));
        assert!(err(r#"{"type":"dance"}"#).starts_with("unknown type [dance]"));
        assert_eq!(
            err(r#"{"type":"message","text":"x"}"#),
            "malformed message: missing `channel`"
        );
        assert_eq!(
            err(r#"{"type":"message","channel":"message"}"#),
            "malformed message: missing `text`"
        );
        assert_eq!(
            err(r#"{"type":"message","channel":"message","text":""}"#),
            "malformed message: `text` is empty"
        );
        assert!(err(r#"{"type":"interest","data":null}"#).contains("must be a list"));
        assert_eq!(
            err(r#"{"type":"interest","data":["message",null,{}]}"#),
            "malformed interest: `data` must be a list of channel names, but entry 1 is null; interest unchanged"
        );
        assert!(err(r#"{"type":"interest","data":[],"since":"x"}"#).contains("`since`"));
        assert!(err(r#"{"type":"token"}"#).contains("missing `token`"));
        assert!(err(r#"{"type":"token","token":"t","id":5}"#).contains("`id` must be a string"));
        let long = format!(
            r#"{{"type":"token","token":"t","id":"{}"}}"#,
            "x".repeat(65)
        );
        assert!(err(&long).contains("at most 64"));
        let key = format!(
            r#"{{"type":"message","channel":"c","text":"x","key":"{}"}}"#,
            "k".repeat(129)
        );
        assert!(err(&key).contains("`key` must be a string of 1 to 128"));
        assert!(err(r#"{"type":"message","channel":"c","text":"x","key":""}"#).contains("`key`"));
        for bad in [r"k\u0000", r"k\n", r"\u007f", r"\u0085"] {
            let frame = format!(r#"{{"type":"message","channel":"c","text":"x","key":"{bad}"}}"#);
            assert!(err(&frame).contains("control characters"), "{bad}");
        }
        assert!(valid_key("ключ-€-1"));
    }

    #[test]
    fn correlation_ids_and_keys_are_parsed_and_echoed() {
        let p = parse_frame(r#"{"type":"message","channel":"c","text":"x","key":"k1","id":"a"}"#);
        assert_eq!(p.id.as_deref(), Some("a"));
        assert_eq!(
            p.request,
            Ok(Request::Message {
                channel: "c".into(),
                text: r#""x""#.into(),
                key: Some("k1".into())
            })
        );
        // The id comes back also when the rest of the frame is refused.
        let p = parse_frame(r#"{"type":"dance","id":"b"}"#);
        assert_eq!(p.id.as_deref(), Some("b"));
        assert!(p.request.is_err());
        let v: Value =
            serde_json::from_str(&with_id(ack_frame(3, false, false), Some("b"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "send", "message_id": "3", "message": "OK", "id": "b"})
        );
        assert_eq!(&*with_id(gap_frame(1), None), &*gap_frame(1));
    }

    #[test]
    fn the_id_of_an_unparsed_frame_is_found_alone() {
        let big = "x".repeat(1000);
        let frame = format!(r#"{{"type":"message","text":{{"a":["{big}"]}},"id":"big"}}"#);
        assert_eq!(frame_id(&frame).as_deref(), Some("big"));
        assert_eq!(frame_id(r#"{"type":"message"}"#), None);
        assert_eq!(frame_id(r#"{"id":5}"#), None);
        assert_eq!(frame_id("not json"), None);
        assert_eq!(
            frame_id(&format!(r#"{{"id":"{}"}}"#, "i".repeat(MAX_ID_CHARS + 1))),
            None
        );
    }

    fn row() -> EventRow {
        EventRow {
            id: 42,
            created: datetime!(2019-03-10 19:02:20.123 UTC),
            name: "message".into(),
            author: "us\"er1".into(),
            channel: "message".into(),
            data: r#"{"a":"hi"}"#.into(),
        }
    }

    #[test]
    fn event_frames_match_their_schema() {
        let frame = event_frame(&row());
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"_id": "42", "created": "2019-03-10T19:02:20.123000", "name": "message",
                "author": "us\"er1", "channel": "message", "data": {"a": "hi"}})
        );
        assert!(EventFrame::parse_from_json(Some(value)).is_ok());
    }

    #[test]
    fn the_truncated_frame_matches_its_schema() {
        let value: Value = serde_json::from_str(&truncated_frame("mes\"sage", 42)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "truncated", "channel": "mes\"sage", "first": "42"})
        );
        assert!(ServerReply::parse_from_json(Some(value)).is_ok());
    }

    #[test]
    fn replies_match_their_schemas_and_carry_no_channel() {
        let frames = [
            ack_frame(7, false, false),
            ack_frame(7, true, true),
            with_id(ack_frame(7, false, true), Some("c-1")),
            with_id(error_frame(ErrorKind::Malformed, "x"), Some("\"quoted\"")),
            error_frame(ErrorKind::RateLimited, "bad \"thing\""),
            gap_frame(41),
            interest_frame(
                &["message".into()],
                &[("queue".into(), "no read permission".into())],
                Some(5),
                "processed interest in",
            ),
            token_frame("2030-01-01T00:00:00.000000"),
        ];
        for frame in frames {
            let value: Value = serde_json::from_str(&frame).unwrap();
            assert!(value.get("channel").is_none(), "{value}");
            assert!(
                ServerReply::parse_from_json(Some(value.clone())).is_ok(),
                "{value}"
            );
        }
        let value: Value = serde_json::from_str(&interest_frame(&[], &[], None, "x")).unwrap();
        assert_eq!(value["message"], "x []");
        assert!(value.get("since").is_none());
        // The message names a few of many left-out channels; `denied` has them all.
        let denied: Vec<(String, String)> =
            (0..20).map(|i| (format!("c{i}"), "no".into())).collect();
        let value: Value = serde_json::from_str(&interest_frame(&[], &denied, None, "x")).unwrap();
        assert!(
            value["message"]
                .as_str()
                .unwrap()
                .ends_with("'c7' (no) and 12 more")
        );
        assert_eq!(value["denied"].as_object().unwrap().len(), 20);
    }

    #[test]
    fn hand_written_encoders_decode_into_the_shared_types() {
        use core4_proto::{ErrorReplyFrame, GapFrame, SendReplyFrame, TokenReplyFrame};
        let reply = |frame: Utf8Bytes| serde_json::from_str::<ServerReply>(&frame).unwrap();
        assert_eq!(
            reply(with_id(ack_frame(7, false, true), Some("c"))),
            ServerReply::Send(SendReplyFrame {
                message_id: "7".into(),
                message: "OK".into(),
                duplicate: Some(true),
                id: Some("c".into()),
            })
        );
        assert_eq!(
            reply(error_frame(ErrorKind::InDoubt, "may \"not\"")),
            ServerReply::Error(ErrorReplyFrame {
                kind: ErrorKind::InDoubt,
                message: "may \"not\"".into(),
                id: None,
            })
        );
        assert_eq!(
            reply(gap_frame(41)),
            ServerReply::Gap(GapFrame { after: "41".into() })
        );
        assert_eq!(
            reply(truncated_frame("c", 3)),
            ServerReply::Truncated(TruncatedFrame {
                channel: "c".into(),
                first: "3".into(),
            })
        );
        assert_eq!(
            reply(token_frame("2030-01-01T00:00:00.000000")),
            ServerReply::Token(TokenReplyFrame {
                message: "token accepted".into(),
                expires: "2030-01-01T00:00:00.000000".into(),
                id: None,
            })
        );
        match reply(interest_frame(&["a".into()], &[], Some(5), "x")) {
            ServerReply::Interest(i) => {
                assert_eq!(i.data, Some(vec!["a".to_string()]));
                assert_eq!(i.since.as_deref(), Some("5"));
            }
            other => panic!("{other:?}"),
        }
        let event: EventFrame = serde_json::from_str(&event_frame(&row())).unwrap();
        assert_eq!(
            (event.id.as_str(), &event.data),
            ("42", &serde_json::json!({"a": "hi"}))
        );
        // What the daemon parses, a client builds from the same types.
        let frame = ClientFrame::Message(core4_proto::MessageRequestFrame {
            channel: "c".into(),
            text: Value::String("x".into()),
            key: Some("k".into()),
            id: Some("i".into()),
        });
        let parsed = parse_frame(&frame.to_text());
        assert_eq!(parsed.id.as_deref(), Some("i"));
        assert_eq!(
            parsed.request,
            Ok(Request::Message {
                channel: "c".into(),
                text: r#""x""#.into(),
                key: Some("k".into()),
            })
        );
    }

    #[test]
    fn client_frames_match_their_schema() {
        for text in [
            r#"{"type":"interest","data":["message"],"since":"3"}"#,
            r#"{"type":"message","channel":"message","text":"hi"}"#,
            r#"{"type":"token","token":"a.b.c"}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(ClientFrame::parse_from_json(Some(value)).is_ok(), "{text}");
        }
    }
}
