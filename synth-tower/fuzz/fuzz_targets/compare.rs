//! `compare` on two arbitrary bodies and arbitrary ignore patterns: never panics, respects
//! `max` and the 200-character cut, and every body matches itself.
#![no_main]

use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use synth_tower::mirror::compare::{Answer, CompareSpec, JsonPath, MAX_VALUE_CHARS, compare};

fuzz_target!(|input: (&[u8], &[u8], Vec<&str>, u8)| {
    let (real_body, dark_body, paths, max) = input;
    let max = usize::from(max % 8);
    let spec = CompareSpec {
        ignore: paths.iter().filter_map(|p| JsonPath::parse(p).ok()).collect(),
        ..CompareSpec::default()
    };
    let headers = HeaderMap::new();
    let real = Answer { status: StatusCode::OK, headers: &headers, body: real_body };
    let dark = Answer { body: dark_body, ..real };

    let found = compare(&spec, real, dark, max);
    assert!(found.differences.len() <= max);
    for difference in &found.differences {
        assert!(difference.real.chars().count() <= MAX_VALUE_CHARS);
        assert!(difference.dark.chars().count() <= MAX_VALUE_CHARS);
    }
    assert!(compare(&spec, real, real, max).is_match());
    assert!(compare(&spec, dark, dark, max).is_match());
    // Swapping the sides finds as many differences at the same places.
    let swapped = compare(&spec, dark, real, max);
    assert_eq!(swapped.truncated, found.truncated);
    let at = |c: &synth_tower::mirror::compare::Comparison| c.differences.iter().map(|d| d.at.clone()).collect::<Vec<_>>();
    assert_eq!(at(&swapped), at(&found));
});
