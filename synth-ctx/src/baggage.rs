//! The little of W3C baggage this crate needs: find, add and remove one member, within the
//! W3C limits, keeping every other member as it was.

use std::{borrow::Cow, fmt::Write as _};

use opentelemetry::{
    Key, StringValue,
    baggage::{Baggage, BaggageMetadata},
};

/// Longest `baggage` header a receiver accepts (W3C); longer ones are ignored whole.
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// Most members a receiver reads (W3C); later ones are ignored.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the `http` adapters
fn member_name(member: &str) -> &str {
    let kv = member.split(';').next().unwrap_or("");
    kv.split('=').next().unwrap_or("").trim()
}

/// The value of member `key` in a `baggage` header, percent-decoded. `None` if absent, if the
/// header is over the W3C limits, or if the value does not decode.
pub(crate) fn find_member<'a>(header: &'a str, key: &str) -> Option<Cow<'a, str>> {
    if header.len() > MAX_BAGGAGE_LEN {
        return None;
    }
    header.split(',').take(MAX_BAGGAGE_MEMBERS).find_map(|member| {
        let kv = member.split(';').next()?;
        let (name, value) = kv.split_once('=')?;
        (name.trim() == key).then(|| percent_decode(value.trim()))?
    })
}

/// The members of a `baggage` header as `(name, value, properties)`, values percent-decoded,
/// within the W3C limits (nothing if the header is too long, the first 64 members otherwise);
/// members that do not parse are skipped.
pub(crate) fn members(header: &str) -> impl Iterator<Item = (&str, Cow<'_, str>, &str)> {
    let header = if header.len() > MAX_BAGGAGE_LEN { "" } else { header };
    header.split(',').take(MAX_BAGGAGE_MEMBERS).filter_map(|member| {
        let (kv, props) = member.split_once(';').unwrap_or((member, ""));
        let (name, value) = kv.split_once('=')?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'=' | b'\\'));
        valid_name.then_some(())?;
        Some((name, percent_decode(value.trim())?, props.trim()))
    })
}

/// `header` with every member named `key` removed; `None` if there was none.
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the `http` adapters
pub(crate) fn without_member(header: &str, key: &str) -> Option<String> {
    if !header.split(',').any(|m| member_name(m) == key) {
        return None;
    }
    let kept: Vec<&str> = header.split(',').filter(|m| member_name(m) != key).collect();
    Some(kept.join(",").trim().to_owned())
}

/// `header` (if any) with member `key` set to `value`, other members kept. `None` if the result
/// would break the W3C limits, in which case the header should be left as it was.
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the `http` adapters
pub(crate) fn with_member(header: Option<&str>, key: &str, value: &str) -> Option<String> {
    let mut out = match header {
        Some(h) => without_member(h, key).unwrap_or_else(|| h.trim().to_owned()),
        None => String::new(),
    };
    let members = out.split(',').filter(|m| !m.trim().is_empty()).count();
    if members >= MAX_BAGGAGE_MEMBERS {
        return None;
    }
    if !out.is_empty() {
        out.push(',');
    }
    encode_member(&mut out, key, value, "");
    (out.len() <= MAX_BAGGAGE_LEN).then_some(out)
}

/// A copy of `baggage` with member `key` removed, then set to `value` if given. Other members
/// come first, so if the baggage is at its limits the member is what gets dropped.
pub(crate) fn replace_member(baggage: &Baggage, key: &str, value: Option<&str>) -> Baggage {
    baggage
        .iter()
        .filter(|(name, _)| name.as_str() != key)
        .map(|(name, (v, m))| (name.clone(), (v.clone(), m.clone())))
        .chain(value.map(|v| {
            (Key::from(key.to_owned()), (StringValue::from(v.to_owned()), BaggageMetadata::default()))
        }))
        .collect()
}

/// Serialises `baggage` without member `key`, as the OpenTelemetry SDK's `BaggagePropagator`
/// would, then adds `key=value` if it fits.
pub(crate) fn serialize_with(baggage: &Baggage, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for (name, (v, metadata)) in baggage.iter() {
        if name.as_str() == key {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        encode_member(&mut out, name.as_str(), v.as_str(), metadata.as_str());
        count += 1;
    }
    let before = out.len();
    if count < MAX_BAGGAGE_MEMBERS {
        if !out.is_empty() {
            out.push(',');
        }
        encode_member(&mut out, key, value, "");
        if out.len() > MAX_BAGGAGE_LEN {
            out.truncate(before);
        }
    }
    out
}

fn encode_member(out: &mut String, key: &str, value: &str, metadata: &str) {
    percent_encode(out, key.trim());
    out.push('=');
    percent_encode(out, value.trim());
    let metadata = metadata.trim();
    if !metadata.is_empty() {
        out.push(';');
        out.push_str(metadata);
    }
}

fn percent_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'"' | b';' | b',' | b'=' | b'%') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_member_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("synthetic=abc", Some("abc")),
            (" a=1 , synthetic = abc ;prop=1, b=2", Some("abc")),
            ("a=1,b=2", None),
            ("synthetic", None),
            ("synthetic=a%2Eb", Some("a.b")),
            ("synthetic=a%2", None),
            ("synthetic=%FF", None),
            ("synthetic-x=1,xsynthetic=2", None),
        ];
        for (header, want) in cases {
            assert_eq!(find_member(header, "synthetic").as_deref(), *want, "{header}");
        }
        let too_long = format!("a={},synthetic=abc", "x".repeat(MAX_BAGGAGE_LEN));
        assert_eq!(find_member(&too_long, "synthetic"), None);
        let too_many = format!("{}synthetic=abc", "a=1,".repeat(MAX_BAGGAGE_MEMBERS));
        assert_eq!(find_member(&too_many, "synthetic"), None);
    }

    #[test]
    fn members_table() {
        let got: Vec<(String, String, String)> = members(" a=1 ;p=q, b = x%20y ,bad, =v, c=%ZZ, d=")
            .map(|(n, v, p)| (n.to_owned(), v.into_owned(), p.to_owned()))
            .collect();
        let want = [("a", "1", "p=q"), ("b", "x y", ""), ("d", "", "")];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((n, v, p), (wn, wv, wp)) in got.iter().zip(want) {
            assert_eq!((n.as_str(), v.as_str(), p.as_str()), (wn, wv, wp));
        }
        assert_eq!(members(&"a=1,".repeat(100)).count(), MAX_BAGGAGE_MEMBERS);
        assert_eq!(members(&format!("a={}", "x".repeat(MAX_BAGGAGE_LEN))).count(), 0);
    }

    #[test]
    fn with_and_without_keep_other_members() {
        assert_eq!(with_member(None, "synthetic", "t").as_deref(), Some("synthetic=t"));
        assert_eq!(
            with_member(Some("a=1;p,synthetic=old,b=2"), "synthetic", "t").as_deref(),
            Some("a=1;p,b=2,synthetic=t")
        );
        assert_eq!(without_member("a=1,synthetic=t,b=2", "synthetic").as_deref(), Some("a=1,b=2"));
        assert_eq!(without_member("a=1", "synthetic"), None);
        let full = "a=1,".repeat(MAX_BAGGAGE_MEMBERS);
        assert_eq!(with_member(Some(full.trim_end_matches(',')), "synthetic", "t"), None);
    }
}
