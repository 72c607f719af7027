use std::fmt;

/// An event channel name, normalised once (trimmed, lowercased) the same way everywhere:
/// 1 to 64 characters, no whitespace or control characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Channel(String);

impl Channel {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim().to_lowercase();
        if name.is_empty() {
            return Err("channel name is empty".into());
        }
        if name.chars().count() > 64 {
            return Err("channel name is longer than 64 characters".into());
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("channel name contains whitespace or control characters".into());
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks a channel glob (`*` for any run of characters, at most 8), as `event://` permissions
    /// and retention rules use them; returns it normalised.
    pub fn parse_glob(raw: &str) -> Result<String, String> {
        let glob = Self::parse(raw)?.0;
        if glob.matches('*').count() > 8 {
            return Err("a channel glob may have at most 8 `*`".into());
        }
        Ok(glob)
    }

    /// Whether this channel matches a glob from [`Channel::parse_glob`].
    pub fn matches(&self, glob: &str) -> bool {
        super::permission::glob_match(glob, &self.0)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_normalised() {
        assert_eq!(Channel::parse(" Message ").unwrap().as_str(), "message");
        assert!(Channel::parse("").is_err());
        assert!(Channel::parse("a b").is_err());
        assert!(Channel::parse(&"c".repeat(65)).is_err());
    }
}
