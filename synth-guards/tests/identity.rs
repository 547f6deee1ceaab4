//! Reserved synthetic identities matched the way mail systems read an address: the mailbox
//! parsed (display names, quoted local parts), the domain normalised (IDNA, case, full-width
//! forms, one trailing dot), then compared label by label.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use synth_guards::identity::ReservedDomains;

#[test]
fn reserved_addresses_are_recognised_in_every_spelling_a_mail_system_reads() {
    let reserved = ReservedDomains::default();
    let synthetic = [
        "u@loadtest.invalid",
        "U7+R42@LOADTEST.INVALID",
        "u@loadtest.\u{ff49}\u{ff4e}\u{ff56}\u{ff41}\u{ff4c}\u{ff49}\u{ff44}", // full-width `invalid`
        "u@\u{ff2c}\u{ff2f}\u{ff21}\u{ff24}test\u{3002}invalid", // full-width capitals, ideographic dot
        "u@loadtest.invalid.",
        "u@invalid",
        "Name <u@x.invalid>",
        "\"Test, User\" <u@x.invalid>",
        "<u@x.invalid>",
        "  Name   <u@X.Invalid.>  ",
        "\"a@b.com\"@x.invalid",
        "\"quoted <local> part\"@x.invalid",
        "\"a\\\"b\"@x.invalid",
    ];
    for address in synthetic {
        assert!(reserved.is_synthetic_email(address), "{address:?} is under a reserved domain");
    }
    // The email guard sees the domain lettre parsed; lettre reads these spellings the same way.
    for address in [synthetic[2], synthetic[3], synthetic[6], synthetic[7]] {
        let mailbox: lettre::message::Mailbox = address.parse().unwrap();
        assert!(reserved.contains(mailbox.email.domain()), "{address:?} as lettre reads it");
    }
    let real = [
        "ana@example.com",
        "Ana <ana@example.com>",
        "\"u@x.invalid\" <ana@example.com>",
        "u@invalid.example.com",
        "u@notinvalid",
        "u@x.invalidx",
        "u@xinvalid",
        "u@\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.com", // full-width `example`
        "u@b\u{fc}cher.example",
        "u@[127.0.0.1]",
        "u@127.0.0.1",
    ];
    for address in real {
        assert!(!reserved.is_synthetic_email(address), "{address:?} is a real address");
    }
}

#[test]
fn what_cannot_be_classified_counts_as_synthetic() {
    // A guard must not reach what it cannot classify: the answer fails closed.
    let reserved = ReservedDomains::default();
    for address in [
        "",
        "no-at-sign",
        "@x.example",
        "u@",
        "a@b@x.example",
        "u@x..example",
        "u@.example",
        "u@x.example..",
        "u@exa mple.com",
        "Name <u@example.com",
        "u@example.com>",
        "\"unterminated <u@example.com>",
        "a@example.com, b@example.com",
        "u@[not-an-ip]",
        "u@xn--a.example", // not valid punycode
    ] {
        assert!(reserved.is_synthetic_email(address), "{address:?} cannot be classified");
    }
}

mod spellings {
    use proptest::prelude::*;
    use synth_guards::identity::{EmailClass, ReservedDomains};

    /// `c` written as variant `k`: lower or upper case, full-width, or for a dot one of the dots
    /// IDNA maps to `.` (ideographic, full-width, half-width ideographic).
    fn spell(c: char, k: u8) -> char {
        let full_width = |c: char| char::from_u32(c as u32 - 0x21 + 0xff01).unwrap();
        match (c, k % 4) {
            ('.', 0) => '.',
            ('.', 1) => '\u{3002}',
            ('.', 2) => '\u{ff0e}',
            ('.', _) => '\u{ff61}',
            (c, 0) => c.to_lowercase().next().unwrap(),
            (c, 1) => c.to_uppercase().next().unwrap(),
            (c, 2) if c.is_ascii_alphanumeric() || c == '-' => full_width(c.to_ascii_lowercase()),
            (c, _) if c.is_ascii_alphanumeric() || c == '-' => full_width(c.to_ascii_uppercase()),
            (c, _) => c,
        }
    }

