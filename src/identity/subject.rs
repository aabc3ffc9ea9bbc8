//! What a consumer's `sub` may be, for every token brandgate mints or accepts (logins,
//! backends, anonymous sign-ups, external issuers): 1 to [`MAX_SUBJECT`] bytes of printable
//! text. A subject becomes a consumer id that is stored, logged, shown to agents and put in
//! webhooks, so a line break (a forged log line), a terminal escape or a bidirectional override
//! (text shown reversed) has no place in it.
//!
//! Refused: Unicode control characters (C0, DEL, C1 such as NEL), the line and paragraph
//! separators U+2028/U+2029, and the bidirectional embedding, override and isolate controls
//! (U+202A..U+202E, U+2066..U+2069).

/// Longest subject, in bytes (the platform's limit for a consumer id).
pub const MAX_SUBJECT: usize = 255;

/// Why a subject is refused (never the subject itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the subject is empty")]
    Empty,
    #[error("the subject is longer than 255 bytes")]
    TooLong,
    #[error("the subject holds a control, line-separator or bidirectional-override character")]
    NotPrintable,
}

/// Whether `subject` may name a consumer.
pub fn check(subject: &str) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > MAX_SUBJECT {
        return Err(SubjectError::TooLong);
    }
    if !is_printable(subject) {
        return Err(SubjectError::NotPrintable);
    }
    Ok(())
}

/// No control, line-separator or bidirectional-control character in `text`.
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_subjects_of_up_to_255_bytes_pass() {
        assert_eq!(check("alice@example.test"), Ok(()));
        assert_eq!(check("shop:Zoë 42"), Ok(()));
        assert_eq!(check(&"a".repeat(255)), Ok(()));
        // 255 bytes, fewer characters.
        assert_eq!(check(&"é".repeat(127)), Ok(()));
    }

    #[test]
    fn empty_long_and_unprintable_subjects_are_refused() {
        assert_eq!(check(""), Err(SubjectError::Empty));
        assert_eq!(check(&"a".repeat(256)), Err(SubjectError::TooLong));
        assert_eq!(check(&"é".repeat(128)), Err(SubjectError::TooLong));
        for bad in [
            "evil\nINFO forged",
            "a\r\nb",
            "bell\u{7}",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "nel\u{85}",
            "tab\t",
            "nul\0",
            "line\u{2028}sep",
            "para\u{2029}sep",
            "rtl\u{202E}txt.exe",
            "isolate\u{2067}",
        ] {
            assert_eq!(check(bad), Err(SubjectError::NotPrintable), "{bad:?}");
        }
    }
}
