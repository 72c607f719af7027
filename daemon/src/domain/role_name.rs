use std::fmt;

/// A user or role name: trimmed, 1 to 64 characters, no whitespace or control characters.
/// Names are unique case-insensitively; [`RoleName::key`] is the normalised form.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("field [name] is mandatory".into());
        }
        if name.chars().count() > 64 {
            return Err("field [name] must be at most 64 characters".into());
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("field [name] must match [^\\S+$]: no whitespace".into());
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalised name used for uniqueness and lookups.
    pub fn key(&self) -> String {
        Self::key_of(&self.0)
    }

    pub fn key_of(raw: &str) -> String {
        raw.trim().to_lowercase()
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_keyed_case_insensitively() {
        let n = RoleName::parse("  User1 ").unwrap();
        assert_eq!(n.as_str(), "User1");
        assert_eq!(n.key(), "user1");
    }

    #[test]
    fn names_with_spaces_or_empty_are_rejected() {
        assert!(
            RoleName::parse("m r a")
                .unwrap_err()
                .contains("field [name] must match")
        );
        assert!(RoleName::parse("   ").unwrap_err().contains("mandatory"));
        assert!(RoleName::parse(&"x".repeat(65)).is_err());
        assert!(RoleName::parse("a\u{1b}b").is_err());
    }
}
