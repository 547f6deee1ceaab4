//! The load test itself: a journey written in Rust and the scenario around it.
//!
//! Copy this file to start your own. It shows the three things YAML cannot say well:
//! a login kept in a function, a body signed per request, and a branch on an answer.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use custom_journey::{BodySigner, DEMO_HMAC_SECRET, Settings, scenario};
//!
//! let settings = Settings {
//!     duration: Duration::from_secs(3),
//!     rate: 5.0,
//!     signer: BodySigner::new(DEMO_HMAC_SECRET)?,
//! };
//! let s = scenario("http://127.0.0.1:8080".parse()?, &settings)?;
//! assert_eq!(s.planned_duration(), Duration::from_secs(3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{sync::Arc, time::Duration};

// hmac 0.13 builds a MAC from a key through `KeyInit`, and `Mac` gives update/finalize.
use hmac::{Hmac, KeyInit, Mac};
use loadgen::{BoxError, InvalidThreshold, Journey, Phase, RequestBuilder, Scenario, Threshold, User};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The header that carries `hex(hmac_sha256(secret, body))`.
pub const SIGNATURE_HEADER: &str = "x-signature";

/// The secret the demo server and the binary share when none is given. A demo value, public by
/// definition: give your service's real one with `--hmac-secret` or `CUSTOM_JOURNEY_HMAC_SECRET`.
pub const DEMO_HMAC_SECRET: &[u8] = b"custom-journey demo secret: replace me";

/// The account the journey logs in with when the scenario has no `users` data feeder. Its
/// domain is the reserved `loadtest.invalid`, so a service's identity guards treat it as
/// synthetic and no mail ever leaves for it.
pub const DEMO_EMAIL: &str = "demo@loadtest.invalid";

/// The demo account's password (the demo server accepts only it).
pub const DEMO_PASSWORD: &str = "demo-password";

/// How many products the journey picks from (ids `1..=PRODUCTS`).
pub const PRODUCTS: u64 = 9;

/// Signs request bodies: `hex(hmac_sha256(secret, body))`, the value of [`SIGNATURE_HEADER`].
///
/// Cheap to clone (the keyed MAC state is cloned per signature instead of re-deriving the key).
/// `Debug` never shows the secret.
#[derive(Clone)]
pub struct BodySigner {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for BodySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodySigner(<secret>)")
    }
}

/// Why a secret cannot sign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSecret {
    /// An empty secret would make every signature forgeable.
    #[error("the HMAC secret is empty: give the one your service verifies bodies with")]
    Empty,
    /// The MAC refused the key (HMAC takes keys of any length, so this is not expected).
    #[error("the HMAC secret was refused: {0}")]
    Refused(String),
}

impl BodySigner {
    /// A signer with `secret`, the key the service checks signatures with.
    pub fn new(secret: &[u8]) -> Result<Self, InvalidSecret> {
        if secret.is_empty() {
            return Err(InvalidSecret::Empty);
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .map_err(|e| InvalidSecret::Refused(e.to_string()))?;
        Ok(BodySigner { mac })
    }

    /// The signature of `body`, lower-case hex.
    ///
    /// ```
    /// use custom_journey::BodySigner;
    ///
    /// // RFC 4231, test case 2.
    /// let signer = BodySigner::new(b"Jefe")?;
    /// assert_eq!(
    ///     signer.sign(b"what do ya want for nothing?"),
    ///     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    /// );
    /// # Ok::<(), custom_journey::InvalidSecret>(())
    /// ```
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(body);
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `signature` (hex, either case) is `body`'s. The comparison takes the same time
    /// wherever the bytes differ, so timing does not leak the expected signature.
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Some(tag) = unhex(signature) else { return false };
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// What a run of this example does: how long, how fast, and with which signing secret.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long journeys keep arriving.
    pub duration: Duration,
    /// Journeys started per second.
    pub rate: f64,
    /// Signs every request body.
    pub signer: BodySigner,
}

/// The scenario: one phase at a steady rate, the [`checkout`] journey, and thresholds that make
/// the run fail (exit 1) when more than 1 % of requests fail or placing an order is slow.
///
/// Thresholds are checked when the run ends; a threshold on a request that was never sent
/// fails too, so "nothing was ordered" does not pass as "ordering was fast".
pub fn scenario(target: http::Uri, settings: &Settings) -> Result<Scenario, InvalidThreshold> {
    Ok(Scenario::new(target)
        .phase(Phase::Load {
            duration: settings.duration,
            rate: settings.rate,
            ramp_to: settings.rate,
            max_concurrent: None,
        })
        .journey(checkout(settings.signer.clone()))
        .threshold(Threshold::parse("error_rate < 1%")?)
        .threshold(Threshold::parse("p95 < 1s")?.for_step("place order")))
}

/// `POST /login`'s body. `Debug` leaves the password out.
#[derive(Serialize, Deserialize)]
pub struct Login {
    /// The account.
    pub email: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("email", &self.email).finish_non_exhaustive()
    }
}

