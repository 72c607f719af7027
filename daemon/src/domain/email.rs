use std::fmt;

/// An email address, trimmed and lowercased on every write.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim().to_lowercase();
        let err = || {
            format!(
                "field [email] must match a valid address, got [{}]",
                crate::error::quote(raw.trim())
            )
        };
        if email.len() > 254 {
            return Err(err());
        }
        let (local, domain) = email.rsplit_once('@').ok_or_else(err)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic));
        if local_ok && domain_ok {
            Ok(Self(email))
        } else {
            Err(err())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_normalised() {
        assert_eq!(
            Email::parse(" Test1@Plan-Net.com ").unwrap().as_str(),
            "test1@plan-net.com"
        );
        assert!(Email::parse("first.last+tag@example.museum").is_ok());
    }

    #[test]
    fn invalid_addresses_are_rejected_with_the_field_named() {
        for bad in [
            "m.rau-plan-net.com",
            "a@b",
            "@x.com",
            "a@x..com",
            "a b@x.com",
            "a@-x.com",
            "a@x.c0m",
            "",
        ] {
            assert!(
                Email::parse(bad).unwrap_err().contains("field [email]"),
                "{bad}"
            );
        }
    }
}
