//! Server-supplied strings made safe for a terminal line. A leaf: the HTTP client cleans error
//! messages with it, the output module everything it prints.

use std::{borrow::Cow, fmt::Write as _};

/// Characters that can move the cursor, recolour, retitle or reorder what the terminal shows.
pub(crate) fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Makes a server-supplied string safe to print on one terminal line: control characters
/// (escape sequences, newlines, C1 codes) and bidi overrides are shown escaped, not obeyed.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_dangerous(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            sanitize("héllo wörld ✓"),
            Cow::Borrowed("héllo wörld ✓")
        ));
    }

    #[test]
    fn escape_sequences_and_newlines_are_shown_not_obeyed() {
        assert_eq!(sanitize("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(sanitize("x\ny\r\tz"), "x\\ny\\r\\tz");
        assert_eq!(sanitize("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(sanitize("\x07\x7f"), "\\u{7}\\u{7f}");
    }

    #[test]
    fn bidi_overrides_are_escaped() {
        assert_eq!(sanitize("abc\u{202e}txt.exe"), "abc\\u{202e}txt.exe");
        assert_eq!(sanitize("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }
}
