//! The per-request trail: which services a synthetic request reached and which guards engaged.
//!
//! A server layer starts a [`Trail`] for each verified synthetic request and puts it in the
//! request's context. The service records its hop, guards record themselves, and clients add the
//! trails that downstream services report back. The server layer then answers with the whole
//! path and guard list, so the load generator can prove that every hop saw the marker and every
//! guard engaged before it ramps up.
//!
//! Rendering: hops of one service joined by `>`, then its downstream paths: one is appended
//! after `>`, several are grouped in parentheses, e.g. `gateway>(catalog,orders>payments)`.
//! Guards are a comma-separated list without repeats, e.g. `email,payment.charge`.
//!
//! Everything is bounded ([`MAX_NAME_LEN`], [`MAX_ENTRIES`], [`MAX_RENDERED_LEN`]); what does not
//! fit is dropped and [`Trail::is_truncated`] says so.
//!
//! # Example
//!
//! ```
//! use synth_ctx::trail::{self, Trail};
//!
//! let trail = Trail::new();
//! let _guard = trail.to_context(&opentelemetry::Context::current()).attach();
//!
//! trail::record_hop("gateway");
//! trail.add_downstream("catalog", "");
//! trail.add_downstream("orders>payments", "email,payment.charge");
//! trail::record_guard("email");
//!
//! assert_eq!(trail.path(), "gateway>(catalog,orders>payments)");
//! assert_eq!(trail.guards(), "email,payment.charge");
//! assert_eq!(trail::path_services(&trail.path()).collect::<Vec<_>>(), ["gateway", "catalog", "orders", "payments"]);
//! ```

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use opentelemetry::Context;

use crate::context::Scope;

/// Longest hop or guard name.
pub const MAX_NAME_LEN: usize = 64;
/// Most hops, downstream paths or guards a trail keeps (each).
pub const MAX_ENTRIES: usize = 32;
/// Longest rendered path or guard list, in bytes.
pub const MAX_RENDERED_LEN: usize = 1024;

/// The trail of one request. Clones share it.
#[derive(Clone, Default)]
pub struct Trail(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    hops: Vec<Arc<str>>,
    downstream: Vec<Box<str>>,
    guards: Vec<Box<str>>,
    path_len: usize,
    guards_len: usize,
    truncated: bool,
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Whether `name` may be a hop or guard name: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(is_name_char)
}

/// Whether `path` is a well-formed rendered path within the length bound.
pub fn is_valid_path(path: &str) -> bool {
    if path.is_empty() || path.len() > MAX_RENDERED_LEN {
        return false;
    }
    let mut depth = 0usize;
    // The start behaves like the position after a `>`: a name or a group may follow.
    let mut prev = b'>';
    for b in path.bytes() {
        let after_name = is_name_char(prev);
        let ok = match b {
            b'(' => prev == b'>',
            b')' => depth > 0 && (after_name || prev == b')'),
            b'>' => after_name,
            b',' => after_name || prev == b')',
            b if is_name_char(b) => prev != b')',
            _ => false,
        };
        if !ok {
            return false;
        }
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        prev = b;
    }
    depth == 0 && (is_name_char(prev) || prev == b')')
}

/// The service names in a rendered path, in order of appearance.
pub fn path_services(path: &str) -> impl Iterator<Item = &str> {
    path.split(['>', ',', '(', ')']).filter(|s| !s.is_empty())
}

impl Trail {
    /// An empty trail.
    pub fn new() -> Self {
        Self::default()
    }

    /// The trail of the current context, if a server layer started one.
    pub fn current() -> Option<Trail> {
        Context::map_current(|cx| Trail::from_context(cx).cloned())
    }

    /// The trail `cx` carries: the synthetic scope's, else one set with
    /// [`to_context`](Self::to_context).
    pub fn from_context(cx: &Context) -> Option<&Trail> {
        cx.get::<Scope>().and_then(|s| s.trail.as_ref()).or_else(|| cx.get::<Trail>())
    }

    /// `parent` with this trail in it. For a synthetic request prefer
    /// [`Synthetic::to_context_with_trail`](crate::Synthetic::to_context_with_trail).
    pub fn to_context(&self, parent: &Context) -> Context {
        parent.with_value(self.clone())
    }

    /// A trail that starts with hop `name`, sharing the name's allocation (for a server layer
    /// that starts one per request). An invalid name is dropped as [`record_hop`](Self::record_hop) would.
    pub fn starting_at(name: &Arc<str>) -> Self {
        let trail = Trail::new();
        {
            let mut t = trail.lock();
            if is_valid_name(name) {
                t.path_len = name.len() + 1;
                t.hops.push(name.clone());
            } else {
                t.truncated = true;
            }
        }
        trail
    }

