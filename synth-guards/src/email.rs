//! The email guard: a lettre [`AsyncTransport`] that does not send synthetic email (feature
//! `lettre`).
//!
//! [`GuardedTransport`] wraps any async transport (SMTP, file, stub). For a synthetic request it
//! sends nothing and answers [`Sent::Suppressed`], a success the caller handles like any other.
//!
//! Defence in depth: outside a synthetic request, a message with **any** envelope recipient under
//! a reserved synthetic domain (default `*.invalid`, matched as mail systems read addresses, see
//! [`identity`](crate::identity)) is refused as a whole with [`GuardedError::ContextLost`],
//! counted and logged as **context lost**. Not even the real recipients get it: a real message
//! that names a synthetic identity is a bug (the marker was lost, or synthetic data leaked into
//! real data), and sending half of it would be a partial effect nobody asked for. A recipient
//! whose domain cannot be read as a domain name is refused the same way
//! ([`GuardedError::Unclassifiable`]): the guard does not send to what it cannot classify.
//!
//! # Example
//!
//! ```
//! use lettre::{AsyncTransport, Message, transport::stub::AsyncStubTransport};
//! use synth_guards::email::{GuardedError, GuardedTransport, Sent};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let inner = AsyncStubTransport::new_ok();
//! let mailer = GuardedTransport::new(inner.clone());
//! let message = |to: &str| {
//!     Message::builder()
//!         .from("shop@example.com".parse().unwrap())
//!         .to(to.parse().unwrap())
//!         .subject("Your order")
//!         .body(String::from("Thanks!"))
//!         .unwrap()
//! };
//! assert!(matches!(mailer.send(message("ana@example.com")).await, Ok(Sent::Delivered(_))));
//! // A reserved synthetic address in a real request: refused with an error, nothing sent.
//! let refused = mailer.send(message("Load Test <u42+r7@loadtest.invalid>")).await;
//! assert!(matches!(refused, Err(GuardedError::ContextLost { synthetic: 1, .. })));
//! assert_eq!(inner.messages().await.len(), 1);
//! # });
//! ```

use async_trait::async_trait;
use lettre::{AsyncTransport, address::Envelope};

use crate::{
    ContextLost, Guard,
    identity::{EmailClass, ReservedDomains},
};

/// What the guarded transport did with a message.
#[derive(Debug)]
pub enum Sent<T> {
    /// Handed to the inner transport; its answer.
    Delivered(T),
    /// Not sent: the request was synthetic.
    Suppressed {
        /// Recipients not sent to.
        recipients: usize,
    },
}

impl<T> Sent<T> {
    /// Whether the message went out.
    pub fn was_delivered(&self) -> bool {
        matches!(self, Sent::Delivered(_))
    }
}

/// Why the guarded transport did not deliver a message: it refused it (nothing was sent to any
/// recipient), or the inner transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardedError<E> {
    /// Outside a synthetic request, the envelope names recipients under a reserved synthetic
    /// domain: the marker was lost (counted as context lost). Nothing was sent to anyone.
    #[error(
        "{lost} ({synthetic} of {recipients} recipients are reserved synthetic addresses; nothing was sent)"
    )]
    ContextLost {
        /// The guard's refusal.
        lost: ContextLost,
        /// Recipients under a reserved domain.
        synthetic: usize,
        /// All envelope recipients.
        recipients: usize,
    },
    /// Outside a synthetic request, the envelope names recipients whose domain is not a domain
    /// name (IDNA cannot normalise it): the guard cannot tell whether they are synthetic, so
    /// nothing was sent to anyone.
    #[error(
        "{unclassifiable} of {recipients} recipients have a domain that is not a domain name; the guard \
         cannot tell whether they are synthetic, so nothing was sent"
    )]
    Unclassifiable {
        /// Recipients that could not be classified.
        unclassifiable: usize,
        /// All envelope recipients.
        recipients: usize,
    },
    /// The inner transport failed.
    #[error("the transport failed: {0}")]
    Transport(#[source] E),
}

/// A lettre transport that sends real email only; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct GuardedTransport<T> {
    inner: T,
    guard: Guard,
    reserved: ReservedDomains,
}

impl<T> GuardedTransport<T> {
    /// Guards `inner` under the guard name `email`, reserving `*.invalid`.
    pub fn new(inner: T) -> Self {
        GuardedTransport { inner, guard: Guard::new("email"), reserved: ReservedDomains::default() }
    }

    /// Uses another guard (name and counters).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// Uses these reserved synthetic domains instead of the default.
    pub fn with_reserved_domains(mut self, reserved: ReservedDomains) -> Self {
        self.reserved = reserved;
        self
    }

    /// The guard, for its counters.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The inner transport.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

#[async_trait]
impl<T> AsyncTransport for GuardedTransport<T>
where
    T: AsyncTransport + Send + Sync,
    T::Ok: Send,
    T::Error: Send,
{
    type Ok = Sent<T::Ok>;
    type Error = GuardedError<T::Error>;

    async fn send_raw(&self, envelope: &Envelope, email: &[u8]) -> Result<Self::Ok, Self::Error> {
        let recipients = envelope.to().len();
        if let Some(s) = synth_ctx::current() {
            self.guard.suppressed(&s);
            return Ok(Sent::Suppressed { recipients });
        }
        // The envelope, not the headers, decides delivery: classify every envelope recipient.
        let (mut synthetic, mut unclassifiable) = (0, 0);
        for address in envelope.to() {
            match self.reserved.classify_parts(address.user(), address.domain()) {
                Ok(EmailClass::Real) => {}
                Ok(_) => synthetic += 1,
                Err(_) => unclassifiable += 1,
            }
        }
        if synthetic > 0 {
            let lost =
                self.guard.context_lost("email to a reserved synthetic address outside a synthetic request");
            return Err(GuardedError::ContextLost { lost, synthetic, recipients });
        }
        if unclassifiable > 0 {
            tracing::warn!(
                guard = %self.guard.name(),
                unclassifiable,
                "email refused: a recipient's domain is not a domain name, so the guard cannot classify it"
            );
            return Err(GuardedError::Unclassifiable { unclassifiable, recipients });
        }
        self.guard.executed();
        self.inner.send_raw(envelope, email).await.map(Sent::Delivered).map_err(GuardedError::Transport)
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}
