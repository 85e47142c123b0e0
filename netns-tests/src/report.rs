//! Aligned text tables for people, and a one-line progress indicator for long steps.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A table with a header row; numeric-looking cells are right-aligned, text left-aligned.
#[derive(Debug, Clone, Default)]
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a title and column headers.
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are blank).
    pub fn row<S: ToString>(&mut self, cells: &[S]) {
        self.rows
            .push(cells.iter().map(|c| c.to_string()).collect());
    }

    /// Renders the table.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut w = vec![0usize; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        // A cell is numeric when its first word is a number ("1.5", "315 ms", "0.43 Gbit/s",
        // "1.20x"): those line up on the right.
        let numeric = |s: &str| {
            if s == "-" {
                return true;
            }
            let w = s.split_whitespace().next().unwrap_or("");
            let w = w.trim_end_matches(['%', 'x']);
            !w.is_empty()
                && w.chars().any(|c| c.is_ascii_digit())
                && w.chars().all(|c| c.is_ascii_digit() || ".-+,".contains(c))
        };
        let mut out = String::new();
        if !self.title.is_empty() {
            let _ = writeln!(out, "{}", self.title);
        }
        let line = |out: &mut String, r: &[String], header: bool| {
            let mut l = String::from("  ");
            for (i, width) in w.iter().enumerate() {
                let c = r.get(i).map_or("", String::as_str);
                let pad = width - c.chars().count();
                if i > 0 {
                    l.push_str("  ");
                }
                if !header && numeric(c) {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    l.push_str(&" ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", l.trim_end());
        };
        line(&mut out, &self.header, true);
        let total: usize = w.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
        let _ = writeln!(out, "  {}", "-".repeat(total));
        for r in &self.rows {
            line(&mut out, r, false);
        }
        out
    }
}

/// Prints a step with its elapsed time when done; shows dots while a long step runs.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
}

impl Progress {
    /// Starts a step: prints `  label ...` without a newline.
    #[allow(clippy::print_stderr)]
    pub fn step(label: &str) -> Self {
        eprint!("  {label:<58} ");
        Progress {
            start: Instant::now(),
        }
    }

    /// Runs `f` while printing a dot every second.
    pub fn run<T>(label: &str, f: impl FnOnce() -> T) -> T {
        let p = Progress::step(label);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    n += 1;
                    if n % 10 == 0 {
                        #[allow(clippy::print_stderr)]
                        {
                            eprint!(".");
                        }
                    }
                }
            })
        };
        let r = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticker.join();
        p.done("");
        r
    }

    /// Ends the step: prints `done (1.2 s) note`.
    #[allow(clippy::print_stderr)]
    pub fn done(self, note: &str) {
        eprintln!("done ({:.1} s) {note}", self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_right_aligned_and_text_left_aligned() {
        let mut t = Table::new("T", &["what", "value"]);
        t.row(&["a", "1.5"]);
        t.row(&["longer", "100.25"]);
        t.row(&["unit", "7 ms"]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "T");
        assert_eq!(lines[1], "  what    value");
        assert_eq!(lines[3], "  a          1.5");
        assert_eq!(lines[4], "  longer  100.25");
        assert_eq!(lines[5], "  unit      7 ms");
    }
}
