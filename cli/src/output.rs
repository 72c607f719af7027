//! Everything that reaches stdout: tables for people, JSON for scripts, and the sanitising that
//! keeps strings from the server (names, chat text, error messages) from steering the terminal.

use std::io::{self, Write};

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;
use time::{OffsetDateTime, PrimitiveDateTime, format_description::well_known::Iso8601};

use crate::error::Result;

/// How results are printed (`-o/--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    /// Aligned columns for people.
    Table,
    /// JSON with stable field names for scripts.
    Json,
}

use crate::sanitize::is_dangerous;
pub use crate::sanitize::sanitize;

/// A JSON value shown as text: strings as themselves, anything else as compact JSON; sanitised.
pub fn display_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => sanitize(s).into_owned(),
        serde_json::Value::Null => String::new(),
        other => sanitize(&other.to_string()).into_owned(),
    }
}

/// serde_json escapes C0 controls itself; this also escapes DEL, C1 and bidi controls, so even
/// `-o json` piped to a terminal cannot inject escape sequences. The JSON stays valid.
struct SafeFormatter<F>(F);

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $name<W: ?Sized + Write>(&mut self, w: &mut W $(, $arg: $ty)*) -> io::Result<()> {
            self.0.$name(w $(, $arg)*)
        }
    )*};
}

impl<F: serde_json::ser::Formatter> serde_json::ser::Formatter for SafeFormatter<F> {
    forward! {
        begin_array();
        end_array();
        begin_array_value(first: bool);
        end_array_value();
        begin_object();
        end_object();
        begin_object_key(first: bool);
        end_object_key();
        begin_object_value();
        end_object_value();
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_dangerous(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

fn to_json_bytes<T: Serialize + ?Sized>(value: &T, pretty: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    let result = if pretty {
        let fmt = SafeFormatter(serde_json::ser::PrettyFormatter::new());
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut buf, fmt))
    } else {
        let fmt = SafeFormatter(serde_json::ser::CompactFormatter);
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut buf, fmt))
    };
    result.expect("our output types always serialise");
    buf
}

/// Compact, sanitised JSON on one line (for streams: one object per line).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> String {
    String::from_utf8(to_json_bytes(value, false)).expect("serde_json writes UTF-8")
}

/// Prints a document as indented JSON.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut buf = to_json_bytes(value, true);
    buf.push(b'\n');
    let mut out = io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// Prints one line to stdout; a closed pipe becomes [`crate::error::CliError::BrokenPipe`].
pub fn print_line(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// A borderless table in the style of kubectl; cells must already be sanitised.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// Two columns, field and value, for one object.
pub fn detail_table(rows: Vec<(&str, String)>) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (field, value) in rows {
        table.add_row(vec![format!("{field}:"), value]);
    }
    table
}

pub fn print_table(table: &Table) -> Result<()> {
    let mut text = table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>();
    // comfy-table pads the NOTHING preset with one leading space per cell.
    let indent = text
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for line in &mut text {
        *line = line.get(indent..).unwrap_or_default().to_owned();
    }
    print_line(&text.join("\n"))
}

/// A comma-separated, sanitised list ("-" when empty).
pub fn list_cell(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        sanitize(&items.join(", ")).into_owned()
    }
}

pub fn opt_cell(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => sanitize(v).into_owned(),
        _ => "-".to_owned(),
    }
}

/// Parses the server's timestamps: naive UTC (`2026-11-27T12:00:00.123456`) or with an offset.
pub fn parse_timestamp(ts: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(ts, &Iso8601::DEFAULT) {
        return Some(t);
    }
    PrimitiveDateTime::parse(ts, &Iso8601::DEFAULT)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// `t` in UTC; `None` when that falls outside the representable years (e.g. 9999-12-31
/// 23:59:59-01:00).
fn in_utc(t: OffsetDateTime) -> Option<OffsetDateTime> {
    t.checked_to_offset(time::UtcOffset::UTC)
}

/// `2026-11-27 12:00:00` (UTC), or the raw string (sanitised) if it does not parse.
pub fn datetime_cell(ts: Option<&str>) -> String {
    let Some(ts) = ts else { return "-".to_owned() };
    match parse_timestamp(ts).and_then(in_utc) {
        Some(t) => {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        None => sanitize(ts).into_owned(),
    }
}

/// `12:00:00` (UTC) for event lines.
pub fn clock_cell(ts: Option<&str>) -> String {
    match ts.and_then(parse_timestamp).and_then(in_utc) {
        Some(t) => {
            format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
        }
        None => ts
            .map(|s| sanitize(s).into_owned())
            .unwrap_or_else(|| "--:--:--".into()),
    }
}

/// "in 7h 59m", "3m ago" — relative to `now`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let span = secs.unsigned_abs();
    let text = if span >= 86_400 {
        format!("{}d {}h", span / 86_400, span % 86_400 / 3600)
    } else if span >= 3600 {
        format!("{}h {}m", span / 3600, span % 3600 / 60)
    } else if span >= 60 {
        format!("{}m", span / 60)
    } else {
        format!("{span}s")
    };
    if secs >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_output_escapes_every_control_and_stays_valid() {
        let value = json!({"text": "a\x1b]0;pwned\x07b\u{9b}c\u{202e}d\x7f", "n": [1, 2]});
        let line = json_line(&value);
        assert!(!line.chars().any(is_dangerous), "{line:?}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, value);
        let pretty = String::from_utf8(to_json_bytes(&value, true)).unwrap();
        assert!(!pretty.chars().any(|c| is_dangerous(c) && c != '\n'));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            value
        );
    }

    #[test]
    fn display_value_prints_strings_raw_and_the_rest_as_json() {
        assert_eq!(display_value(&json!("hi\x1b")), "hi\\u{1b}");
        assert_eq!(display_value(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(display_value(&json!(null)), "");
    }

    #[test]
    fn naive_and_offset_timestamps_both_parse() {
        assert_eq!(
            datetime_cell(Some("2026-11-27T12:00:00.123456")),
            "2026-11-27 12:00:00"
        );
        assert_eq!(
            datetime_cell(Some("2026-11-27T13:00:00+01:00")),
            "2026-11-27 12:00:00"
        );
        assert_eq!(
            datetime_cell(Some("2026-11-27T12:00:00.123Z")),
            "2026-11-27 12:00:00"
        );
        assert_eq!(clock_cell(Some("2026-11-27T12:34:56.5")), "12:34:56");
        assert_eq!(datetime_cell(None), "-");
        assert_eq!(datetime_cell(Some("yesterday\x1b")), "yesterday\\u{1b}");
    }

    #[test]
    fn timestamps_beyond_the_representable_years_show_raw() {
        let ts = "9999-12-31T23:59:59-01:00";
        assert_eq!(datetime_cell(Some(ts)), ts);
        assert_eq!(clock_cell(Some(ts)), ts);
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = parse_timestamp("2026-11-27T12:00:00").unwrap();
        let later = parse_timestamp("2026-11-27T19:59:30").unwrap();
        assert_eq!(relative(later, now), "in 7h 59m");
        assert_eq!(relative(now, later), "7h 59m ago");
        assert_eq!(relative(now + time::Duration::seconds(42), now), "in 42s");
    }

    #[test]
    fn tables_have_no_borders_or_leading_space() {
        let mut t = table(&["NAME", "ACTIVE"]);
        t.add_row(vec!["admin".to_owned(), "yes".to_owned()]);
        let text: Vec<String> = t.lines().collect();
        assert!(text[0].contains("NAME"));
        assert!(!text.iter().any(|l| l.contains('|')));
    }
}