    /// Any spelling of `s` a mail system reads as `s`.
    fn spelled(s: String) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<u8>(), s.chars().count())
            .prop_map(move |ks| s.chars().zip(ks).map(|(c, k)| spell(c, k)).collect())
    }

    /// `domain` spelled any way, with or without one trailing dot.
    fn domain_spelling(domain: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        (domain, any::<bool>()).prop_flat_map(|(d, dot)| spelled(if dot { format!("{d}.") } else { d }))
    }

    /// A mailbox around `domain`: plain or quoted local part, bare or with a display name.
    fn mailbox(domain: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        let local = prop_oneof!["[a-z0-9][a-z0-9+_-]{0,8}(\\.[a-z0-9]{1,4})?", "\"[a-z0-9 @<>,.()]{0,10}\"",];
        (local, domain, 0..5u8, "[A-Za-z]{1,8}( [A-Za-z]{1,8})?").prop_map(|(local, domain, form, name)| {
            let addr = format!("{local}@{domain}");
            match form {
                0 => addr,
                1 => format!("<{addr}>"),
                2 => format!("{name} <{addr}>"),
                3 => format!("\"{name}, via <x@y.example>\" <{addr}>"),
                _ => format!("  {addr}  "),
            }
        })
    }

    /// What lettre reads as the domain, when lettre parses the mailbox (the transport's path).
    fn lettre_domain(mailbox: &str) -> Option<String> {
        mailbox.trim().parse::<lettre::message::Mailbox>().ok().map(|m| m.email.domain().to_owned())
    }

    fn reserved_domain() -> impl Strategy<Value = String> {
        (
            prop::collection::vec("[a-z0-9]{1,8}", 0..3),
            prop::sample::select(vec!["invalid", "loadtest.invalid"]),
        )
            .prop_map(|(labels, tail)| {
                labels.into_iter().chain([tail.to_owned()]).collect::<Vec<_>>().join(".")
            })
    }

    fn real_domain() -> impl Strategy<Value = String> {
        // `invalid` may appear, but never as the last label; look-alikes end the name.
        let tlds = vec!["com", "org", "example", "invalidx", "xinvalid", "invali", "nvalid", "inv-alid"];
        (
            prop::collection::vec(prop_oneof!["[a-z0-9]{1,8}", Just("invalid".to_owned())], 1..3),
            prop::sample::select(tlds),
        )
            .prop_map(|(labels, tld)| {
                labels.into_iter().chain([tld.to_owned()]).collect::<Vec<_>>().join(".")
            })
    }

    /// `<label>.example`, maybe under a subdomain, spelled any way.
    fn idn_domain(labels: Vec<&'static str>) -> impl Strategy<Value = String> {
        ("([a-z0-9]{1,6}\\.)?", prop::sample::select(labels))
            .prop_flat_map(|(prefix, label)| domain_spelling(Just(format!("{prefix}{label}.example"))))
    }

    proptest! {
        #[test]
        fn a_reserved_domain_matches_in_every_spelling(m in mailbox(domain_spelling(reserved_domain()))) {
            let reserved = ReservedDomains::default();
            prop_assert_eq!(reserved.classify(&m), Ok(EmailClass::Synthetic), "{:?}", m);
            prop_assert!(reserved.is_synthetic_email(&m));
            if let Some(domain) = lettre_domain(&m) {
                prop_assert_eq!(reserved.classify_domain(&domain), Ok(EmailClass::Synthetic), "lettre read {:?}", domain);
            }
        }

        #[test]
        fn a_real_domain_never_matches(m in mailbox(domain_spelling(real_domain()))) {
            let reserved = ReservedDomains::default();
            prop_assert_eq!(reserved.classify(&m), Ok(EmailClass::Real), "{:?}", m);
            prop_assert!(!reserved.is_synthetic_email(&m));
            if let Some(domain) = lettre_domain(&m) {
                prop_assert_eq!(reserved.classify_domain(&domain), Ok(EmailClass::Real), "lettre read {:?}", domain);
            }
        }

        #[test]
        fn an_internationalised_reserved_domain_matches_as_unicode_and_as_xn(
            m in mailbox(idn_domain(vec!["bücher", "xn--bcher-kva"])),
            look_alike in mailbox(idn_domain(vec!["bucher", "bücherei", "xn--bcherei-n2a", "xn--bchr-dpa5i"])),
        ) {
            let reserved = ReservedDomains::new(["bücher.example"]).unwrap();
            prop_assert_eq!(reserved.classify(&m), Ok(EmailClass::Synthetic), "{:?}", m);
            prop_assert_eq!(reserved.classify(&look_alike), Ok(EmailClass::Real), "{:?}", look_alike);
        }

        #[test]
        fn classifying_never_panics_and_is_synthetic_fails_closed(s in "\\PC{0,40}") {
            let reserved = ReservedDomains::default();
            prop_assert_eq!(reserved.is_synthetic_email(&s), reserved.classify(&s) != Ok(EmailClass::Real));
        }
    }

    /// The email guard, over the same spellings: a reserved recipient in a real request is never
    /// handed to the inner transport, a real one always is.
    #[cfg(feature = "lettre")]
    mod transport {
        use lettre::{AsyncTransport as _, Message, transport::stub::AsyncStubTransport};
        use proptest::prelude::*;
        use synth_guards::email::{GuardedError, GuardedTransport, Sent};

        use super::{domain_spelling, mailbox, real_domain, reserved_domain};

        type Answer = Result<Sent<()>, GuardedError<lettre::transport::stub::Error>>;

        /// What the guard answered and how many messages reached the inner transport; `None`
        /// when lettre does not accept the mailbox (no message can be built).
        fn send(to: &str) -> Option<(Answer, usize)> {
            let to = to.trim().parse().ok()?;
            let message = Message::builder()
                .from("shop@example.com".parse().unwrap())
                .to(to)
                .subject("order")
                .body(String::from("thanks"))
                .unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let inner = AsyncStubTransport::new_ok();
                let sent = GuardedTransport::new(inner.clone()).send(message).await;
                Some((sent, inner.messages().await.len()))
            })
        }

        proptest! {
            #[test]
            fn a_reserved_recipient_is_never_sent_to(m in mailbox(domain_spelling(reserved_domain()))) {
                if let Some((sent, delivered)) = send(&m) {
                    prop_assert!(matches!(sent, Err(GuardedError::ContextLost { .. })), "{:?}: {:?}", m, sent);
                    prop_assert_eq!(delivered, 0);
                }
            }

            #[test]
            fn a_real_recipient_is_sent_to(m in mailbox(domain_spelling(real_domain()))) {
                if let Some((sent, delivered)) = send(&m) {
                    prop_assert!(matches!(sent, Ok(Sent::Delivered(()))), "{:?}: {:?}", m, sent);
                    prop_assert_eq!(delivered, 1);
                }
            }
        }
    }
}
