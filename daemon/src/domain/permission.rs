use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
};

use regex::Regex;

/// One permission string, validated against the protocols of core4 plus `event://`:
///
/// | form | grants |
/// |---|---|
/// | `cop` | everything |
/// | `api://<regex>` / `api://<regex>/<crud letters>` | endpoints whose core4 qual_name the regex prefix-matches |
/// | `job://<regex>/<r or x>` | job access (kept for compatibility) |
/// | `app://<key>` | application keys |
/// | `mongodb://<db>` | database access (kept for compatibility) |
/// | `event://<channel glob>/<r, w or rw>` | reading and/or writing event channels (`*` matches any run) |
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Permission(String);

impl Permission {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let p = raw.trim();
        let invalid = || format!("invalid permission protocol [{}]", crate::error::quote(p));
        if p == "cop" {
            return Ok(Self(p.into()));
        }
        if p.chars().any(|c| c.is_whitespace() || c.is_control()) || p.len() > 256 {
            return Err(invalid());
        }
        let (proto, rest) = p.split_once("://").ok_or_else(invalid)?;
        if rest.is_empty() {
            return Err(invalid());
        }
        match proto {
            "api" => {
                // core4 allowed no `/` in the qual_name pattern: `…/x` or `…/rxc` is a typo, not
                // a pattern that silently never matches.
                let (pattern, _) = split_access(rest, "crud");
                if pattern.contains('/') {
                    return Err(invalid());
                }
                compile_prefix(pattern).map_err(|_| invalid())?;
            }
            "job" => {
                let (pattern, acc) = rest.rsplit_once('/').ok_or_else(invalid)?;
                if !(acc == "r" || acc == "x") || pattern.is_empty() {
                    return Err(invalid());
                }
                compile_prefix(pattern).map_err(|_| invalid())?;
            }
            "app" | "mongodb" => {}
            "event" => {
                let (pattern, acc) = rest.rsplit_once('/').ok_or_else(invalid)?;
                if pattern.is_empty()
                    || !matches!(acc, "r" | "w" | "rw" | "wr")
                    || pattern.matches('*').count() > 8
                {
                    return Err(invalid());
                }
            }
            _ => return Err(invalid()),
        }
        Ok(Self(p.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `pattern/letters` when the part after the last `/` consists of `allowed` letters.
fn split_access<'a>(rest: &'a str, allowed: &str) -> (&'a str, Option<&'a str>) {
    match rest.rsplit_once('/') {
        Some((pattern, acc)) if acc.chars().all(|c| allowed.contains(c)) && !pattern.is_empty() => {
            (pattern, Some(acc))
        }
        _ => (rest, None),
    }
}

/// core4 matched with Python's `re.match`: anchored at the start only.
fn compile_prefix(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(1 << 20)
        .build()
}

pub(crate) use core4_proto::perms::glob_match;

/// Compiled `api://` patterns shared by all requests, so the hot path never compiles a regex.
#[derive(Clone, Default)]
pub struct RegexCache(Arc<RwLock<HashMap<String, Option<Arc<Regex>>>>>);

impl RegexCache {
    fn get(&self, pattern: &str) -> Option<Arc<Regex>> {
        if let Some(hit) = self.0.read().ok().and_then(|m| m.get(pattern).cloned()) {
            return hit;
        }
        let compiled = compile_prefix(pattern).ok().map(Arc::new);
        if let Ok(mut map) = self.0.write() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(pattern.to_string(), compiled.clone());
        }
        compiled
    }
}

/// HTTP method classes of core4's `api://…/<crud>` suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Create,
    Read,
    Update,
    Delete,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
        }
    }
}

/// The cascaded permissions of one principal, ready to answer checks.
#[derive(Clone, Debug, Default)]
pub struct PermissionSet {
    perms: Vec<String>,
    admin: bool,
}

