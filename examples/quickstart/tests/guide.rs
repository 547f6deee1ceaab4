//! The guide's "Quickstart" section is these files: its code blocks, in order, byte for byte.
//! The example is what compiles and what the other test runs, so the guide cannot show code that
//! does not build or does something else.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::Path;

/// The fenced blocks of `section` (from `## {section}` to the next `## `): their info strings
/// and their contents, each line with its newline.
fn blocks(markdown: &str, section: &str) -> Vec<(String, String)> {
    let heading = format!("## {section}");
    let mut lines = markdown.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no `{heading}` heading");
    let mut found = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in lines.take_while(|l| !l.starts_with("## ")) {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.to_owned(), String::new())),
            (Some(_), Some("")) => found.extend(open.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block in `{heading}`");
    found
}

#[test]
fn the_guides_quickstart_blocks_are_the_example_files_byte_for_byte() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(example.join("../../docs/guide.md")).unwrap();
    let blocks = blocks(&guide, "Quickstart");
    let files = [("toml", "Cargo.toml"), ("rust,ignore", "src/main.rs"), ("yaml", "quickstart.yaml")];
    for (i, (info, file)) in files.iter().enumerate() {
        let (block_info, block) =
            blocks.get(i).unwrap_or_else(|| panic!("no block {i} ({file}) in the guide"));
        assert_eq!(block_info, info, "block {i} should be {file}");
        let text = std::fs::read_to_string(example.join(file)).unwrap();
        // Line by line first, so a drift names its line rather than dumping two whole files.
        for (n, (want, got)) in text.lines().zip(block.lines()).enumerate() {
            assert_eq!(got, want, "docs/guide.md's {file} differs at line {}", n + 1);
        }
        assert_eq!(block, &text, "docs/guide.md's {file} block is not the file (length or final newline)");
    }
}

#[test]
fn the_block_reader_finds_blocks_only_under_their_heading() {
    let md = "## Other\n```rust\nno\n```\n## Quickstart\ntext\n```toml\na = 1\n\n```\n```sh\nrun\n```\n## Next\n```rust\nno\n```\n";
    assert_eq!(
        blocks(md, "Quickstart"),
        [("toml".to_owned(), "a = 1\n\n".to_owned()), ("sh".to_owned(), "run\n".to_owned())]
    );
}
