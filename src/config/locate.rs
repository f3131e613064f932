//! Where in the YAML text a violation's key is, for errors that say `file:line:column`.

use super::Location;

/// Finds the line and column of the key a violation names, by walking the YAML text: each path
/// segment is looked up as a key below the previous one (`[i]` picks the i-th sequence item).
/// Best effort — the parse already succeeded, so the file is well-formed YAML — and `None` when the
/// file uses a layout this walk does not follow.
pub(super) fn locate(text: &str, key: &str) -> Option<Location> {
    let mut segments = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        segments.push(Segment::Key(name.to_string()));
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse::<usize>() {
                segments.push(Segment::Index(i));
            }
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    // (line index, column) of the current node; start before the first line at column 0.
    let mut pos: Option<(usize, usize)> = None;
    let mut best = None;
    for seg in &segments {
        let (from, min_col) = match pos {
            None => (0, 0),
            Some((l, c)) => (l, c),
        };
        let found = match seg {
            Segment::Key(k) => find_key(&lines, from, min_col, pos.is_none(), k),
            Segment::Index(i) => find_item(&lines, from, *i),
        };
        match found {
            Some(p) => {
                pos = Some(p);
                best = Some(Location { line: p.0 + 1, column: p.1 + 1 });
            }
            None => break,
        }
    }
    best
}

enum Segment {
    Key(String),
    Index(usize),
}

/// Finds `key:` (or `key: ` inside a `{ … }` flow mapping) at or after `from`.
fn find_key(lines: &[&str], from: usize, min_col: usize, top: bool, key: &str) -> Option<(usize, usize)> {
    let needles = [format!("{key}:"), format!("\"{key}\":")];
    for (n, line) in lines.iter().enumerate().skip(from) {
        let code = line.split(" #").next().unwrap_or(line);
        for needle in &needles {
            let mut start = 0;
            while let Some(off) = code[start..].find(needle.as_str()) {
                let col = start + off;
                let before = code[..col].chars().last();
                let boundary = matches!(before, None | Some(' ' | '{' | ',' | '-'));
                if boundary && (n > from || col >= min_col) && (!top || col == 0) {
                    return Some((n, col));
                }
                start = col + needle.len();
            }
        }
    }
    None
}

/// Finds the `i`-th `- ` item of the sequence that follows line `from`.
fn find_item(lines: &[&str], from: usize, i: usize) -> Option<(usize, usize)> {
    let mut count = 0;
    let mut item_col = None;
    for (n, line) in lines.iter().enumerate().skip(from + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let col = line.len() - trimmed.len();
        if trimmed.starts_with("- ") || trimmed == "-" {
            match item_col {
                None => item_col = Some(col),
                Some(c) if c != col => continue,
                _ => {}
            }
            if count == i {
                return Some((n, col + 2));
            }
            count += 1;
        } else if item_col.is_some_and(|c| col <= c) {
            // A key at or left of the items' column ends the sequence.
            if item_col.is_some_and(|c| col < c) || !trimmed.starts_with('-') {
                return None;
            }
        }
    }
    None
}
