//! Query-parameter parsing, one rule for every route:
//!
//! - a value that cannot be read as the parameter's type (`page=+1`, `page=x`, `follow=maybe`,
//!   bad percent-encoding) is a 400 `{"error": "…"}`;
//! - a value that reads but is unknown or out of range (`per_page=1000`, `page=0`, a
//!   `current_name` that is not the app's) is a 422 `{"errors": {"<param>": ["…"]}}`, which the
//!   route itself raises with [`ApiError::field`] after parsing;
//! - parameters a route does not know are ignored (clients send their own extras); when one is
//!   repeated, the last one counts.
//!
//! Numbers are plain ASCII digits: no sign, no spaces, no `0x`, at most `u64`. Values are
//! `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte) and must be UTF-8.
//! This module only parses; what a value means is the route's business.

use super::ApiError;

/// The decoded `(name, value)` pairs of a query string, in order.
pub(crate) fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).ok_or_else(|| bad_encoding(name))?;
            let value = decode(value)
                .ok_or_else(|| ApiError::BadRequest(format!("{name}: {}", bad_text(value))))?;
            Ok((name, value))
        })
        .collect()
}

/// The last value given for `name`, if any.
pub(crate) fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A non-negative integer: ASCII digits only (`+1`, ` 1`, `1.0`, `-1` are a 400).
pub(crate) fn unsigned(name: &str, value: &str) -> Result<u64, ApiError> {
    let parsed = value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u64>().ok())
        .flatten();
    parsed.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name} must be a whole number (digits only), got {value:?}"
        ))
    })
}

/// A boolean: `true`/`1`/empty (the bare parameter) or `false`/`0`; anything else is a 400.
pub(crate) fn boolean(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be true or false, got {value:?}"
        ))),
    }
}

fn bad_encoding(raw: &str) -> ApiError {
    ApiError::BadRequest(bad_text(raw))
}

fn bad_text(raw: &str) -> String {
    format!("query parameter {raw:?} is not valid percent-encoded UTF-8")
}

/// Form-urlencoded decoding; `None` on a broken `%XX` or bytes that are not UTF-8.
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(unsigned("page", "12").ok(), Some(12));
        for bad in [
            "+1",
            " 1",
            "-1",
            "1.0",
            "0x1",
            "",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(unsigned("page", bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn values_are_form_decoded_and_the_last_repeat_counts() {
        let pairs = pairs(Some("a=x%20y&b=1+2&a=z&flag")).expect("pairs");
        assert_eq!(last(&pairs, "a"), Some("z"));
        assert_eq!(last(&pairs, "b"), Some("1 2"));
        assert_eq!(last(&pairs, "flag"), Some(""));
        assert_eq!(last(&pairs, "none"), None);
        // `page=+1` decodes to " 1", which is not a number either.
        let plus = super::pairs(Some("page=+1")).expect("pairs");
        assert!(unsigned("page", last(&plus, "page").expect("page")).is_err());
        assert!(super::pairs(Some("a=%zz")).is_err());
        assert!(super::pairs(Some("a=%ff")).is_err(), "not UTF-8");
    }

    #[test]
    fn booleans_are_true_false_1_0_or_bare() {
        assert!(boolean("follow", "").expect("bare"));
        assert!(!boolean("follow", "0").expect("0"));
        assert!(boolean("follow", "yes").is_err());
    }
}
