use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_security::{
    GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection, skeleton,
};

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A user or role name, safe to show to people: NFKC-normalised and trimmed, 1 to 64 characters,
/// no whitespace, control, invisible or default-ignorable characters, letters from one script
/// (Latin may mix with Han, Hiragana, Katakana or Hangul, as Unicode TR39's "highly restrictive"
/// level allows), and not shaped like a 24-hex id (ids and names must never be mistaken for each
/// other). Names are unique case-insensitively ([`RoleName::key`]) and by their confusable
/// skeleton ([`RoleName::skeleton`]): `аdmin` (Cyrillic a) and `adrnin` are the same name as
/// `admin`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name: String = raw.nfkc().collect::<String>().trim().to_string();
        if name.is_empty() {
            return Err("field [name] is mandatory".into());
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(format!(
                "field [name] must be at most {MAX_NAME_CHARS} characters"
            ));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("field [name] must match [^\\S+$]: no whitespace".into());
        }
        // ASCII keeps core4's rule (any visible character); beyond ASCII only what TR39's General
        // Security Profile allows in identifiers, which leaves out invisible, default-ignorable,
        // bidi-control and other deceptive code points.
        if let Some(c) = name
            .chars()
            .find(|c| !c.is_ascii() && !c.identifier_allowed())
        {
            return Err(format!(
                "field [name] must not contain the character U+{:04X}",
                c as u32
            ));
        }
        let letters: String = name.chars().filter(|c| !c.is_ascii_punctuation()).collect();
        if !letters
            .as_str()
            .check_restriction_level(RestrictionLevel::HighlyRestrictive)
        {
            return Err("field [name] must not mix scripts (e.g. Latin with Cyrillic)".into());
        }
        if looks_like_id(&name) {
            return Err(
                "field [name] must not be 24 hex digits: such references are read as ids".into(),
            );
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalised name used for uniqueness and lookups.
    pub fn key(&self) -> String {
        Self::key_of(&self.0)
    }

    /// The lookup key of any typed name (a login, a filter): NFKC, trimmed, lowercased.
    pub fn key_of(raw: &str) -> String {
        raw.nfkc().collect::<String>().trim().to_lowercase()
    }

    /// The TR39 confusable skeleton of the case-folded name: two names with the same skeleton
    /// look alike and cannot both exist.
    pub fn skeleton(&self) -> String {
        Self::skeleton_of(&self.0)
    }

    /// [`RoleName::skeleton`] of a stored name (older rows may predate today's rules).
    pub fn skeleton_of(raw: &str) -> String {
        skeleton(&Self::key_of(raw)).collect()
    }
}

/// True for 24 hex digits, the shape of every id: a role reference of this shape names an id.
pub fn looks_like_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
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

    #[test]
    fn fullwidth_and_compatibility_forms_normalise_to_ascii() {
        let n = RoleName::parse("ａｄｍｉｎ").unwrap();
        assert_eq!(n.as_str(), "admin");
        assert_eq!(n.key(), "admin");
        assert_eq!(RoleName::key_of("ＡＤＭＩＮ"), "admin");
    }

    #[test]
    fn invisible_and_default_ignorable_characters_are_refused() {
        for raw in [
            "admin\u{ad}",
            "ad\u{200b}min",
            "ad\u{200d}min",
            "admin\u{2060}",
            "\u{202e}nimda",
            "adm\u{fe0f}in",
            "admin\u{e0061}",
        ] {
            let err = RoleName::parse(raw).unwrap_err();
            assert!(err.contains("character U+"), "{raw:?}: {err}");
        }
    }

    #[test]
    fn mixed_scripts_are_refused_and_single_scripts_kept() {
        let err = RoleName::parse("\u{430}dmin").unwrap_err(); // Cyrillic a + Latin
        assert!(err.contains("mix scripts"), "{err}");
        assert!(RoleName::parse("админ").is_ok());
        assert!(RoleName::parse("Müller-Lüdenscheidt").is_ok());
        assert!(
            RoleName::parse("田中_tanaka").is_ok(),
            "Latin with Han is allowed"
        );
        assert!(RoleName::parse("user.name@example+1").is_ok());
    }

    #[test]
    fn look_alikes_share_a_skeleton() {
        let admin = RoleName::parse("admin").unwrap().skeleton();
        assert_eq!(RoleName::parse("ADMIN").unwrap().skeleton(), admin);
        assert_eq!(RoleName::parse("adrnin").unwrap().skeleton(), admin);
        // All-Cyrillic 'аdmіn' cannot be spelled; a whole-script look-alike can, and collides.
        let latin = RoleName::parse("cop").unwrap().skeleton();
        assert_eq!(RoleName::parse("сор").unwrap().skeleton(), latin);
        assert_ne!(RoleName::parse("alice").unwrap().skeleton(), admin);
    }

    #[test]
    fn names_shaped_like_ids_are_refused() {
        let err = RoleName::parse("0123456789abcdef01234567").unwrap_err();
        assert!(err.contains("24 hex digits"), "{err}");
        assert!(RoleName::parse("0123456789abcdef0123456").is_ok());
        assert!(looks_like_id("0123456789ABCDEF01234567"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// Whatever a client sends, an accepted name is already in its final form, shows no
            /// hidden characters and can never be read as an id.
            #[test]
            fn accepted_names_are_normal_visible_and_never_ids(raw in "\\PC{0,70}|[0-9a-fA-F]{24}|[a-z\u{430}-\u{44f}\u{ad}\u{200b}-\u{200f}\u{ff41}-\u{ff5a}]{1,12}") {
                if let Ok(name) = RoleName::parse(&raw) {
                    let again = RoleName::parse(name.as_str()).expect("an accepted name parses again");
                    prop_assert_eq!(again.as_str(), name.as_str());
                    prop_assert_eq!(RoleName::key_of(&raw), name.key());
                    prop_assert!(!looks_like_id(name.as_str()));
                    prop_assert!(name.as_str().chars().count() <= MAX_NAME_CHARS);
                    prop_assert!(name.as_str().chars().all(|c| !c.is_whitespace() && !c.is_control()));
                    prop_assert!(name.as_str().chars().all(|c| c.is_ascii() || c.identifier_allowed()));
                }
            }

            /// Case never makes two names different: the key and the skeleton ignore it.
            #[test]
            fn case_variants_share_key_and_skeleton(raw in "[g-zG-Z][a-zA-Z0-9_.-]{0,40}") {
                let lower = RoleName::parse(&raw.to_lowercase()).unwrap();
                let upper = RoleName::parse(&raw.to_uppercase()).unwrap();
                prop_assert_eq!(lower.key(), upper.key());
                prop_assert_eq!(lower.skeleton(), upper.skeleton());
            }
        }
    }
}
