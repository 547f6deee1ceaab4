//! The little of W3C baggage this crate needs: find, add and remove one member, within the
//! W3C limits, keeping every other member as it was.
//!
//! A request may carry several `baggage` lines (RFC 9110 and W3C allow it); they are one list,
//! as if joined with `,`. The limits below apply to that whole list, and only to the members
//! that are passed on: the marker member is looked for in every line, whatever the member count
//! or length, because a marker that is silently missed makes a synthetic request run as a real
//! one, with real side effects.

use std::{borrow::Cow, fmt::Write as _};

use opentelemetry::{
    Key, StringValue,
    baggage::{Baggage, BaggageMetadata},
};

/// Longest baggage (all `baggage` lines together) whose members a receiver passes on (W3C);
/// longer baggage is not passed on at all. The marker member is found and judged regardless.
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// Most members a receiver passes on (W3C), counted over all `baggage` lines; later ones are
/// dropped. The marker member is found and judged wherever it is.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// The name of one list member (the text before `=` or `;`), trimmed.
fn member_name(member: &[u8]) -> &[u8] {
    let end = member.iter().position(|b| matches!(b, b'=' | b';')).unwrap_or(member.len());
    member[..end].trim_ascii()
}

/// Whether `name` is `key`, also when percent-encoded (`synth%65tic`): the OpenTelemetry SDK's
/// `BaggagePropagator` decodes names, so for it that member is the marker too.
pub(crate) fn is_key(name: &[u8], key: &str) -> bool {
    name == key.as_bytes()
        || (name.contains(&b'%')
            && std::str::from_utf8(name).ok().and_then(percent_decode).is_some_and(|n| n == key))
}

/// Whether one list member (a `,`-separated piece of a line) is named `key`.
fn is_member(member: &[u8], key: &str) -> bool {
    is_key(member_name(member), key)
}

/// What the members named [`BAGGAGE_KEY`](crate::BAGGAGE_KEY) of a request's baggage say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MarkerMember<'a> {
    /// No such member in any line.
    Absent,
    /// One value, perhaps repeated. Percent-decoded; the raw text when it does not decode and
    /// empty when the member has no `=`, so that it then fails verification as malformed
    /// instead of passing as absent.
    One(Cow<'a, str>),
    /// Members with different values: which one counts is ambiguous.
    Conflicting,
}

/// Looks for member `key` in every line of a request's baggage. No W3C limit applies here
/// (see the module docs); the work is one pass over the bytes, allocating only to decode a
/// percent-encoded marker.
pub(crate) fn find_marker_member<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
    key: &str,
) -> MarkerMember<'a> {
    let mut found: Option<Cow<'a, str>> = None;
    for member in lines.into_iter().flat_map(|line| line.split(|b| *b == b',')) {
        if !is_member(member, key) {
            continue;
        }
        let value = member_value(member);
        match &found {
            None => found = Some(value),
            Some(first) if *first == value => {}
            Some(_) => return MarkerMember::Conflicting,
        }
    }
    found.map_or(MarkerMember::Absent, MarkerMember::One)
}

/// The value of a member, decoded; see [`MarkerMember::One`] for the text that does not decode.
fn member_value(member: &[u8]) -> Cow<'_, str> {
    let kv = member.split(|b| *b == b';').next().unwrap_or_default();
    let Some(eq) = kv.iter().position(|b| *b == b'=') else {
        return Cow::Borrowed("");
    };
    match std::str::from_utf8(kv[eq + 1..].trim_ascii()) {
        Ok(raw) => percent_decode(raw).unwrap_or(Cow::Borrowed(raw)),
        Err(_) => String::from_utf8_lossy(kv[eq + 1..].trim_ascii()),
    }
}

/// The members of a request's baggage (its lines, in order) as `(name, value, properties)`,
/// values percent-decoded, within the W3C limits counted over all lines together (nothing if
/// they are too long together, the first 64 members otherwise); members that do not parse are
/// skipped.
pub(crate) fn members<'a>(lines: &[&'a str]) -> impl Iterator<Item = (&'a str, Cow<'a, str>, &'a str)> {
    // As if joined with `,`: the lines plus one separator between each two.
    let len = lines.iter().map(|l| l.len()).sum::<usize>() + lines.len().saturating_sub(1);
    let lines = if len > MAX_BAGGAGE_LEN { &[][..] } else { lines };
    lines.iter().flat_map(|line| line.split(',')).take(MAX_BAGGAGE_MEMBERS).filter_map(|member| {
        let (kv, props) = member.split_once(';').unwrap_or((member, ""));
        let (name, value) = kv.split_once('=')?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'=' | b'\\'));
        valid_name.then_some(())?;
        Some((name, percent_decode(value.trim())?, props.trim()))
    })
}

/// `line` with every member named `key` removed, trimmed; `None` if there was none. Works on
/// bytes so that a line that is not UTF-8 is stripped too.
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the `http` adapters
pub(crate) fn without_member_bytes(line: &[u8], key: &str) -> Option<Vec<u8>> {
    if !line.split(|b| *b == b',').any(|m| is_member(m, key)) {
        return None;
    }
    let mut out = Vec::with_capacity(line.len());
    for (i, member) in line.split(|b| *b == b',').filter(|m| !is_member(m, key)).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(member);
    }
    Some(out.trim_ascii().to_vec())
}

