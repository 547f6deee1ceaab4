//! Conventions for synthetic identities, and the reserved domains guards refuse to reach.
//!
//! A synthetic user's email is `u<n>+<run>@loadtest.invalid`: `.invalid` is reserved by RFC 2606
//! and can never be delivered, the run id says which run made it, and guards treat any address
//! under a reserved domain as synthetic even when the request context was lost.
//!
//! ```
//! use synth_ctx::RunId;
//! use synth_guards::identity::{ReservedDomains, synthetic_email};
//!
//! let run = RunId::new("r42")?;
//! assert_eq!(synthetic_email(7, &run), "u7+r42@loadtest.invalid");
//! assert!(ReservedDomains::default().contains("loadtest.invalid"));
//! assert!(ReservedDomains::default().is_synthetic_email("U7+R42@LOADTEST.INVALID"));
//! assert!(!ReservedDomains::default().is_synthetic_email("ana@example.com"));
//! # Ok::<(), synth_ctx::InvalidRunId>(())
//! ```

use synth_ctx::RunId;

/// The domain synthetic identities use by default.
pub const SYNTHETIC_EMAIL_DOMAIN: &str = "loadtest.invalid";

/// The email address of synthetic user `n` of `run`.
pub fn synthetic_email(n: u64, run: &RunId) -> String {
    format!("u{n}+{run}@{SYNTHETIC_EMAIL_DOMAIN}")
}

/// Domains (and their subdomains) that belong to synthetic identities only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedDomains(Vec<String>);

impl Default for ReservedDomains {
    /// `invalid`: every `*.invalid` domain (RFC 2606).
    fn default() -> Self {
        ReservedDomains(vec!["invalid".to_owned()])
    }
}

impl ReservedDomains {
    /// These domains and their subdomains (case-insensitive).
    pub fn new<S: AsRef<str>>(domains: impl IntoIterator<Item = S>) -> Self {
        ReservedDomains(
            domains
                .into_iter()
                .map(|d| d.as_ref().trim().trim_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect(),
        )
    }

    /// Whether `domain` is one of them or under one of them.
    pub fn contains(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.0
            .iter()
            .any(|r| domain == *r || domain.strip_suffix(r.as_str()).is_some_and(|rest| rest.ends_with('.')))
    }

    /// Whether `address` (`user@domain`) is under a reserved domain.
    pub fn is_synthetic_email(&self, address: &str) -> bool {
        address.rsplit_once('@').is_some_and(|(_, domain)| self.contains(domain))
    }
}
