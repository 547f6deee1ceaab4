//! A small JSON path: `$`, `.key`, `["key"]`, `[index]`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A compiled JSON path such as `$.items[0].id`.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segs: Vec<Seg>,
}

impl JsonPath {
    /// Parses `$.a.b[0]["c d"]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest =
            text.trim().strip_prefix('$').ok_or_else(|| format!("`{text}`: a JSON path starts with `$`"))?;
        let mut segs = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err(format!("`{text}`: empty key after `.`"));
                }
                segs.push(Seg::Key(r[..end].to_owned()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| format!("`{text}`: `[` without `]`"))?;
                let inside = r[..end].trim();
                let seg = if let Some(q) = inside.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Seg::Key(q.to_owned())
                } else if let Some(q) = inside.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    Seg::Key(q.to_owned())
                } else {
                    Seg::Index(inside.parse().map_err(|_| {
                        format!("`{text}`: `[{inside}]` is neither an index nor a quoted key")
                    })?)
                };
                segs.push(seg);
                rest = &r[end + 1..];
            } else {
                return Err(format!("`{text}`: expected `.` or `[` at `{rest}`"));
            }
        }
        Ok(JsonPath { text: text.trim().to_owned(), segs })
    }

    /// The value at this path in `v`.
    pub fn find<'a>(&self, v: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.segs.iter().try_fold(v, |v, s| match s {
            Seg::Key(k) => v.get(k),
            Seg::Index(i) => v.get(i),
        })
    }
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let v = serde_json::json!({"token": "t", "items": [{"id": 7}], "a b": {"c": true}});
        let get = |p: &str| JsonPath::parse(p).unwrap().find(&v).cloned();
        assert_eq!(get("$.token"), Some(serde_json::json!("t")));
        assert_eq!(get("$.items[0].id"), Some(serde_json::json!(7)));
        assert_eq!(get("$[\"a b\"].c"), Some(serde_json::json!(true)));
        assert_eq!(get("$"), Some(v.clone()));
        assert_eq!(get("$.nope"), None);
        for bad in ["token", "$.", "$[x]", "$[0", "$x"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
