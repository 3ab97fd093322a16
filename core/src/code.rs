//! Short-code rules: which request paths can name a link.
//!
//! A code is 1..=64 bytes of `[A-Za-z0-9_-]`. The check runs on every request
//! before any tier is touched, so it is a byte loop over a lookup table: no
//! allocation, no regex, no UTF-8 decoding.

/// Longest code accepted, in bytes.
pub const MAX_CODE_LEN: usize = 64;

const fn build_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    table
}

static CODE_BYTE: [bool; 256] = build_table();

/// True when `code` is a syntactically valid short code.
#[inline]
pub fn is_valid_code(code: &str) -> bool {
    let bytes = code.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_CODE_LEN && bytes.iter().all(|&b| CODE_BYTE[b as usize])
}

/// Words that are paths of the edge itself (`/healthz`, ...) or reserved for
/// it, so no link may take them. Other reserved paths (`/api/...`,
/// `/admin/...`) contain a `/` and can never be codes anyway.
pub const RESERVED_CODES: [&str; 6] = ["healthz", "readyz", "metrics", "api", "admin", "static"];

/// True when `code` names one of the edge's own paths.
pub fn is_reserved(code: &str) -> bool {
    RESERVED_CODES.iter().any(|r| r.eq_ignore_ascii_case(code))
}

/// Why a code was refused; the message is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("code is empty")]
    Empty,
    #[error("code is {0} bytes long; the limit is {MAX_CODE_LEN}")]
    TooLong(usize),
    #[error("code may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter,
    #[error("code {0:?} is reserved")]
    Reserved(String),
}

/// Validates a code and says why it is not one.
pub fn check_code(code: &str) -> Result<(), CodeError> {
    if code.is_empty() {
        Err(CodeError::Empty)
    } else if code.len() > MAX_CODE_LEN {
        Err(CodeError::TooLong(code.len()))
    } else if !is_valid_code(code) {
        Err(CodeError::BadCharacter)
    } else if is_reserved(code) {
        Err(CodeError::Reserved(code.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_code_alphabet() {
        assert!(is_valid_code("a"));
        assert!(is_valid_code("AZaz09_-"));
        assert!(is_valid_code(&"x".repeat(MAX_CODE_LEN)));
    }

    #[test]
    fn rejects_empty_long_and_foreign_bytes() {
        assert_eq!(check_code(""), Err(CodeError::Empty));
        assert_eq!(
            check_code(&"x".repeat(MAX_CODE_LEN + 1)),
            Err(CodeError::TooLong(65))
        );
        for bad in [
            "a/b", "a.b", "a b", "a%20", "é", "a\u{0}", "api/", "a?b", "~x",
        ] {
            assert!(!is_valid_code(bad), "{bad:?} must be refused");
            assert_eq!(check_code(bad), Err(CodeError::BadCharacter));
        }
    }

    #[test]
    fn reserved_words_are_refused_for_links() {
        assert!(is_valid_code("healthz"), "syntactically a code");
        assert_eq!(
            check_code("healthz"),
            Err(CodeError::Reserved("healthz".into()))
        );
        assert_eq!(
            check_code("ReadyZ"),
            Err(CodeError::Reserved("ReadyZ".into()))
        );
        assert_eq!(check_code("healthz2"), Ok(()));
    }

    #[test]
    fn table_matches_the_rule_for_every_byte() {
        for b in 0u8..=255 {
            let expected = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            assert_eq!(CODE_BYTE[b as usize], expected, "byte {b}");
        }
    }
}
