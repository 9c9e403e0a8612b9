//! Patterns over a bus message's origin (a stream, subject or channel name): literal text, `*` for any
//! run of characters, and `{name}` for a run that is captured under `name` (so a rule on
//! `user.{user_id}.sync` can target that user). Matching backtracks over a name of bounded length, so
//! a hostile name costs at most a few thousand steps.

use crate::config::IngestConfigError;

/// Longest origin name matched; longer names match no pattern.
pub const MAX_ORIGIN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Any,
    Capture(String),
}

/// A compiled origin pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
}

/// A valid variable name: letters, digits, `_` (not first a digit).
pub(crate) fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Pattern {
    /// Compiles `text`; `{` must open a `{name}` and two wildcards may not touch (`**`, `*{a}`).
    pub fn parse(text: &str) -> Result<Pattern, IngestConfigError> {
        let bad = |why: &str| IngestConfigError::Invalid(format!("pattern {text:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (part, used) = if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or_else(|| bad("unclosed {"))?;
                let name = &after[..end];
                if !is_name(name) {
                    return Err(bad("a capture is {name} with letters, digits or _"));
                }
                (Part::Capture(name.to_owned()), end + 2)
            } else if rest.starts_with('*') {
                (Part::Any, 1)
            } else if rest.starts_with('}') {
                return Err(bad("unopened }"));
            } else {
                let end = rest.find(['{', '}', '*']).unwrap_or(rest.len());
                (Part::Literal(rest[..end].to_owned()), end)
            };
            let wild = |p: &Part| !matches!(p, Part::Literal(_));
            if wild(&part) && parts.last().is_some_and(wild) {
                return Err(bad("two wildcards in a row can't be told apart"));
            }
            parts.push(part);
            rest = &rest[used..];
        }
        Ok(Pattern { parts })
    }

    /// The pattern that matches every origin.
    pub fn any() -> Pattern {
        Pattern { parts: vec![Part::Any] }
    }

    /// Names this pattern captures.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Matches `origin` whole; on a match, the captured `(name, value)` pairs. Wildcards match at least
    /// one character.
    pub fn matches<'o>(&self, origin: &'o str) -> Option<Vec<(&str, &'o str)>> {
        if origin.len() > MAX_ORIGIN {
            return None;
        }
        let mut captured = Vec::new();
        // States (part, offset) known not to match: each is tried once, so matching is at most
        // parts × len² steps whatever the pattern.
        let mut failed = vec![false; (self.parts.len() + 1) * (origin.len() + 1)];
        Matcher { origin, failed: &mut failed }.from(&self.parts, 0, 0, &mut captured).then_some(captured)
    }
}

struct Matcher<'o, 'f> {
    origin: &'o str,
    failed: &'f mut [bool],
}

impl<'o> Matcher<'o, '_> {
    fn from<'p>(&mut self, parts: &'p [Part], index: usize, at: usize, captured: &mut Vec<(&'p str, &'o str)>) -> bool {
        let state = index * (self.origin.len() + 1) + at;
        if self.failed[state] {
            return false;
        }
        let origin: &'o str = self.origin;
        let rest = &origin[at..];
        let matched = match parts.get(index) {
            None => rest.is_empty(),
            Some(Part::Literal(lit)) => rest.starts_with(lit.as_str()) && self.from(parts, index + 1, at + lit.len(), captured),
            Some(part) => {
                // Shortest first: `{a}-{b}` on `x-y-z` captures `x` and `y-z`.
                let ends = rest.char_indices().skip(1).map(|(i, _)| i).chain((!rest.is_empty()).then_some(rest.len()));
                let mut found = false;
                for end in ends {
                    let mark = captured.len();
                    if let Part::Capture(name) = part {
                        captured.push((name.as_str(), &origin[at..at + end]));
                    }
                    if self.from(parts, index + 1, at + end, captured) {
                        found = true;
                        break;
                    }
                    captured.truncate(mark);
                }
                found
            }
        };
        if !matched {
            self.failed[state] = true;
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m<'o>(p: &str, o: &'o str) -> Option<Vec<(String, &'o str)>> {
        Pattern::parse(p).unwrap().matches(o).map(|c| c.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
    }

    #[test]
    fn literals_wildcards_and_captures() {
        assert_eq!(m("sync", "sync"), Some(vec![]));
        assert_eq!(m("sync", "sync2"), None);
        assert_eq!(m("user.*", "user.u1.sync"), Some(vec![]));
        assert_eq!(m("user.*", "user."), None, "a wildcard matches at least one character");
        assert_eq!(m("user.{user_id}.sync", "user.u1.sync"), Some(vec![("user_id".into(), "u1")]));
        assert_eq!(m("user.{user_id}.sync", "user.u1.devices"), None);
        assert_eq!(m("{a}-{b}", "x-y-z"), Some(vec![("a".into(), "x"), ("b".into(), "y-z")]));
        assert_eq!(m("*", "é"), Some(vec![]));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["{", "a{b", "{}", "{1a}", "a}", "**", "*{a}", "{a}{b}", "{a-b}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_origins_match_nothing_and_backtracking_is_bounded() {
        let p = Pattern::parse("*a*a*a*b").unwrap();
        assert!(p.matches(&"a".repeat(MAX_ORIGIN)).is_none());
        assert!(p.matches(&"a".repeat(MAX_ORIGIN + 1)).is_none());
    }
}
