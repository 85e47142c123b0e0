//! Diagnostics: a byte span in the config text becomes `FILE:LINE:COL` (1-based, column counted
//! in characters), followed by the field path and the message. `FILE` is the main config or the
//! included file (`include = [...]`) that holds the span.

use std::fmt;
use std::ops::Range;

/// One problem in a config file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file as named by the caller.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Field path such as `connection[0].tunnel[1].psk_file`; empty for syntax errors.
    pub path: String,
    /// What is wrong, and where useful, what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        /// The config file as named by the caller.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config: one or more problems, sorted by position.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The positioned problems (empty for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

fn display_lines(d: &[Diagnostic]) -> String {
    let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// One file of the config (the main file or an included one) and where its text sits in the
/// sink's offset space.
#[derive(Debug)]
struct Segment<'a> {
    file: &'a str,
    text: &'a str,
    /// Offset of the file's first byte in the sink's offset space.
    base: usize,
    /// Byte offset (within the file) of the start of each line.
    line_starts: Vec<usize>,
}

/// Collects diagnostics for a config and turns offsets into positions.
///
/// The main file and each included file are segments of one offset space: the main file starts
/// at 0 and each added file one byte past the end of the previous one, so an offset names its
/// file as well as its byte, and the cross-field rules can compare places in different files
/// without knowing about files.
#[derive(Debug)]
pub(crate) struct Sink<'a> {
    /// Sorted by `base`; the first is the main file.
    segments: Vec<Segment<'a>>,
    /// (offset, diagnostic), sorted at the end.
    found: Vec<(usize, Diagnostic)>,
}

impl<'a> Segment<'a> {
    fn new(file: &'a str, text: &'a str, base: usize) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Segment {
            file,
            text,
            base,
            line_starts,
        }
    }

    /// 1-based (line, column) of a byte offset within this file; an offset inside a multi-byte
    /// character counts as that character.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..)
            .unwrap_or("")
            .char_indices()
            .take_while(|(i, _)| start + i < offset)
            .count()
            + 1;
        (line, column)
    }
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Sink {
            segments: vec![Segment::new(file, text, 0)],
            found: Vec::new(),
        }
    }

    /// Adds an included file; returns the offset of its first byte, to be added to every span
    /// taken from its text.
    pub(crate) fn add_file(&mut self, file: &'a str, text: &'a str) -> usize {
        let base = self
            .segments
            .last()
            .map_or(0, |s| s.base + s.text.len() + 1);
        self.segments.push(Segment::new(file, text, base));
        base
    }

    fn segment(&self, offset: usize) -> &Segment<'a> {
        let i = self.segments.partition_point(|s| s.base <= offset).max(1);
        &self.segments[i - 1]
    }

    /// 1-based (line, column) of an offset, within the file that holds it.
    #[cfg(test)]
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let s = self.segment(offset);
        s.position(offset - s.base)
    }

    /// The name of the file that holds an offset.
    #[cfg(test)]
    pub(crate) fn file_of(&self, offset: usize) -> &'a str {
        self.segment(offset).file
    }

    /// How a diagnostic at `here` names the place `there` (an earlier occurrence): `line 3` in
    /// the same file, `FILE:3:5` in another one.
    pub(crate) fn place(&self, there: usize, here: usize) -> String {
        let (a, b) = (self.segment(there), self.segment(here));
        let (line, column) = a.position(there - a.base);
        if a.base == b.base {
            format!("line {line}")
        } else {
            format!("{}:{line}:{column}", a.file)
        }
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, path: &str, message: impl Into<String>) {
        let s = self.segment(span.start);
        let (line, column) = s.position(span.start - s.base);
        let file = s.file.to_owned();
        // Keys and values quoted in messages come from the file: keep each diagnostic on one line.
        let (path, message) = (one_line(path), one_line(&message.into()));
        self.found.push((
            span.start,
            Diagnostic {
                file,
                line,
                column,
                path,
                message,
            },
        ));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// All diagnostics in file order (main file first, then the included files in the order
    /// they were read; stable for equal positions), duplicates removed.
    pub(crate) fn into_error(self) -> ConfigError {
        let mut found = self.found;
        found.sort_by_key(|(offset, _)| *offset);
        let mut out: Vec<Diagnostic> = Vec::with_capacity(found.len());
        for (_, d) in found {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        ConfigError::Invalid(out)
    }
}

/// Control characters escaped (`\n` -> `\\n`), everything else kept.
pub(crate) fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let sink = Sink::new("f", "ab\nçd = 1\n\nx");
        assert_eq!(sink.position(0), (1, 1));
        assert_eq!(sink.position(1), (1, 2));
        assert_eq!(sink.position(3), (2, 1));
        // 'ç' is two bytes: 'd' is the second character.
        assert_eq!(sink.position(5), (2, 2));
        assert_eq!(sink.position(11), (3, 1));
        assert_eq!(sink.position(12), (4, 1));
        assert_eq!(sink.position(999), (4, 2));
    }

    #[test]
    fn an_added_file_has_its_own_lines_and_earlier_places_name_their_file() {
        let mut sink = Sink::new("main", "a\nb\n");
        let base = sink.add_file("inc", "x\n  y");
        assert_eq!(base, 5);
        assert_eq!(sink.position(base + 4), (2, 3));
        assert_eq!(sink.file_of(base + 4), "inc");
        assert_eq!(sink.file_of(2), "main");
        assert_eq!(sink.place(base, base + 4), "line 1");
        assert_eq!(sink.place(2, base + 4), "main:2:1");
    }

    #[test]
    fn quoted_text_with_control_characters_stays_on_one_line() {
        let mut sink = Sink::new("f", "x");
        sink.error(&(0..1), "a\nb", "bad \"x\ty\"");
        let e = sink.into_error().to_string();
        assert_eq!(e, "f:1:1: a\\nb: bad \"x\\ty\"");
    }
}
