//! JSON text as Postgres can store it.

/// The JSON text with each escape Postgres `jsonb` refuses — `\u0000`, and a UTF-16 surrogate
/// without its pair (JSON allows both) — replaced by `\ufffd`, or `None` when it has none.
///
/// One such project, event or cost result would otherwise fail every pass that reads it. Only real escapes are replaced: an escaped
/// backslash followed by `u0000` is left alone.
pub fn jsonb_safe(raw: &str) -> Option<String> {
    if !raw.contains("\\u") {
        return None;
    }
    let bytes = raw.as_bytes();
    let unit_at = |at: usize| -> Option<u16> {
        let hex = raw.get(at..at + 4)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    };
    let escape_at = |at: usize| -> Option<u16> {
        (bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u'))
            .then(|| unit_at(at + 2))
            .flatten()
    };
    let mut safe = String::with_capacity(raw.len());
    let (mut i, mut copied, mut replaced) = (0, 0, false);
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(i) else {
            // Any other escape is two characters as far as finding the next one goes.
            i += 2;
            continue;
        };
        let refused = match unit {
            0 => true,
            0xD800..=0xDBFF if matches!(escape_at(i + 6), Some(0xDC00..=0xDFFF)) => {
                i += 12;
                continue;
            }
            0xD800..=0xDFFF => true,
            _ => false,
        };
        if refused {
            safe.push_str(&raw[copied..i]);
            safe.push_str("\\ufffd");
            copied = i + 6;
            replaced = true;
        }
        i += 6;
    }
    if !replaced {
        return None;
    }
    safe.push_str(&raw[copied..]);
    Some(safe)
}

#[cfg(test)]
mod tests {
    use super::jsonb_safe;

    #[test]
    fn unpaired_surrogate_escapes_become_replacement_characters_and_pairs_stay() {
        assert_eq!(
            jsonb_safe(r#"{"name":"cut \ud83d","b":"\udc00x","ok":"\ud83d\ude80"}"#).as_deref(),
            Some(r#"{"name":"cut \ufffd","b":"\ufffdx","ok":"\ud83d\ude80"}"#)
        );
        assert_eq!(jsonb_safe(r#"{"ok":"\ud83d\ude80 \u00e9"}"#), None);
        assert_eq!(
            jsonb_safe(r#"{"high then high":"\ud83d\ud83d\ude80"}"#).as_deref(),
            Some(r#"{"high then high":"\ufffd\ud83d\ude80"}"#)
        );
    }

    #[test]
    fn nul_escapes_become_replacement_characters_and_nothing_else_changes() {
        assert_eq!(jsonb_safe(r#"{"name":"plain"}"#), None);
        assert_eq!(
            jsonb_safe(r#"{"name":"a\u0000b\u0000","x":1}"#).as_deref(),
            Some(r#"{"name":"a\ufffdb\ufffd","x":1}"#)
        );
        assert_eq!(
            jsonb_safe(r#"{"name":"a\\u0000b"}"#),
            None,
            "an escaped backslash before u0000 is text, not a NUL"
        );
        assert_eq!(
            jsonb_safe(r#"{"name":"\\\u0000"}"#).as_deref(),
            Some(r#"{"name":"\\\ufffd"}"#)
        );
        let fixed = jsonb_safe(r#"{"k\u0000":"\u00001"}"#).expect("replaced");
        let value: serde_json::Value = serde_json::from_str(&fixed).expect("still JSON");
        assert_eq!(value["k\u{fffd}"], "\u{fffd}1");
    }
}
