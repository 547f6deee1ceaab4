//! Conventions for synthetic identities, and the reserved domains guards refuse to reach.
//!
//! A synthetic user's email is `u<n>+<run>@loadtest.invalid`: `.invalid` is reserved by RFC 2606
//! and can never be delivered, the run id says which run made it, and guards treat any address
//! under a reserved domain as synthetic even when the request context was lost.
//!
//! Addresses are matched the way a mail system reads them, not as the bytes were typed: the
//! mailbox is parsed (`Name <user@domain>`, quoted local parts), the domain is normalised with
//! IDNA (UTS 46: case, full-width letters and dots, `xn--` labels) and one trailing dot is
//! dropped, then the labels are compared. An address that cannot be read that way is an error
//! for [`ReservedDomains::classify`], and counts as synthetic for
//! [`ReservedDomains::is_synthetic_email`] (fail closed: a guard must not reach what it cannot
//! classify).
//!
//! ```
//! use synth_ctx::RunId;
//! use synth_guards::identity::{EmailClass, ReservedDomains, synthetic_email};
//!
//! let run = RunId::new("r42")?;
//! assert_eq!(synthetic_email(7, &run), "u7+r42@loadtest.invalid");
//! let reserved = ReservedDomains::default();
//! assert!(reserved.contains("loadtest.invalid"));
//! assert!(reserved.is_synthetic_email("U7+R42@LOADTEST.INVALID"));
//! assert!(reserved.is_synthetic_email("Load Test <u7@loadtest.ｉｎｖａｌｉｄ.>"));
//! assert!(!reserved.is_synthetic_email("ana@example.com"));
//! assert_eq!(reserved.classify("Ana <ana@example.com>"), Ok(EmailClass::Real));
//! assert!(reserved.classify("ana@exa mple.com").is_err());
//! # Ok::<(), synth_ctx::InvalidRunId>(())
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use synth_ctx::RunId;

/// The domain synthetic identities use by default.
pub const SYNTHETIC_EMAIL_DOMAIN: &str = "loadtest.invalid";

/// The email address of synthetic user `n` of `run`.
pub fn synthetic_email(n: u64, run: &RunId) -> String {
    format!("u{n}+{run}@{SYNTHETIC_EMAIL_DOMAIN}")
}

/// Whose an email address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EmailClass {
    /// Not under a reserved domain: a real person's address.
    Real,
    /// Under a reserved domain: a synthetic identity.
    Synthetic,
}

/// Why an address could not be classified. The address itself is not repeated: it is personal
/// data, and the caller has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Not one mailbox: expected `user@domain` or `Name <user@domain>`.
    #[error("not a mailbox: expected `user@domain` or `Name <user@domain>`")]
    NotAMailbox,
    /// The domain is not a domain name IDNA can normalise, nor an address literal.
    #[error("the domain is not a valid domain name")]
    InvalidDomain,
}

/// A reserved domain that is not a domain name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("reserved domain `{domain}` is not a domain name (IDNA cannot normalise it)")]
pub struct InvalidReservedDomain {
    domain: String,
}

impl InvalidReservedDomain {
    /// The domain as it was given.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

/// Domains (and their subdomains) that belong to synthetic identities only, held normalised
/// (IDNA ASCII form, no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedDomains(Vec<String>);

impl Default for ReservedDomains {
    /// `invalid`: every `*.invalid` domain (RFC 2606).
    fn default() -> Self {
        ReservedDomains(vec!["invalid".to_owned()])
    }
}

impl ReservedDomains {
    /// These domains and their subdomains, in any spelling IDNA maps to the same name
    /// (`Bücher.example`, `xn--bcher-kva.example.`). Fails on a domain IDNA cannot normalise,
    /// rather than reserving nothing in its place.
    pub fn new<S: AsRef<str>>(domains: impl IntoIterator<Item = S>) -> Result<Self, InvalidReservedDomain> {
        domains
            .into_iter()
            .map(|d| {
                let d = d.as_ref().trim();
                // A leading dot (`.invalid`) is a common way to write "this and below".
                normalise_domain(d.strip_prefix('.').unwrap_or(d))
                    .map_err(|_| InvalidReservedDomain { domain: d.to_owned() })
            })
            .collect::<Result<_, _>>()
            .map(ReservedDomains)
    }

    /// Whether `domain` is one of them or under one of them. A domain that cannot be normalised
    /// counts as reserved (fail closed); [`classify_domain`](Self::classify_domain) tells the
    /// cases apart.
    pub fn contains(&self, domain: &str) -> bool {
        self.classify_domain(domain) != Ok(EmailClass::Real)
    }

    /// Whether `domain` (the part after `@`) is reserved. An address literal (`[192.0.2.1]`,
    /// `[IPv6:2001:db8::1]`) names a host, never a reserved name: [`EmailClass::Real`].
    pub fn classify_domain(&self, domain: &str) -> Result<EmailClass, AddressError> {
        if let Some(literal) = domain.strip_prefix('[') {
            let literal = literal.strip_suffix(']').ok_or(AddressError::InvalidDomain)?;
            return if is_address_literal(literal) {
                Ok(EmailClass::Real)
            } else {
                Err(AddressError::InvalidDomain)
            };
        }
        let domain = normalise_domain(domain)?;
        let reserved = self.0.iter().any(|r| {
            domain.strip_suffix(r.as_str()).is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
        });
        Ok(if reserved { EmailClass::Synthetic } else { EmailClass::Real })
    }

