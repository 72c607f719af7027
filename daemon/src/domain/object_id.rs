use std::fmt;

use rand::Rng;

/// A 24-hex-digit id (as core4's Mongo ObjectIds): 4 bytes of creation time, 8 random bytes.
/// Used for role ids, etags and request ids.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ObjectId(String);

impl ObjectId {
    pub fn new() -> Self {
        let secs = time::OffsetDateTime::now_utc().unix_timestamp() as u32;
        let rand: u64 = rand::rng().random();
        Self(format!("{secs:08x}{rand:016x}"))
    }

    /// Accepts exactly 24 hex digits (any case); stored lowercase.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ObjectId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_24_hex_and_distinct() {
        let a = ObjectId::new();
        assert_eq!(a.as_str().len(), 24);
        assert!(ObjectId::parse(a.as_str()).is_some());
        assert_ne!(a, ObjectId::new());
    }

    #[test]
    fn parse_rejects_wrong_length_and_non_hex() {
        assert!(ObjectId::parse("5be414ccde8b69542b70f4d7").is_some());
        assert!(
            ObjectId::parse("5BE414CCDE8B69542B70F4D7")
                .unwrap()
                .as_str()
                .starts_with("5be")
        );
        assert!(ObjectId::parse("5be414ccde8b69542b70f4d").is_none());
        assert!(ObjectId::parse("5be414ccde8b69542b70f4dz").is_none());
    }
}
