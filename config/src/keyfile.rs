//! Key and PSK files: where they are looked up, who may read them, what they hold.
//!
//! Lookup ([`FsKeyFiles`]): a path as written in the config is resolved like this
//! 1. absolute: used as is;
//! 2. a bare file name (no `/`) while `$CREDENTIALS_DIRECTORY` is set (systemd `LoadCredential=`)
//!    and a file of that name exists there: that file;
//! 3. otherwise relative to the directory of the config file.
//!
//! Permissions, as ssh judges a private key: the file (after following symlinks) must be a
//! regular file with no group or world permission bit at all (0600 or 0400 pass, 0640 or 0604
//! fail). A symlink is judged by its target and the message says so. The check is on mode bits,
//! not on access(2), so it holds when running as root, who can read anything.
//!
//! Contents: standard base64 of exactly 32 bytes (44 characters), surrounding whitespace and a
//! final newline allowed. The text read and the decoded bytes live in zeroizing buffers.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::SecretKey;
use crate::values::parse_key_base64;

/// A key file larger than this cannot be a base64 key with whitespace: refuse before reading it.
const MAX_KEY_FILE_LEN: u64 = 1024;

/// Why a key or PSK file could not be used. The message is the second half of a diagnostic
/// whose position is the line naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// No such file.
    #[error("file \"{0}\" does not exist")]
    Missing(String),
    /// Exists but could not be opened or read (or is not a regular file).
    #[error("cannot read \"{0}\": {1}")]
    Unreadable(String, String),
    /// Group or world permission bits set.
    #[error(
        "\"{path}\"{via} is accessible by group or others (mode {mode:04o}): run `chmod 600` on it"
    )]
    Loose {
        /// The path as written.
        path: String,
        /// `" (a symlink to X)"` or empty.
        via: String,
        /// The permission bits.
        mode: u32,
    },
    /// Not base64 of 32 bytes.
    #[error("\"{0}\": {1}")]
    BadContents(String, String),
}

/// Where key and PSK files come from.
pub trait KeyFiles {
    /// Reads and decodes the 32-byte key in the file `path`, written as in the config.
    fn read_key(&self, path: &str) -> Result<SecretKey, KeyFileError>;
    /// Reads a public key file (no permission check: it is not secret).
    fn read_public_key(&self, path: &str) -> Result<[u8; 32], KeyFileError>;
    /// The path as it will be opened (for the `Config`'s `*_file` fields).
    fn resolve(&self, path: &str) -> PathBuf;
}

/// Key files on the filesystem: see the module doc for lookup and permission rules.
#[derive(Debug, Clone)]
pub struct FsKeyFiles {
    base_dir: PathBuf,
    credentials_dir: Option<PathBuf>,
}

impl FsKeyFiles {
    /// Relative paths resolve against `base_dir`; bare names are looked up in `credentials_dir`
    /// first when it is given.
    pub fn new(base_dir: PathBuf, credentials_dir: Option<PathBuf>) -> Self {
        FsKeyFiles {
            base_dir,
            credentials_dir,
        }
    }

    /// For the config file `config_path`: its directory, and `$CREDENTIALS_DIRECTORY` if set.
    pub fn for_config(config_path: &Path) -> Self {
        let base_dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        FsKeyFiles::new(base_dir, credentials_dir)
    }

    fn read_text(&self, path: &str, secret: bool) -> Result<Zeroizing<String>, KeyFileError> {
        let resolved = self.resolve(path);
        let link_target = std::fs::symlink_metadata(&resolved)
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .map(|_| std::fs::read_link(&resolved).map(|t| t.display().to_string()));
        let mut file = std::fs::File::open(&resolved).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeyFileError::Missing(path.to_owned()),
            _ => KeyFileError::Unreadable(path.to_owned(), os_message(&e)),
        })?;
        // Judge the file that was opened, not the name: no window for a swap in between.
        let meta = file
            .metadata()
            .map_err(|e| KeyFileError::Unreadable(path.to_owned(), os_message(&e)))?;
        if !meta.is_file() {
            return Err(KeyFileError::Unreadable(
                path.to_owned(),
                "not a regular file".into(),
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if secret && mode & 0o077 != 0 {
            let via = match link_target {
                Some(Ok(t)) => format!(" (a symlink to \"{t}\")"),
                Some(Err(_)) => " (a symlink)".to_owned(),
                None => String::new(),
            };
            return Err(KeyFileError::Loose {
                path: path.to_owned(),
                via,
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyFileError::BadContents(
                path.to_owned(),
                format!(
                    "file is {} bytes, a key is 44 base64 characters",
                    meta.len()
                ),
            ));
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize));
        file.by_ref()
            .take(MAX_KEY_FILE_LEN)
            .read_to_end(&mut raw)
            .map_err(|e| KeyFileError::Unreadable(path.to_owned(), os_message(&e)))?;
        match std::str::from_utf8(&raw) {
            Ok(s) => Ok(Zeroizing::new(s.to_owned())),
            Err(_) => Err(KeyFileError::BadContents(
                path.to_owned(),
                "invalid base64: the file is not text".into(),
            )),
        }
    }
}

impl KeyFiles for FsKeyFiles {
    fn read_key(&self, path: &str) -> Result<SecretKey, KeyFileError> {
        let text = self.read_text(path, true)?;
        parse_key_base64(&text).map_err(|m| KeyFileError::BadContents(path.to_owned(), m))
    }

    fn read_public_key(&self, path: &str) -> Result<[u8; 32], KeyFileError> {
        let text = self.read_text(path, false)?;
        parse_key_base64(&text)
            .map(|k| *k)
            .map_err(|m| KeyFileError::BadContents(path.to_owned(), m))
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Some(creds) = &self.credentials_dir {
            if !path.contains('/') {
                let candidate = creds.join(p);
                if candidate.symlink_metadata().is_ok() {
                    return candidate;
                }
            }
        }
        self.base_dir.join(p)
    }
}

/// Key files held in memory, by the path written in the config: for tests and fuzzing.
/// A path that is not present reads as missing. `Debug` lists the paths only.
#[derive(Default, Clone)]
pub struct MemoryKeyFiles {
    files: BTreeMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for MemoryKeyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.files.keys()).finish()
    }
}

