//! Keeping keys out of text the product stores or prints.

/// Text with every API key in it — `sk-…`, masked (`sk-admin-****wxyz`) or whole — replaced by
/// `[redacted key]`.
///
/// The API echoes a masked form of a refused key in its error message; even that is never
/// written to a table, a log or a metric. A key counts wherever it starts a word, including
/// right after an escape (`%22sk-…` in a URL, `\nsk-…` or `\u0022sk-…` in JSON), and runs over
/// URL escapes (`sk-admin-%2A%2A…`).
pub fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut before = String::new();
    while let Some(at) = rest.find("sk-") {
        before.push_str(&rest[..at]);
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = key_length(tail);
        if starts_a_word(&before) {
            out.push_str("[redacted key]");
        } else {
            out.push_str(&tail[..end]);
        }
        before.push_str(&tail[..end]);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// How many bytes of `tail` (which starts with `sk-`) the key takes: letters, digits, `-`,
/// `_`, `*` and URL escapes.
fn key_length(tail: &str) -> usize {
    let bytes = tail.as_bytes();
    let mut end = 0;
    while end < bytes.len() {
        let b = bytes[end];
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*') {
            end += 1;
        } else if b == b'%' && is_hex_pair(bytes.get(end + 1..end + 3)) {
            end += 3;
        } else {
            break;
        }
    }
    end
}

fn is_hex_pair(pair: Option<&[u8]>) -> bool {
    pair.is_some_and(|p| p.len() == 2 && p.iter().all(u8::is_ascii_hexdigit))
}

/// Whether a key right after `before` starts a word: nothing word-like precedes it, or an
/// escape (`%XX`, `\n`, `\uXXXX`) ends right before it.
fn starts_a_word(before: &str) -> bool {
    let bytes = before.as_bytes();
    let Some(&last) = bytes.last() else {
        return true;
    };
    if !(last.is_ascii_alphanumeric() || matches!(last, b'_' | b'-')) {
        return true;
    }
    let ends_with = |n: usize, check: &dyn Fn(&[u8]) -> bool| {
        bytes
            .len()
            .checked_sub(n)
            .is_some_and(|from| check(&bytes[from..]))
    };
    ends_with(3, &|b| b[0] == b'%' && is_hex_pair(Some(&b[1..])))
        || ends_with(2, &|b| b[0] == b'\\' && b[1].is_ascii_alphabetic())
        || ends_with(6, &|b| {
            b[0] == b'\\' && b[1] == b'u' && b[2..].iter().all(u8::is_ascii_hexdigit)
        })
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

    #[test]
    fn keys_right_after_an_escape_are_redacted_too() {
        assert_eq!(
            redact_keys("GET /x?key=%22sk-proj-abcd1234%22&b=1"),
            "GET /x?key=%22[redacted key]&b=1",
            "an escape after a key may be part of it: it goes too"
        );
        assert_eq!(
            redact_keys("Authorization: Bearer%20sk-admin-%2A%2A%2A%2Awxyz&x=1"),
            "Authorization: Bearer%20[redacted key]&x=1"
        );
        assert_eq!(
            redact_keys(r#"{"message":"line\nsk-proj-abcd1234","k":"\u0022sk-admin-9"}"#),
            r#"{"message":"line\n[redacted key]","k":"\u0022[redacted key]"}"#
        );
        assert_eq!(redact_keys("risk-assessment"), "risk-assessment");
    }
}