impl PermissionSet {
    pub fn new(perms: Vec<String>) -> Self {
        let admin = perms.iter().any(|p| p == "cop");
        Self { perms, admin }
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    pub fn all(&self) -> &[String] {
        &self.perms
    }

    /// May the holder use the endpoint with core4 qual_name `qual_name` in mode `access`?
    pub fn api(&self, cache: &RegexCache, qual_name: &str, access: Access) -> bool {
        self.admin
            || self
                .perms
                .iter()
                .filter_map(|p| p.strip_prefix("api://"))
                .any(|rest| {
                    let (pattern, acc) = split_access(rest, "crud");
                    acc.is_none_or(|a| a.contains(access.letter()))
                        && cache.get(pattern).is_some_and(|re| re.is_match(qual_name))
                })
    }

    /// May the holder read (`write == false`) or write the channel?
    pub fn event(&self, channel: &str, write: bool) -> bool {
        self.admin || core4_proto::perms::channel_allowed(&self.perms, channel, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core4_protocols_validate_as_the_original_tests_expect() {
        for bad in [
            "bla",
            "app:hello",
            "app:/hello",
            "api:/bla",
            "api://",
            "job://x/z",
            "event://message/x",
            "event:///r",
            "api://(/r",
            "api://core4.api.v1.request.role/x",
            "api://core4.api.v1.request.role/rxc",
        ] {
            let err = Permission::parse(bad).unwrap_err();
            assert!(
                err.starts_with("invalid permission protocol ["),
                "{bad}: {err}"
            );
        }
        for good in [
            "cop",
            "app://hello",
            "api://bla",
            "api://core4.api.v1.request.role/rcd",
            "job://core4.*/x",
            "mongodb://db",
            "event://message/rw",
            "event://*/r",
        ] {
            assert!(Permission::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn api_permissions_prefix_match_and_respect_method_letters() {
        let cache = RegexCache::default();
        let set = PermissionSet::new(vec!["api://core4.api.v1.request.role/r".into()]);
        let role = "core4.api.v1.request.role.main.RoleHandler";
        assert!(set.api(&cache, role, Access::Read));
        assert!(!set.api(&cache, role, Access::Create));
        assert!(!set.api(
            &cache,
            "core4.api.v1.request.standard.profile.ProfileHandler",
            Access::Read
        ));
        let all = PermissionSet::new(vec!["api://core4.api.v1".into()]);
        assert!(all.api(&cache, role, Access::Delete));
        let empty_acc = PermissionSet::new(vec!["api://core4.api.v1/".into()]);
        assert!(!empty_acc.api(&cache, role, Access::Read));
        assert!(PermissionSet::new(vec!["cop".into()]).api(&cache, role, Access::Delete));
    }

    #[test]
    fn globs_match_like_shell_wildcards_without_backtracking_blowup() {
        assert!(glob_match("*", "") && glob_match("a*", "abc") && glob_match("*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc") && !glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("team-*-ops", "team-x-ops") && !glob_match("team-*-ops", "team-x-opsy"));
        // A naive recursive matcher would not finish these in a lifetime.
        assert!(!glob_match(
            "*a*a*a*a*a*a*a*a",
            &format!("{}b", "a".repeat(63))
        ));
        assert!(!glob_match("*a*a*a*a*a*a*a*ab", &"a".repeat(10_000)));
        assert!(glob_match(
            "*a*a*a*a*a*a*a*ab",
            &format!("{}b", "a".repeat(10_000))
        ));
        assert!(
            Permission::parse("event://*a*a*a*a*a*a*a*a*a/r").is_err(),
            "more than 8 stars"
        );
    }

    #[test]
    fn event_permissions_glob_channels_and_split_read_from_write() {
        let set = PermissionSet::new(vec![
            "event://message/rw".into(),
            "event://system/r".into(),
            "event://team-*/w".into(),
        ]);
        assert!(set.event("message", true) && set.event("message", false));
        assert!(set.event("system", false) && !set.event("system", true));
        assert!(set.event("team-a", true) && !set.event("team-a", false));
        assert!(!set.event("queue", false));
    }
}