/// `header` with every member named `key` removed; `None` if there was none.
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the `http` adapters
pub(crate) fn without_member(header: &str, key: &str) -> Option<String> {
    if !header.split(',').any(|m| is_member(m.as_bytes(), key)) {
        return None;
    }
    let kept: Vec<&str> = header.split(',').filter(|m| !is_member(m.as_bytes(), key)).collect();
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
    fn marker_member_table() {
        use MarkerMember::{Absent, Conflicting};
        let one = |v: &str| MarkerMember::One(Cow::Owned(v.to_owned()));
        let pad_members = "a=1,".repeat(MAX_BAGGAGE_MEMBERS);
        let pad_len = format!("a={}", "x".repeat(MAX_BAGGAGE_LEN));
        let cases: Vec<(Vec<&str>, MarkerMember<'_>)> = vec![
            (vec!["synthetic=abc"], one("abc")),
            (vec![" a=1 , synthetic = abc ;prop=1, b=2"], one("abc")),
            (vec!["a=1,b=2"], Absent),
            (vec![], Absent),
            (vec!["synthetic-x=1,xsynthetic=2"], Absent),
            (vec!["synthetic=a%2Eb"], one("a.b")),
            // Present but not decodable: kept raw, so verification refuses it as malformed.
            (vec!["synthetic=a%2"], one("a%2")),
            (vec!["synthetic=%FF"], one("%FF")),
            (vec!["synthetic"], one("")),
            (vec!["synthetic;p=1"], one("")),
            // A percent-encoded name is still the marker (the OTel SDK decodes names).
            (vec!["synth%65tic=abc"], one("abc")),
            // Every line is read.
            (vec!["a=1", "synthetic=abc"], one("abc")),
            (vec!["a=1", "", "b=2,synthetic=abc"], one("abc")),
            // Past the 64th member, in a line that makes the whole over 8 KiB.
            (vec![&pad_members, "synthetic=abc"], one("abc")),
            (vec![&pad_len, "synthetic=abc"], one("abc")),
            // The same marker twice is one marker; two different ones are ambiguous.
            (vec!["synthetic=abc", "synthetic=abc"], one("abc")),
            (vec!["synthetic=abc,synthetic=a%62c"], one("abc")),
            (vec!["synthetic=abc,synthetic=abd"], Conflicting),
            (vec!["synthetic=abc", "a=1,synthetic=abd"], Conflicting),
            (vec!["synthetic=abc", "synthetic"], Conflicting),
        ];
        for (lines, want) in &cases {
            let got = find_marker_member(lines.iter().map(|l| l.as_bytes()), "synthetic");
            assert_eq!(&got, want, "{lines:?}");
        }
        let lossy = find_marker_member([&b"synthetic=v1\xff"[..]], "synthetic");
        assert_eq!(lossy, MarkerMember::One(Cow::Borrowed("v1\u{fffd}")));
    }

    #[test]
    fn members_table() {
        let got: Vec<(String, String, String)> = members(&[" a=1 ;p=q, b = x%20y ,bad, =v, c=%ZZ, d="])
            .map(|(n, v, p)| (n.to_owned(), v.into_owned(), p.to_owned()))
            .collect();
        let want = [("a", "1", "p=q"), ("b", "x y", ""), ("d", "", "")];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((n, v, p), (wn, wv, wp)) in got.iter().zip(want) {
            assert_eq!((n.as_str(), v.as_str(), p.as_str()), (wn, wv, wp));
        }
        assert_eq!(members(&[&"a=1,".repeat(100)]).count(), MAX_BAGGAGE_MEMBERS);
        assert_eq!(members(&[&format!("a={}", "x".repeat(MAX_BAGGAGE_LEN))]).count(), 0);
        // The limits count all lines together.
        let half = "a=1,".repeat(40);
        assert_eq!(members(&[half.trim_end_matches(','), half.trim_end_matches(',')]).count(), 64);
        let big = format!("a={}", "x".repeat(MAX_BAGGAGE_LEN / 2));
        assert_eq!(members(&[&big, &big]).count(), 0);
        assert_eq!(members(&["a=1", "b=2"]).count(), 2);
    }

    #[test]
    fn without_member_bytes_strips_every_marker_and_keeps_the_rest() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"a=1", None),
            (b"synthetic=x", Some(b"")),
            (b" synthetic = x ; p , b=2", Some(b"b=2")),
            (b"a=1,synthetic=x,synth%65tic=y,b=\xff", Some(b"a=1,b=\xff")),
            (b"synthetic", Some(b"")),
        ];
        for (line, want) in cases {
            assert_eq!(without_member_bytes(line, "synthetic").as_deref(), *want, "{line:?}");
        }
    }

    #[test]
    fn with_and_without_keep_other_members() {
        assert_eq!(with_member(None, "synthetic", "t").as_deref(), Some("synthetic=t"));
        assert_eq!(
            with_member(Some("a=1;p,synthetic=old,b=2"), "synthetic", "t").as_deref(),
            Some("a=1;p,b=2,synthetic=t")
        );
        assert_eq!(without_member("a=1,synthetic=t,b=2", "synthetic").as_deref(), Some("a=1,b=2"));
        assert_eq!(without_member("a=1,synth%65tic=t", "synthetic").as_deref(), Some("a=1"));
        assert_eq!(without_member("a=1", "synthetic"), None);
        let full = "a=1,".repeat(MAX_BAGGAGE_MEMBERS);
        assert_eq!(with_member(Some(full.trim_end_matches(',')), "synthetic", "t"), None);
    }
}
