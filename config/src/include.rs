//! `include = ["conf.d/*.toml"]`: where included files are found and in which order they are read.
//!
//! A pattern is a path relative to the main config's directory (or absolute) whose **last
//! component** may hold `*` wildcards; nothing else is a wildcard:
//! - `*` matches any run of characters within a file name, but not a leading `.` (hidden files
//!   and editor leftovers such as `.branch.toml.swp` stay out, as in `sh`);
//! - `?`, `[`, `]`, `{`, `}` and a `*` in a directory component are refused rather than taken
//!   literally, so nobody is surprised by a glob feature that is not there;
//! - a pattern without `*` names one file, which must exist; a pattern with `*` may match nothing
//!   (a hub whose `conf.d/` is still empty), but its directory must exist;
//! - matches are regular files (symlinks followed: included files hold no secrets), read in
//!   sorted byte order of their names, pattern by pattern; a file matched twice is read once.
//!
//! Why a matcher of our own instead of the `glob` crate: the one feature needed (`*` in the
//! last component, sorted) is a dozen lines, and a dependency would bring `**`, classes and
//! case rules that the documentation would then have to pin down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One included file, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludedFile {
    /// The file as diagnostics name it: the pattern's directory joined with the file name.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Where included files come from: the filesystem ([`FsIncludeFiles`]) or memory
/// ([`MemoryIncludeFiles`], for tests and the fuzz target).
pub trait IncludeFiles {
    /// The files `pattern` names, in the order they are to be read. `Err` is the second half
    /// of a diagnostic whose position is the pattern.
    fn expand(&self, pattern: &str) -> Result<Vec<IncludedFile>, String>;
}

/// Included files on disk, patterns relative to the main config's directory.
#[derive(Debug, Clone)]
pub struct FsIncludeFiles {
    base_dir: PathBuf,
}

impl FsIncludeFiles {
    /// Patterns resolved against `config_path`'s directory.
    pub fn for_config(config_path: &Path) -> Self {
        let base_dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        FsIncludeFiles { base_dir }
    }
}

impl IncludeFiles for FsIncludeFiles {
    fn expand(&self, pattern: &str) -> Result<Vec<IncludedFile>, String> {
        let (dir, last) = split(pattern)?;
        let dir_path = self.base_dir.join(dir);
        let names: Vec<String> = if last.contains('*') {
            let entries = std::fs::read_dir(if dir_path.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &dir_path
            })
            .map_err(|e| format!("cannot list \"{}\": {e}", dir_path.display()))?;
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| matches(last, n))
                .filter(|n| dir_path.join(n).is_file())
                .collect();
            names.sort();
            names
        } else {
            vec![last.to_owned()]
        };
        names
            .into_iter()
            .map(|n| {
                let path = dir_path.join(&n);
                let name = path.display().to_string();
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok(IncludedFile { name, text }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(format!("included file \"{name}\" does not exist"))
                    }
                    Err(e) => Err(format!("cannot read included file \"{name}\": {e}")),
                }
            })
            .collect()
    }
}

/// Included files held in memory, keyed by path as written relative to the main config
/// (`"conf.d/a.toml"`). The same matching rules as on disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryIncludeFiles {
    files: BTreeMap<String, String>,
}

impl MemoryIncludeFiles {
    /// No files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file `path` with `text`.
    pub fn insert(&mut self, path: &str, text: &str) {
        self.files.insert(path.to_owned(), text.to_owned());
    }
}

impl IncludeFiles for MemoryIncludeFiles {
    fn expand(&self, pattern: &str) -> Result<Vec<IncludedFile>, String> {
        let (dir, last) = split(pattern)?;
        let mut out = Vec::new();
        let mut dir_exists = dir.is_empty();
        // BTreeMap order is byte order: the same sort as on disk.
        for (path, text) in &self.files {
            let (d, n) = match path.rsplit_once('/') {
                Some((d, n)) => (d, n),
                None => ("", path.as_str()),
            };
            if d != dir {
                continue;
            }
            dir_exists = true;
            if matches(last, n) {
                out.push(IncludedFile {
                    name: path.clone(),
                    text: text.clone(),
                });
            }
        }
        if !last.contains('*') && out.is_empty() {
            return Err(format!("included file \"{pattern}\" does not exist"));
        }
        if !dir_exists {
            return Err(format!("cannot list \"{dir}\": no such directory"));
        }
        Ok(out)
    }
}

/// `conf.d/*.toml` -> (`conf.d`, `*.toml`), refusing what the matcher does not support.
fn split(pattern: &str) -> Result<(&str, &str), String> {
    if pattern.is_empty() {
        return Err("expected a file name or pattern, found \"\"".into());
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| matches!(c, '?' | '[' | ']' | '{' | '}'))
    {
        return Err(format!(
            "'{c}' is not supported in an include pattern: only '*', in the file name (the last path component)"
        ));
    }
    let (dir, last) = match pattern.rsplit_once('/') {
        Some((d, l)) => (if d.is_empty() { "/" } else { d }, l),
        None => ("", pattern),
    };
    if dir.contains('*') {
        return Err(
            "'*' is supported only in the file name (the last path component), not in a directory"
                .into(),
        );
    }
    if last.is_empty() {
        return Err(format!(
            "include pattern \"{pattern}\" names a directory: add a file name such as \"*.toml\""
        ));
    }
    Ok((dir, last))
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (a leading `.` of
/// `name` only literally).
fn matches(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name must equal the pattern.
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_star_matches_within_the_file_name_but_not_a_leading_dot() {
        assert!(matches("*.toml", "branch-1.toml"));
        assert!(!matches("*.toml", ".toml"));
        assert!(!matches("*.toml", ".branch.toml"));
        assert!(!matches("*.toml", "branch.toml.swp"));
        assert!(matches("b*-*.toml", "branch-1.toml"));
        assert!(!matches("b*-*.toml", "branch1.toml"));
        assert!(matches("a.toml", "a.toml"));
        assert!(!matches("a.toml", "a.tomlx"));
        assert!(matches("*", "x"));
        // The suffix may not overlap the prefix.
        assert!(!matches("ab*ba", "aba"));
    }

    #[test]
    fn patterns_refuse_what_the_matcher_does_not_do() {
        assert_eq!(split("conf.d/*.toml"), Ok(("conf.d", "*.toml")));
        assert_eq!(split("/etc/x.toml"), Ok(("/etc", "x.toml")));
        assert_eq!(split("/x.toml"), Ok(("/", "x.toml")));
        assert!(split("conf.*/a.toml").unwrap_err().contains("directory"));
        assert!(split("conf.d/?.toml").unwrap_err().contains("'?'"));
        assert!(split("conf.d/").unwrap_err().contains("names a directory"));
        assert!(split("").is_err());
    }
}
