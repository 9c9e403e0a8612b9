//! Hiding the credentials of Redis URLs before they reach a log line, a `Debug` dump or an error
//! message: a Redis password must never be logged.
//!
//! TODO(merge): herald-redis gets its own `redact(url)`; once it lands, use that one here and keep
//! [`scrub`] (error texts produced by other crates) on top of it.

/// Query parameters that carry a password (`redis+unix:///sock?pass=...`).
const SECRET_PARAMS: [&str; 2] = ["pass", "password"];

const MASK: &str = "***";

/// `url` (or a comma-separated list of URLs, as for a Redis Cluster) with every password replaced by
/// `***`: `redis://user:secret@host` becomes `redis://user:***@host`; a lone userinfo
/// (`redis://secret@host`) is masked whole, as some clients read it as a password.
pub(crate) fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

/// `text` with every occurrence of `url`'s credentials masked: for error messages written by other
/// crates that may quote the URL.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact(url));
    for part in url.split(',') {
        out = out.replace(part.trim(), &redact_one(part.trim()));
    }
    for secret in url.split(',').flat_map(secrets) {
        out = out.replace(&secret, MASK);
    }
    out
}

fn redact_one(url: &str) -> String {
    let (authority_start, rest) = match url.find("://") {
        Some(i) => (i + 3, &url[i + 3..]),
        None => (0, url),
    };
    let authority_end = authority_start + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    let authority = &url[authority_start..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            match authority[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(MASK),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &url[authority_end..];
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => format!("{k}={MASK}"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(tail),
    }
    out
}

/// The secret strings of one URL: the password (or lone userinfo) and secret query values.
fn secrets(url: &str) -> Vec<String> {
    let url = url.trim();
    let rest = url.find("://").map_or(url, |i| &url[i + 3..]);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let mut out = Vec::new();
    if let Some(at) = authority.rfind('@') {
        let userinfo = &authority[..at];
        out.push(userinfo.split_once(':').map_or(userinfo, |(_, pass)| pass).to_string());
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
            if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                out.push(v.to_string());
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_every_url_form() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://alice:hunter2@host", "redis://alice:***@host"),
            ("rediss://alice:p@ss:w0rd@host:6380", "rediss://alice:***@host:6380"),
            ("redis://hunter2@host", "redis://***@host"),
            ("redis+unix:///tmp/r.sock?db=1&pass=hunter2", "redis+unix:///tmp/r.sock?db=1&pass=***"),
            ("unix:///tmp/r.sock?PASSWORD=hunter2#x", "unix:///tmp/r.sock?PASSWORD=***#x"),
            ("redis://:a@n1:7000,redis://:b@n2:7001", "redis://:***@n1:7000,redis://:***@n2:7001"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn scrub_masks_quoted_urls_and_bare_secrets() {
        let url = "redis://alice:hunter2@host:6379";
        let text = format!("cannot reach redis at {url}: auth failed for \"{url}\" (password hunter2)");
        let out = scrub(&text, url);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("redis://alice:***@host:6379"), "{out}");
        assert_eq!(scrub("no url here", "redis://h"), "no url here");
    }
}
