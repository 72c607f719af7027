use std::fmt;

/// A new password: 8 to 1024 bytes (the upper bound keeps hashing cost bounded).
/// `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() < 8 {
            return Err("field [password] must be at least 8 characters".into());
        }
        if raw.len() > 1024 {
            return Err("field [password] must be at most 1024 bytes".into());
        }
        Ok(Self(raw.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bounds_are_enforced_and_debug_redacts() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"x".repeat(1025)).is_err());
        let p = Password::parse("very secret").unwrap();
        assert_eq!(p.expose(), "very secret");
        assert!(!format!("{p:?}").contains("secret"));
    }
}