/// `POST /login`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    /// The bearer token later requests carry.
    pub token: String,
}

/// `GET /products/{id}`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Product {
    /// The product.
    pub id: u64,
    /// Whether it can be ordered now.
    pub in_stock: bool,
}

/// `POST /orders`' body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    /// The product ordered.
    pub product: u64,
    /// How many.
    pub quantity: u32,
}

/// The journey: log in, look at a product, order it if it is in stock.
///
/// Every request is named (its row in the report), signed, and carries the run's marker
/// (loadgen adds that one). A request that fails ends the journey through `?` and is counted
/// under its name; the journey counts as failed with the error's message.
pub fn checkout(signer: BodySigner) -> Journey {
    // One signer for every virtual user; the closure is called once per arrival.
    let signer = Arc::new(signer);
    Journey::new("checkout").run(move |user: User| {
        let signer = signer.clone();
        async move {
            // 1. Log in through a function, as a real client library would.
            let email = user.data("users").and_then(|row| row.get("email").map(str::to_owned));
            let token = login(&user, &signer, email.as_deref().unwrap_or(DEMO_EMAIL)).await?;

            // 2. Look at a product. The id is in the path, so the request needs a name, or
            //    each id would get its own row in the report.
            let id = 1 + user.random_below(PRODUCTS);
            let answer = signed(user.get(format!("/products/{id}")), &signer, &token, &[])
                .name("view product")
                .expect_status(200)
                .await?;
            let product: Product = answer.json()?;

            // 3. Branch on the answer: only a product in stock can be ordered. Out of stock,
            //    the journey ends here, successfully; "view product" counted the visit.
            if !product.in_stock {
                return Ok(());
            }
            let body = serde_json::to_vec(&Order { product: product.id, quantity: 1 })?;
            signed(user.post("/orders"), &signer, &token, &body)
                .header("content-type", "application/json")
                .name("place order")
                .expect_status(201)
                .await?;
            Ok(())
        }
    })
}

/// Logs in as `email` (password from the `users` feeder row, else [`DEMO_PASSWORD`]) and
/// returns the session token from the JSON answer.
pub async fn login(user: &User, signer: &BodySigner, email: &str) -> Result<String, BoxError> {
    let password = user
        .data("users")
        .and_then(|row| row.get("password").map(str::to_owned))
        .unwrap_or_else(|| DEMO_PASSWORD.to_owned());
    // Serialised here, once, so the bytes signed are exactly the bytes sent.
    let body = serde_json::to_vec(&Login { email: email.to_owned(), password })?;
    let answer = user
        .post("/login")
        .header(SIGNATURE_HEADER, signer.sign(&body))
        .header("content-type", "application/json")
        .body(body)
        .name("login")
        .expect_status(200)
        .await?;
    let session: Session = answer.json()?;
    Ok(session.token)
}

/// Adds the bearer token, the body and its signature to a request. A body-less request signs
/// the empty body, so the service can check every request the same way.
fn signed<'u>(
    request: RequestBuilder<'u>,
    signer: &BodySigner,
    token: &str,
    body: &[u8],
) -> RequestBuilder<'u> {
    request
        .header("authorization", format!("Bearer {token}"))
        .header(SIGNATURE_HEADER, signer.sign(body))
        .body(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_bad_hex_does_not() {
        let signer = BodySigner::new(b"secret").unwrap();
        let sig = signer.sign(b"{}");
        assert!(signer.verify(b"{}", &sig));
        assert!(signer.verify(b"{}", &sig.to_uppercase()));
        assert!(!signer.verify(b"{ }", &sig));
        assert!(!signer.verify(b"{}", &sig[1..]));
        assert!(!signer.verify(b"{}", "zz"));
        assert!(!signer.verify(b"{}", ""));
        assert!(!BodySigner::new(b"other").unwrap().verify(b"{}", &sig));
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert_eq!(BodySigner::new(b"").unwrap_err(), InvalidSecret::Empty);
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("éé"), None, "non-ASCII is not hex");
    }
}
