//! Cross-crate end-to-end tests for synth; the tests live in `tests/tests/`.

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
