//! One module per command group; each has a clap `Subcommand` enum and a `run(&Context)`.
//! The prompts they share live in `prompt`, the `--page` parser here.

pub mod event;
pub mod login;
pub mod prompt;
pub mod roles;

/// `--page`: counted from 1, said plainly (clap's range check names u64::MAX).
pub fn page_number(raw: &str) -> Result<u64, String> {
    match raw.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 (the first page is 1)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("must be a whole number, at least 1".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_count_from_one() {
        assert_eq!(super::page_number("3"), Ok(3));
        assert!(super::page_number("0").unwrap_err().contains("at least 1"));
        assert!(super::page_number("-1").unwrap_err().contains("at least 1"));
        assert!(super::page_number("x").is_err());
    }
}
