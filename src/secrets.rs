//! Keeping keys out of text the product stores or prints.

/// Text with every API key in it — `sk-…`, masked (`sk-admin-****wxyz`) or whole — replaced by
/// `[redacted key]`.
///
/// The API echoes a masked form of a refused key in its error message; even that is never
/// written to a table, a log or a metric.
pub fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sk-") {
        let starts_a_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*')))
            .unwrap_or(tail.len());
        if starts_a_word {
            out.push_str("[redacted key]");
        } else {
            out.push_str(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_keys;

    #[test]
    fn masked_and_whole_keys_are_redacted_and_other_text_kept() {
        assert_eq!(
            redact_keys("Incorrect API key provided: sk-admin-****wxyz. See the docs."),
            "Incorrect API key provided: [redacted key]. See the docs."
        );
        assert_eq!(
            redact_keys("keys sk-proj-abc_DEF-123 and (sk-***)"),
            "keys [redacted key] and ([redacted key])"
        );
        assert_eq!(
            redact_keys("task-sk-5 stays; no key here"),
            "task-sk-5 stays; no key here"
        );
        assert_eq!(redact_keys("ends with sk-"), "ends with [redacted key]");
    }
}
