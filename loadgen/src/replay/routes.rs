//! Route patterns: the rows of a replay's report, one per method and route rather than one per
//! URL (`GET /products/{n}`, not a thousand `GET /products/123` rows).
//!
//! A user's patterns come first (`/users/{id}/orders`: a `{name}` matches one path segment, a
//! trailing `{*}` the rest of the path); a path that none matches is folded segment by segment:
//! a number becomes `{n}`, a UUID `{uuid}`, a long hexadecimal id (16 or more hex digits with a
//! digit in them) `{hex}`. The query never counts. The number of rows is bounded
//! ([`MAX_GROUPS`]): beyond it, requests go to one row per method, `GET (other routes)`.

use std::collections::HashMap;
use std::sync::Arc;

/// The most rows a replay's report has; past it, one `(other routes)` row per method.
pub(crate) const MAX_GROUPS: usize = 200;

/// A route pattern given by the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    segments: Vec<Seg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `{name}`: any one segment.
    Any,
    /// `{*}` or `{*name}` at the end: the rest of the path, even nothing.
    Rest,
}

/// Why a route pattern is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("route pattern `{pattern}`: {why}")]
pub(crate) struct PatternError {
    pattern: String,
    why: &'static str,
}

impl Pattern {
    /// Parses `/users/{id}/orders` or `/static/{*}`.
    pub(crate) fn parse(text: &str) -> Result<Pattern, PatternError> {
        let fail = |why| PatternError { pattern: text.to_owned(), why };
        let Some(rest) = text.strip_prefix('/') else {
            return Err(fail("must start with `/`, e.g. `/users/{id}/orders`"));
        };
        if text.contains(['?', '#']) || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("is a path: no query, fragment, spaces or control characters"));
        }
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if name.starts_with('*') => {
                    if i + 1 != parts.len() {
                        return Err(fail("`{*}` (the rest of the path) may only be the last segment"));
                    }
                    Seg::Rest
                }
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => Seg::Any,
                Some(_) => return Err(fail("`{}` needs a name, e.g. `{id}`")),
                None if part.contains(['{', '}']) => {
                    return Err(fail("a `{name}` must be a whole segment, e.g. `/users/{id}`"));
                }
                None => Seg::Literal((*part).to_owned()),
            };
            segments.push(seg);
        }
        Ok(Pattern { text: text.to_owned(), segments })
    }

    fn matches(&self, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_prefix('/').unwrap_or(path);
        // "/" has no segment at all, as the pattern "/" has none.
        let parts: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        let mut it = parts.iter();
        for seg in &self.segments {
            match seg {
                Seg::Rest => return true,
                Seg::Any => {
                    if it.next().is_none_or(|p| p.is_empty()) {
                        return false;
                    }
                }
                Seg::Literal(l) => {
                    if it.next() != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
        }
        it.next().is_none()
    }
}

/// Names requests by method and route, with a bounded number of names.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    patterns: Vec<Pattern>,
    /// Every name given so far and its index, in order of first appearance.
    index: HashMap<Arc<str>, usize>,
    names: Vec<Arc<str>>,
}

impl Routes {
    /// Names by `patterns` first, then by folding.
    pub(crate) fn new(patterns: Vec<Pattern>) -> Routes {
        Routes { patterns, index: HashMap::new(), names: Vec::new() }
    }

    /// The row for a request: its index in [`names`](Self::names), a new row if needed.
    pub(crate) fn group(&mut self, method: &http::Method, path: &str) -> usize {
        let name = self.name(method, path);
        if let Some(&i) = self.index.get(name.as_str()) {
            return i;
        }
        // Past the bound: one overflow row per method (each method's overflow row is allowed
        // beyond the bound, so the total stays at most MAX_GROUPS + the methods seen).
        let name = if self.names.len() >= MAX_GROUPS { format!("{method} (other routes)") } else { name };
        if let Some(&i) = self.index.get(name.as_str()) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
        self.names.len() - 1
    }

    /// The row [`group`](Self::group) gave this request (it must have been given one): else
    /// the method's overflow row, else the first.
    pub(crate) fn find(&self, method: &http::Method, path: &str) -> usize {
        let name = self.name(method, path);
        let index = self
            .index
            .get(name.as_str())
            .or_else(|| self.index.get(format!("{method} (other routes)").as_str()));
        index.copied().unwrap_or(0)
    }

    fn name(&self, method: &http::Method, path: &str) -> String {
        match self.patterns.iter().find(|p| p.matches(path)) {
            Some(p) => format!("{method} {}", p.text),
            None => format!("{method} {}", fold(path)),
        }
    }

