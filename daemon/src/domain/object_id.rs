use std::{
    fmt,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use rand::Rng;

/// A 24-hex-digit id laid out as Mongo's ObjectIds: 4 bytes of creation time, 5 random bytes
/// per process and a 3-byte counter, so ids of one process grow with creation and sorting by
/// `_id` (the listing default) means "newest last", as in core4.
/// Used for role ids, etags and request ids.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ObjectId(String);

impl ObjectId {
    pub fn new() -> Self {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
        let process = *PROCESS.get_or_init(|| rand::rng().random::<u64>() & 0xff_ffff_ffff);
        // Starting below 2^23 leaves 8M ids before the counter wraps.
        let counter =
            COUNTER.get_or_init(|| AtomicU32::new(rand::rng().random::<u32>() & 0x7f_ffff));
        let n = counter.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
        let secs = time::OffsetDateTime::now_utc().unix_timestamp() as u32;
        Self(format!("{secs:08x}{process:010x}{n:06x}"))
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
    fn new_ids_grow_with_creation() {
        let ids: Vec<ObjectId> = (0..1000).map(|_| ObjectId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
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
