//! JSON bodies for the errors hyper answers by itself, before a request reaches the router: a
//! head that is not HTTP/1.1 (400), a request line longer than hyper's buffer (414), header
//! floods (431), another HTTP version (505). hyper writes those as a bare head with
//! `connection: close` and `content-length: 0` and offers no hook to change them, so the
//! connection's I/O recognises that exact head, written while no request is in flight, and
//! writes the same status with a JSON `{"error"}` body instead (`ApiError`'s shape).
//!
//! This module only rewrites that one shape of head; it never touches a response the router
//! made (those are written while a request is in flight, and carry their own body).

/// The longest head hyper writes for its own errors (status line, `connection`,
/// `content-length`, `date`): anything longer is not one of them.
const MAX_ERROR_HEAD: usize = 256;

/// The response to write instead of `head`, when `head` is one of hyper's own bare error
/// heads; `None` for anything else.
pub(super) fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() > MAX_ERROR_HEAD {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let text = text.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.1 ")?;
    let (code, reason) = rest.split_once(' ')?;
    let code: u16 = code.parse().ok()?;
    if !(400..600).contains(&code) {
        return None;
    }
    let mut close = false;
    let mut empty = false;
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match (name.to_ascii_lowercase().as_str(), value) {
            ("connection", "close") => close = true,
            ("content-length", "0") => empty = true,
            ("date", value) => date = Some(value),
            // Any other header (a content type above all) means someone else made it.
            _ => return None,
        }
    }
    if !(close && empty) {
        return None;
    }
    let body = serde_json::json!({ "error": message(code, reason) }).to_string();
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n",
        body.len()
    );
    if let Some(date) = date {
        out.push_str(&format!("date: {date}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

/// What the JSON error says for each status hyper answers.
fn message(code: u16, reason: &str) -> String {
    match code {
        400 => "the request is not valid HTTP/1.1 (bad request line, header or framing)".into(),
        414 => "the request line is too long".into(),
        431 => "the request headers are too large or too many".into(),
        505 => "only HTTP/1.1 is served".into(),
        _ => reason.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_error_heads_get_a_json_body_and_nothing_else_is_touched() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
            content-length: 0\r\ndate: Tue, 01 Dec 2026 23:08:21 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).expect("rewritten")).expect("utf-8");
        let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ndate: Tue, 01 Dec 2026 23:08:21 GMT"));
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(json["error"]
            .as_str()
            .is_some_and(|e| e.contains("headers")));
        // Our own responses: a body of their own, or a content type, or no close.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            rewrite(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").is_none()
        );
        assert!(
            rewrite(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n")
                .is_none()
        );
    }
}
