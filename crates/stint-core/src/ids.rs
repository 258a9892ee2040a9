//! Names and identifiers that come from policy files and requests.
//!
//! Each has a small alphabet and a hard length limit so that it can be put in
//! a URL path, a log line or a metric label without escaping surprises.

use thiserror::Error;

/// The longest workload, workflow or step name.
pub const MAX_NAME_LEN: usize = 64;
/// The longest job id.
pub const MAX_JOB_ID_LEN: usize = 128;
/// The longest audience (`aud`) value.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// Empty.
    #[error("must not be empty")]
    Empty,
    /// Longer than allowed.
    #[error("must be at most {max} characters long")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Contains a character outside the alphabet.
    #[error("{0}")]
    BadCharacter(&'static str),
}

/// Check a workload, workflow or step name: 1 to 64 characters of ASCII
/// letters, digits, `-` and `_`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), IdError> {
    const ALPHABET: &str = "may contain only ASCII letters, digits, '-' and '_', and must start with a letter or digit";
    check_len(name, MAX_NAME_LEN)?;
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(IdError::BadCharacter(ALPHABET));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(IdError::BadCharacter(ALPHABET));
    }
    Ok(())
}

/// Check a job id: 1 to 128 characters of ASCII letters, digits and
/// `. _ - : @`, and not `.` or `..`. No `/`, so a job id is always one URL
/// path segment; and not a dot-segment, which URL normalisation (RFC 3986
/// section 5.2.4, done by every HTTP client) would remove from
/// `/v1/jobs/{job}/revoke`, so that the job could be minted for but never
/// revoked by name.
pub fn validate_job_id(job: &str) -> Result<(), IdError> {
    check_len(job, MAX_JOB_ID_LEN)?;
    if job == "." || job == ".." {
        return Err(IdError::BadCharacter(
            "must not be \".\" or \"..\" (URL normalisation removes them from a path)",
        ));
    }
    if job
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'))
    {
        Ok(())
    } else {
        Err(IdError::BadCharacter(
            "may contain only ASCII letters, digits and '.', '_', '-', ':', '@'",
        ))
    }
}

/// Check an audience: 1 to 256 visible ASCII characters (no spaces, quotes
/// or backslashes), such as a URL or a system name.
pub fn validate_audience(aud: &str) -> Result<(), IdError> {
    check_len(aud, MAX_AUDIENCE_LEN)?;
    if aud
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        Ok(())
    } else {
        Err(IdError::BadCharacter(
            "must be visible ASCII without spaces, quotes or backslashes",
        ))
    }
}

fn check_len(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        Err(IdError::Empty)
    } else if s.len() > max {
        Err(IdError::TooLong { max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("deploy-web_2").is_ok());
        assert_eq!(validate_name(""), Err(IdError::Empty));
        assert!(validate_name("-leading").is_err());
        assert!(validate_name("has space").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        assert_eq!(
            validate_name(&"a".repeat(65)),
            Err(IdError::TooLong { max: 64 })
        );
    }

    #[test]
    fn job_ids() {
        assert!(validate_job_id("gh-12345:1").is_ok());
        assert!(validate_job_id("run@2026.11.23").is_ok());
        assert!(validate_job_id("a/b").is_err());
        assert!(validate_job_id("a b").is_err());
        assert!(validate_job_id("é").is_err());
        assert!(validate_job_id(&"j".repeat(129)).is_err());
        assert!(validate_job_id(".").is_err());
        assert!(validate_job_id("..").is_err());
        assert!(validate_job_id("...").is_ok(), "not a dot-segment");
        assert!(validate_job_id(".hidden").is_ok());
    }

    #[test]
    fn audiences() {
        assert!(validate_audience("https://api.example.com/v1").is_ok());
        assert!(validate_audience("a b").is_err());
        assert!(validate_audience("a\"b").is_err());
        assert!(validate_audience("").is_err());
    }
}