    /// Whether downstream services reported into this trail.
    pub fn has_downstream(&self) -> bool {
        !self.lock().downstream.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Appending strings cannot leave the trail in a state worse than a missing entry.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the request passed through service `name`. Returns false if the name is
    /// invalid or the trail is full.
    pub fn record_hop(&self, name: &str) -> bool {
        let mut t = self.lock();
        if !is_valid_name(name)
            || t.hops.len() >= MAX_ENTRIES
            || t.path_len + name.len() + 1 > MAX_RENDERED_LEN
        {
            t.truncated = true;
            return false;
        }
        t.path_len += name.len() + 1;
        t.hops.push(name.into());
        true
    }

    /// Records that guard `name` engaged (once per name).
    pub fn record_guard(&self, name: &str) -> bool {
        let mut t = self.lock();
        t.add_guard(name)
    }

    /// Adds what a downstream service reported: its rendered `path` and its `guards` list.
    /// Invalid or oversized input is dropped (and marks the trail truncated); an empty string
    /// means "nothing reported".
    pub fn add_downstream(&self, path: &str, guards: &str) {
        let mut t = self.lock();
        if !path.is_empty() {
            if is_valid_path(path)
                && t.downstream.len() < MAX_ENTRIES
                && t.path_len + path.len() + 3 <= MAX_RENDERED_LEN
            {
                t.path_len += path.len() + 1;
                t.downstream.push(path.into());
            } else {
                t.truncated = true;
            }
        }
        for guard in guards.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            t.add_guard(guard);
        }
    }

    /// The rendered path, e.g. `gateway>(catalog,orders>payments)`.
    pub fn path(&self) -> String {
        let t = self.lock();
        let mut out = String::with_capacity(t.path_len + 2);
        for (i, hop) in t.hops.iter().enumerate() {
            if i > 0 {
                out.push('>');
            }
            out.push_str(hop);
        }
        let group = t.downstream.len() > 1 && !t.hops.is_empty();
        if !t.downstream.is_empty() && !t.hops.is_empty() {
            out.push('>');
        }
        if group {
            out.push('(');
        }
        for (i, d) in t.downstream.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(d);
        }
        if group {
            out.push(')');
        }
        out
    }

    /// The guards that engaged, comma-separated, in the order they first engaged.
    pub fn guards(&self) -> String {
        self.lock().guards.join(",")
    }

    /// Whether something was dropped because it was invalid or did not fit.
    pub fn is_truncated(&self) -> bool {
        self.lock().truncated
    }
}

impl Inner {
    fn add_guard(&mut self, name: &str) -> bool {
        if self.guards.iter().any(|g| &**g == name) {
            return true;
        }
        if !is_valid_name(name)
            || self.guards.len() >= MAX_ENTRIES
            || self.guards_len + name.len() + 1 > MAX_RENDERED_LEN
        {
            self.truncated = true;
            return false;
        }
        self.guards_len += name.len() + 1;
        self.guards.push(name.into());
        true
    }
}

impl fmt::Debug for Trail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trail")
            .field("path", &self.path())
            .field("guards", &self.guards())
            .finish_non_exhaustive()
    }
}

/// Records a hop on the current trail; does nothing outside a synthetic request.
pub fn record_hop(name: &str) {
    Context::map_current(|cx| Trail::from_context(cx).map(|t| t.record_hop(name)));
}

/// Records an engaged guard on the current trail; does nothing outside a synthetic request.
pub fn record_guard(name: &str) {
    Context::map_current(|cx| Trail::from_context(cx).map(|t| t.record_guard(name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chains_and_groups() {
        let t = Trail::new();
        assert_eq!(t.path(), "");
        t.record_hop("orders");
        assert_eq!(t.path(), "orders");
        t.add_downstream("payments", "payment.charge");
        assert_eq!(t.path(), "orders>payments");
        t.add_downstream("fraud", "");
        assert_eq!(t.path(), "orders>(payments,fraud)");
        assert!(is_valid_path(&t.path()));
        assert_eq!(t.guards(), "payment.charge");
    }

    #[test]
    fn path_validation_table() {
        for ok in ["a", "a>b", "a>(b,c)", "a>(b>c,d>(e,f))", "a,b", "payment.charge"] {
            assert!(is_valid_path(ok), "{ok}");
        }
        for bad in ["", ">", "a>", "a>>b", "(a", "a)", "a>(b,c", "a b", "a>()", "a\r\nb", "(a)b", "a(b)"] {
            assert!(!is_valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn bounded_and_drops_bad_input() {
        let t = Trail::new();
        assert!(!t.record_hop("bad name"));
        assert!(t.is_truncated());
        for i in 0..100 {
            t.add_downstream(&format!("svc{i}"), &format!("g{i}"));
        }
        assert!(t.path().len() <= MAX_RENDERED_LEN);
        assert_eq!(t.guards().split(',').count(), MAX_ENTRIES);
        t.add_downstream("x\r\nset-cookie: y", "ok,bad guard");
        assert!(!t.path().contains('\n'));
        let long = "n".repeat(MAX_RENDERED_LEN + 1);
        let u = Trail::new();
        u.add_downstream(&long, "");
        assert_eq!(u.path(), "");
    }
}
