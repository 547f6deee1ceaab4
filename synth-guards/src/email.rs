//! The email guard: a lettre [`AsyncTransport`] that does not send synthetic email (feature
//! `lettre`).
//!
//! [`GuardedTransport`] wraps any async transport (SMTP, file, stub). For a synthetic request it
//! sends nothing and answers [`Sent::Suppressed`], a success the caller handles like any other.
//! Defence in depth: recipients under reserved synthetic domains (default `*.invalid`, see
//! [`identity`](crate::identity)) are never sent to, even when the context says real; that
//! mismatch is counted and logged as **context lost**.
//!
//! # Example
//!
//! ```
//! use lettre::{AsyncTransport, Message, transport::stub::AsyncStubTransport};
//! use synth_guards::email::{GuardedTransport, Sent};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mailer = GuardedTransport::new(AsyncStubTransport::new_ok());
//! let message = Message::builder()
//!     .from("shop@example.com".parse().unwrap())
//!     .to("u42+r7@loadtest.invalid".parse().unwrap())
//!     .subject("Your order")
//!     .body(String::from("Thanks!"))
//!     .unwrap();
//! // A reserved synthetic address is never mailed, even outside a synthetic scope.
//! assert!(matches!(mailer.send(message).await, Ok(Sent::Suppressed { .. })));
//! # });
//! ```

use async_trait::async_trait;
use lettre::{Address, AsyncTransport, address::Envelope};

use crate::{Guard, identity::ReservedDomains};

/// What the guarded transport did with a message.
#[derive(Debug)]
pub enum Sent<T> {
    /// Handed to the inner transport; its answer.
    Delivered(T),
    /// Not sent: the request was synthetic, or every recipient was a reserved synthetic address.
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

    fn is_reserved(&self, address: &Address) -> bool {
        self.reserved.contains(address.domain())
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
    type Error = T::Error;

    async fn send_raw(&self, envelope: &Envelope, email: &[u8]) -> Result<Self::Ok, Self::Error> {
        let recipients = envelope.to().len();
        if let Some(s) = synth_ctx::current() {
            self.guard.suppressed(&s);
            return Ok(Sent::Suppressed { recipients });
        }
        let real: Vec<Address> = envelope.to().iter().filter(|a| !self.is_reserved(a)).cloned().collect();
        if real.len() == recipients {
            self.guard.executed();
            return self.inner.send_raw(envelope, email).await.map(Sent::Delivered);
        }
        self.guard.context_lost("email to a reserved synthetic address outside a synthetic request");
        if real.is_empty() {
            return Ok(Sent::Suppressed { recipients });
        }
        // Send to the real recipients only. The envelope, not the headers, decides delivery.
        match Envelope::new(envelope.from().cloned(), real) {
            Ok(envelope) => {
                self.guard.executed();
                self.inner.send_raw(&envelope, email).await.map(Sent::Delivered)
            }
            Err(_) => Ok(Sent::Suppressed { recipients }),
        }
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}
