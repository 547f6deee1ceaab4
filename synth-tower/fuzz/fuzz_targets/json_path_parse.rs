//! `JsonPath::parse` on arbitrary text: never panics, and an accepted path's canonical form
//! parses back to the same path and prints the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synth_tower::mirror::compare::JsonPath;

fuzz_target!(|text: &str| {
    if let Ok(path) = JsonPath::parse(text) {
        let canonical = path.to_string();
        let again = JsonPath::parse(&canonical).unwrap();
        assert_eq!(again, path, "{text:?} -> {canonical:?}");
        assert_eq!(again.to_string(), canonical);
    }
});