    /// Whose `mailbox` is: `user@domain` or `Display Name <user@domain>`, the local part plain or
    /// quoted.
    pub fn classify(&self, mailbox: &str) -> Result<EmailClass, AddressError> {
        let (local, domain) = parts_of_mailbox(mailbox)?;
        self.classify_parts(local, domain)
    }

    /// Whose `local@domain` is, also reading the routes a relay may follow inside the local part
    /// (`u%loadtest.invalid@relay`, `loadtest.invalid!u@relay`, `"u@loadtest.invalid"@relay`):
    /// a reserved domain anywhere on the route makes it synthetic.
    pub fn classify_parts(&self, local: &str, domain: &str) -> Result<EmailClass, AddressError> {
        if self.classify_domain(domain)? == EmailClass::Synthetic {
            return Ok(EmailClass::Synthetic);
        }
        let local = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or(local);
        let routed = [
            local.rsplit_once('@').map(|(_, d)| d),
            local.rsplit_once('%').map(|(_, d)| d),
            local.split_once('!').map(|(d, _)| d),
        ];
        // Text that is not a domain name here is just a local part: it routes nowhere.
        let reserved_route = routed
            .into_iter()
            .flatten()
            .any(|d| self.classify_domain(d.trim_matches('"')) == Ok(EmailClass::Synthetic));
        Ok(if reserved_route { EmailClass::Synthetic } else { EmailClass::Real })
    }

    /// Whether `mailbox` is a synthetic identity. A mailbox that cannot be parsed, or whose
    /// domain is not a domain name, counts as synthetic: this answer decides whether an effect
    /// may reach the address, and a guard must not reach what it cannot classify. Use
    /// [`classify`](Self::classify) to tell bad input apart (and answer it with a 400).
    pub fn is_synthetic_email(&self, mailbox: &str) -> bool {
        self.classify(mailbox) != Ok(EmailClass::Real)
    }
}

/// The local part and the domain a mail system would deliver `mailbox` to, as written.
fn parts_of_mailbox(mailbox: &str) -> Result<(&str, &str), AddressError> {
    let mailbox = mailbox.trim();
    let addr_spec = match mailbox.strip_suffix('>') {
        // `Display Name <addr-spec>`: the angle address starts at the first `<` outside quotes.
        Some(rest) => {
            let open = find_unquoted(rest, '<').ok_or(AddressError::NotAMailbox)?;
            &rest[open + 1..]
        }
        None => mailbox,
    };
    let (local, domain) = if addr_spec.starts_with('"') {
        let close = find_closing_quote(addr_spec).ok_or(AddressError::NotAMailbox)?;
        let (local, rest) = addr_spec.split_at(close + 1);
        (local, rest.strip_prefix('@').ok_or(AddressError::NotAMailbox)?)
    } else {
        let (local, domain) = addr_spec.split_once('@').ok_or(AddressError::NotAMailbox)?;
        if local.chars().any(|c| c.is_whitespace() || c.is_control() || "\"<>()[]\\,;:".contains(c)) {
            return Err(AddressError::NotAMailbox);
        }
        (local, domain)
    };
    // A second `@`, a list (`a@x, b@y`) or a comment end up in the domain and fail here or in
    // IDNA; either way the mailbox is refused rather than half read.
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(AddressError::NotAMailbox);
    }
    Ok((local, domain))
}

/// The byte index of the first `needle` outside a quoted string.
fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The byte index of the quote that closes the quoted string `s` starts with.
fn find_closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// `192.0.2.1` or `IPv6:2001:db8::1` (RFC 5321 address literals).
fn is_address_literal(literal: &str) -> bool {
    match literal.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => literal[5..].parse::<Ipv6Addr>().is_ok(),
        _ => literal.parse::<Ipv4Addr>().is_ok(),
    }
}

/// The domain as DNS reads it: IDNA ASCII form (lower case, full-width forms and ideographic
/// dots mapped, `xn--` labels checked), one trailing dot dropped, every label non-empty and made
/// of letters, digits, `-` and `_`.
fn normalise_domain(domain: &str) -> Result<String, AddressError> {
    let ascii = idna::domain_to_ascii(domain).map_err(|_| AddressError::InvalidDomain)?;
    // After the mapping, so that a full-width or ideographic trailing dot counts too.
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    let label_ok =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ascii.split('.').all(label_ok) {
        Ok(ascii.to_ascii_lowercase())
    } else {
        Err(AddressError::InvalidDomain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_is_found_after_display_names_and_quoted_local_parts() {
        let cases = [
            ("u@x.example", Ok("x.example")),
            ("Name <u@x.example>", Ok("x.example")),
            ("\"a <b@c>\" <u@x.example>", Ok("x.example")),
            ("\"a@b\"@x.example", Ok("x.example")),
            ("\"a\\\"@b\"@x.example", Ok("x.example")),
            ("<\"a>\"@x.example>", Ok("x.example")),
            ("\"a@b\"", Err(AddressError::NotAMailbox)),
            ("a b@x.example", Err(AddressError::NotAMailbox)),
            ("u@x.example>", Err(AddressError::NotAMailbox)),
        ];
        for (mailbox, domain) in cases {
            assert_eq!(parts_of_mailbox(mailbox).map(|(_, d)| d), domain, "{mailbox:?}");
        }
    }

    #[test]
    fn reserved_domains_are_normalised_when_configured() {
        let reserved = ReservedDomains::new(["Bücher.Example.", ".test"]);
        assert_eq!(
            reserved,
            Ok(ReservedDomains(vec!["xn--bcher-kva.example".to_owned(), "test".to_owned()]))
        );
        assert_eq!(ReservedDomains::new(["a..b"]).map_err(|e| e.domain().to_owned()), Err("a..b".to_owned()));
    }
}
