use std::fmt;

/// Fewest characters the password policy allows.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// A new password: 8 to 1024 bytes (the upper bound keeps hashing cost bounded).
/// `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(format!(
                "field [password] must be at least {MIN_PASSWORD_CHARS} characters"
            ));
        }
        Self::bounded(raw)
    }

    /// A password the operator configured (`admin_password`): shorter than the policy is their
    /// choice and accepted; empty or over the upper bound is not. The flag says it is short, so
    /// the caller can warn.
    pub fn configured(raw: &str) -> Result<(Self, bool), String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        Ok((
            Self::bounded(raw)?,
            raw.chars().count() < MIN_PASSWORD_CHARS,
        ))
    }

    fn bounded(raw: &str) -> Result<Self, String> {
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

    #[test]
    fn a_configured_password_may_be_short_but_not_empty_or_huge() {
        let (p, short) = Password::configured("hans").unwrap();
        assert_eq!((p.expose(), short), ("hans", true));
        assert!(!Password::configured("long enough").unwrap().1);
        assert!(Password::configured("").is_err());
        assert!(Password::configured(&"x".repeat(1025)).is_err());
    }
}
