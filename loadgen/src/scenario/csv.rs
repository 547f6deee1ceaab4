//! A small CSV reader for data feeders: a header row, comma-separated fields, `"quoted"`
//! fields with `""` escapes.

use std::{path::Path, sync::Arc};

/// Column names and rows (each as long as the header).
pub(crate) type Table = (Vec<String>, Vec<Arc<[String]>>);

/// Reads `path`.
pub(crate) fn read(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text)
}

pub(crate) fn parse(text: &str) -> Result<Table, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("the file is empty; it needs a header row")?;
    let columns = split(header).map_err(|e| format!("line 1: {e}"))?;
    if columns.iter().any(|c| c.is_empty()) {
        return Err("line 1: a column name is empty".into());
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let fields = split(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if fields.len() != columns.len() {
            return Err(format!("line {}: {} fields, the header has {}", i + 1, fields.len(), columns.len()));
        }
        rows.push(Arc::from(fields));
    }
    Ok((columns, rows))
}

fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("unexpected `{c}` after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_owned());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            field = field.trim().to_owned();
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let (cols, rows) =
            parse("email,password\na@x.invalid, p1\n\n\"b,c@x.invalid\",\"say \"\"hi\"\"\"\n").unwrap();
        assert_eq!(cols, ["email", "password"]);
        assert_eq!(&*rows[0], ["a@x.invalid", "p1"]);
        assert_eq!(&*rows[1], ["b,c@x.invalid", "say \"hi\""]);
        assert!(parse("a,b\n1\n").unwrap_err().contains("line 2: 1 fields"));
        assert!(parse("").is_err());
        assert!(parse("a\n\"x\n").is_err());
    }
}