impl MemoryKeyFiles {
    /// No files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file `path` with `contents`.
    pub fn insert(&mut self, path: &str, contents: &str) {
        self.files
            .insert(path.to_owned(), Zeroizing::new(contents.to_owned()));
    }

    fn get(&self, path: &str) -> Result<&str, KeyFileError> {
        self.files
            .get(path)
            .map(|s| s.as_str())
            .ok_or_else(|| KeyFileError::Missing(path.to_owned()))
    }
}

impl KeyFiles for MemoryKeyFiles {
    fn read_key(&self, path: &str) -> Result<SecretKey, KeyFileError> {
        parse_key_base64(self.get(path)?).map_err(|m| KeyFileError::BadContents(path.into(), m))
    }

    fn read_public_key(&self, path: &str) -> Result<[u8; 32], KeyFileError> {
        self.read_key(path).map(|k| *k)
    }

    fn resolve(&self, path: &str) -> PathBuf {
        PathBuf::from(path)
    }
}

/// The OS error text without Rust's " (os error N)" suffix.
fn os_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

    fn write(dir: &Path, name: &str, contents: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn owner_only_modes_are_accepted_and_the_key_decoded() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.key", &format!("{KEY}\n"), 0o600);
        write(dir.path(), "b.key", KEY, 0o400);
        let files = FsKeyFiles::new(dir.path().into(), None);
        assert_eq!(*files.read_key("a.key").unwrap(), [7u8; 32]);
        assert_eq!(*files.read_key("b.key").unwrap(), [7u8; 32]);
    }

    #[test]
    fn any_group_or_world_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = FsKeyFiles::new(dir.path().into(), None);
        for mode in [0o640, 0o604, 0o610, 0o601, 0o644, 0o660] {
            write(dir.path(), "k", KEY, mode);
            assert_eq!(
                files.read_key("k").unwrap_err(),
                KeyFileError::Loose {
                    path: "k".into(),
                    via: String::new(),
                    mode
                }
            );
        }
        // A public key file is not secret.
        assert_eq!(files.read_public_key("k").unwrap(), [7u8; 32]);
    }

    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "loose", KEY, 0o644);
        write(dir.path(), "tight", KEY, 0o600);
        symlink("loose", dir.path().join("to-loose")).unwrap();
        symlink("tight", dir.path().join("to-tight")).unwrap();
        let files = FsKeyFiles::new(dir.path().into(), None);
        assert_eq!(
            files.read_key("to-loose").unwrap_err().to_string(),
            "\"to-loose\" (a symlink to \"loose\") is accessible by group or others (mode 0644): run `chmod 600` on it"
        );
        assert_eq!(*files.read_key("to-tight").unwrap(), [7u8; 32]);
    }

    #[test]
    fn missing_directories_and_bad_contents_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        write(dir.path(), "short", "BwcHBwcHBwcHBwcHBwcHBw==", 0o600);
        let files = FsKeyFiles::new(dir.path().into(), None);
        assert_eq!(
            files.read_key("nope").unwrap_err(),
            KeyFileError::Missing("nope".into())
        );
        assert!(matches!(
            files.read_key("d").unwrap_err(),
            KeyFileError::Unreadable(..)
        ));
        assert_eq!(
            files.read_key("short").unwrap_err().to_string(),
            "\"short\": wrong key length: decodes to 16 bytes, expected 32"
        );
    }

    #[test]
    fn bare_names_are_found_in_the_credentials_directory_first() {
        let conf = tempfile::tempdir().unwrap();
        let creds = tempfile::tempdir().unwrap();
        write(conf.path(), "k", KEY, 0o600);
        write(
            creds.path(),
            "k",
            "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=",
            0o400,
        );
        write(conf.path(), "only-here", KEY, 0o600);
        let files = FsKeyFiles::new(conf.path().into(), Some(creds.path().into()));
        assert_eq!(*files.read_key("k").unwrap(), [8u8; 32]);
        assert_eq!(*files.read_key("only-here").unwrap(), [7u8; 32]);
        assert_eq!(files.resolve("./k"), conf.path().join("./k"));
    }
}