    /// The rows, in order of first appearance.
    pub(crate) fn names(&self) -> &[Arc<str>] {
        &self.names
    }
}

/// `/products/123/images/9f1c…` → `/products/{n}/images/{hex}`; the query is dropped.
pub(crate) fn fold(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(fold_segment(seg));
    }
    out
}

fn fold_segment(seg: &str) -> &str {
    if seg.is_empty() {
        return seg;
    }
    if seg.bytes().all(|b| b.is_ascii_digit()) {
        return "{n}";
    }
    if is_uuid(seg) {
        return "{uuid}";
    }
    if seg.len() >= 16
        && seg.bytes().all(|b| b.is_ascii_hexdigit())
        && seg.bytes().any(|b| b.is_ascii_digit())
    {
        return "{hex}";
    }
    seg
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn folds_numbers_uuids_and_long_hex_ids() {
        assert_eq!(fold("/products/123"), "/products/{n}");
        assert_eq!(fold("/products/123?q=shoes"), "/products/{n}");
        assert_eq!(fold("/u/3f2504e0-4f89-11d3-9a0c-0305e82c3301/cart"), "/u/{uuid}/cart");
        assert_eq!(fold("/img/9f86d081884c7d659a2feaa0c55ad015"), "/img/{hex}");
        // Words stay words: a short hex-looking one, and a long all-letter one.
        assert_eq!(fold("/cafe/deadbeefdeadbeefdead"), "/cafe/deadbeefdeadbeefdead");
        assert_eq!(fold("/v2/items/"), "/v2/items/");
        assert_eq!(fold("/"), "/");
        assert_eq!(fold(""), "/");
    }

    #[test]
    fn user_patterns_come_first() {
        let mut r = Routes::new(vec![
            Pattern::parse("/users/{id}/orders").unwrap(),
            Pattern::parse("/static/{*}").unwrap(),
        ]);
        let get = http::Method::GET;
        let a = r.group(&get, "/users/alice/orders");
        let b = r.group(&get, "/users/bob/orders");
        let c = r.group(&get, "/static/css/site.css");
        let d = r.group(&get, "/static");
        let e = r.group(&get, "/users/alice/orders/7");
        let f = r.group(&http::Method::HEAD, "/users/carol/orders");
        assert_eq!((a, b, c, d), (0, 0, 1, 1));
        assert_eq!(
            r.names().iter().map(|n| &**n).collect::<Vec<_>>(),
            [
                "GET /users/{id}/orders",
                "GET /static/{*}",
                "GET /users/alice/orders/{n}",
                "HEAD /users/{id}/orders"
            ]
        );
        assert_eq!((e, f), (2, 3));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (p, why) in [
            ("users/{id}", "must start with `/`"),
            ("/a/{*}/b", "only be the last segment"),
            ("/a/{}", "needs a name"),
            ("/a/x{id}", "whole segment"),
            ("/a?x=1", "no query"),
        ] {
            let e = Pattern::parse(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn rows_are_bounded() {
        let mut r = Routes::new(Vec::new());
        for i in 0..1000 {
            r.group(&http::Method::GET, &format!("/w{i}"));
            r.group(&http::Method::HEAD, &format!("/w{i}"));
        }
        assert_eq!(r.names().len(), MAX_GROUPS + 2);
        assert_eq!(&*r.names()[MAX_GROUPS], "GET (other routes)");
        assert_eq!(r.group(&http::Method::HEAD, "/w999"), MAX_GROUPS + 1);
    }

    proptest! {
        /// Folding never panics, keeps the segment count, and is idempotent.
        #[test]
        fn folding_is_stable(path in "(/[a-zA-Z0-9%._~-]{0,40}){0,6}") {
            let once = fold(&path);
            prop_assert_eq!(fold(&once), once.clone());
            if !path.is_empty() {
                prop_assert_eq!(once.split('/').count(), path.split('/').count());
            }
        }

        /// A pattern made from a path's own segments matches that path.
        #[test]
        fn a_path_matches_its_own_pattern(segs in proptest::collection::vec("[a-z0-9]{1,8}", 0..6), hole in 0usize..6) {
            let path = format!("/{}", segs.join("/"));
            let mut pat: Vec<String> = segs.clone();
            if let Some(s) = pat.get_mut(hole) { *s = "{x}".into(); }
            let p = Pattern::parse(&format!("/{}", pat.join("/"))).unwrap();
            prop_assert!(p.matches(&path), "{} vs {}", p.text, path);
        }
    }
}
