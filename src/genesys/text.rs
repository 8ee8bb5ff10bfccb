//! Text that came over the network, made safe to keep: cut on a character boundary (never
//! inside a multi-byte character) and without NUL characters, which Postgres cannot store.

use std::borrow::Cow;

use serde_json::Value;

/// The longest prefix of `text` that is at most `max_bytes` bytes long and ends on a
/// character boundary. Never panics, whatever the text and the limit.
pub fn clip(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` with every NUL character replaced by U+FFFD (Postgres stores no NUL in `text` or
/// `jsonb`; one in an error body would make the statement that records it fail).
pub fn storable(text: &str) -> Cow<'_, str> {
    match text.contains('\0') {
        true => Cow::Owned(text.replace('\0', "\u{FFFD}")),
        false => Cow::Borrowed(text),
    }
}

/// [`storable`] in place, for an owned string.
pub(crate) fn make_storable(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
}

/// `text` as pdq keeps it: [`storable`], then [`clip`]ped to `max_bytes` (in that order: a
/// replaced NUL grows by two bytes).
pub fn kept(text: &str, max_bytes: usize) -> String {
    clip(&storable(text), max_bytes).to_owned()
}

/// A JSON value whose every string (keys too) is [`storable`].
pub fn storable_json(value: &Value) -> Cow<'_, Value> {
    match json_has_nul(value) {
        true => {
            let mut owned = value.clone();
            scrub_json(&mut owned);
            Cow::Owned(owned)
        }
        false => Cow::Borrowed(value),
    }
}

fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || json_has_nul(item)),
        _ => false,
    }
}

/// Replaces NUL characters in every string of `value`, keys included.
pub(crate) fn scrub_json(value: &mut Value) {
    match value {
        Value::String(text) => make_storable(text),
        Value::Array(items) => items.iter_mut().for_each(scrub_json),
        Value::Object(map) if map.keys().any(|k| k.contains('\0')) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                scrub_json(&mut item);
                map.insert(storable(&key).into_owned(), item);
            }
        }
        Value::Object(map) => map.values_mut().for_each(scrub_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cut_inside_a_character_moves_back_to_its_start() {
        let text = format!("{}é", "a".repeat(2_047));
        assert_eq!(text.len(), 2_049);
        assert_eq!(clip(&text, 2_048), "a".repeat(2_047));
        assert_eq!(clip("€", 2), "");
        assert_eq!(clip("€", 3), "€");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn nul_characters_are_replaced_in_text_and_json() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        assert!(matches!(storable("plain"), Cow::Borrowed(_)));
        let value = serde_json::json!({"k\u{0}": ["x\u{0}", {"m": "\u{0}"}], "n": 1});
        let clean = storable_json(&value);
        assert!(!clean.to_string().contains("\\u0000"), "{clean}");
        assert_eq!(clean["k\u{FFFD}"][1]["m"], "\u{FFFD}");
    }

    proptest! {
        #[test]
        fn clip_never_panics_and_keeps_a_valid_prefix(text in any::<String>(), max in 0usize..64) {
            let clipped = clip(&text, max);
            prop_assert!(clipped.len() <= max);
            prop_assert!(text.starts_with(clipped));
            // Nothing longer would have fitted.
            let next = text[clipped.len()..].chars().next();
            prop_assert!(next.is_none_or(|c| clipped.len() + c.len_utf8() > max));
        }
    }
}
