//! Key and PSK files: where they are looked up, who may read them, what they hold.
//!
//! Lookup ([`FsKeyFiles`]): a path as written in the config is resolved like this
//! 1. absolute: used as is;
//! 2. a bare file name (no `/`) while `$CREDENTIALS_DIRECTORY` is set (systemd `LoadCredential=`)
//!    and a file of that name exists there: that file;
//! 3. otherwise relative to the directory of the config file.
//!
//! Who may have written it, as ssh's `StrictModes` judges a private key. The directory is opened
//! first and checked on its descriptor; then the file is opened *relative to that descriptor*
//! with `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat` on the opened descriptor, so nothing can
//! be swapped between the check and the read:
//! - the directory belongs to the daemon's user (euid) or root and is not writable by group or
//!   others (whoever can write it can replace the file; sticky or not, we refuse);
//! - the file is not a symlink: a symlink is refused, not followed, because whoever controls the
//!   link (or the directory it lives in, or any directory on the way to its target) could point it
//!   at a key of their choosing, and the checks above would judge the wrong directory;
//! - it is a regular file: a FIFO, device or socket is refused (opened non-blocking, so a FIFO
//!   with no writer cannot hang a reload);
//! - it belongs to the daemon's user or root;
//! - a private key or PSK has no group or world permission bit at all (0600 or 0400 pass, 0640
//!   or 0604 fail); a public key file is not secret but must not be writable by group or others
//!   (a swapped peer key is an impersonation). The check is on mode bits, not on access(2), so it
//!   holds when running as root, who can read anything.
//!
//! Every refusal names the file and says how to fix it.
//!
//! Contents: standard base64 of exactly 32 bytes (44 characters), surrounding whitespace and a
//! final newline allowed. The text read and the decoded bytes live in zeroizing buffers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

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
    /// Exists but could not be opened or read.
    #[error("cannot read \"{0}\": {1}")]
    Unreadable(String, String),
    /// A symlink: refused, not followed (see the module doc).
    #[error(
        "\"{path}\" is a symlink{target}: a key file must be the file itself (whoever controls a link can swap the key): replace the link with the file it points to"
    )]
    Symlink {
        /// The path as written.
        path: String,
        /// `" to \"X\""` or empty.
        target: String,
    },
    /// A directory, FIFO, device or socket.
    #[error("\"{path}\" is {kind}, not a regular file: put the key in a plain file")]
    NotRegular {
        /// The path as written.
        path: String,
        /// `"a directory"`, `"a FIFO"`, ...
        kind: &'static str,
    },
    /// Owned by neither the daemon's user nor root.
    #[error("\"{path}\" is owned by uid {owner}, {}", owner_advice(*euid, &format!("`chown {euid}` on it")))]
    Owner {
        /// The path as written.
        path: String,
        /// The file's owner.
        owner: u32,
        /// The daemon's effective uid.
        euid: u32,
    },
    /// A private key or PSK with group or world permission bits set.
    #[error("\"{path}\" is accessible by group or others (mode {mode:04o}): run `chmod 600` on it")]
    Loose {
        /// The path as written.
        path: String,
        /// The permission bits.
        mode: u32,
    },
    /// A public key file writable by group or others.
    #[error("\"{path}\" is writable by group or others (mode {mode:04o}): run `chmod go-w` on it")]
    Writable {
        /// The path as written.
        path: String,
        /// The permission bits.
        mode: u32,
    },
    /// The file's directory is writable by group or others: anyone of them could replace it.
    #[error(
        "\"{path}\": its directory \"{dir}\" is writable by group or others (mode {mode:04o}), who could replace the file: run `chmod go-w {dir}` or move the file to a private directory"
    )]
    DirWritable {
        /// The path as written.
        path: String,
        /// The directory, as opened.
        dir: String,
        /// The directory's permission bits.
        mode: u32,
    },
    /// The file's directory belongs to neither the daemon's user nor root.
    #[error(
        "\"{path}\": its directory \"{dir}\" is owned by uid {owner}, who could replace the file; {}",
        owner_advice(*euid, &format!("`chown {euid} {dir}` or move the file"))
    )]
    DirOwner {
        /// The path as written.
        path: String,
        /// The directory, as opened.
        dir: String,
        /// The directory's owner.
        owner: u32,
        /// The daemon's effective uid.
        euid: u32,
    },
    /// Not base64 of 32 bytes.
    #[error("\"{0}\": {1}")]
    BadContents(String, String),
}

/// What to do about a key file (or its directory) owned by another user. Run by a normal user,
/// the file must be the daemon user's or root's. Run as root, the usual case is `tandem check`
/// by an operator on the package's layout, where the files belong to the service user
/// `tandem`: root refuses them (that user could swap a key under root's daemon), and the useful
/// advice is to check as the service does, not to hand the keys to root.
fn owner_advice(euid: u32, chown: &str) -> String {
    if euid == 0 {
        format!(
            "and run as root tandem refuses key files another user could replace. If the daemon \
             runs as that user (the package's service runs as `tandem`), check as it does: \
             `runuser -u tandem -- tandem check -c CONFIG`; if root runs the daemon, run {chown}"
        )
    } else {
        format!(
            "but key files must belong to the user the daemon runs as (uid {euid}) or to root: \
             run {chown}"
        )
    }
}

/// Where key and PSK files come from.
pub trait KeyFiles {
    /// Reads and decodes the 32-byte key in the file `path`, written as in the config.
    fn read_key(&self, path: &str) -> Result<SecretKey, KeyFileError>;
    /// Reads a public key file (no permission check: it is not secret).
    fn read_public_key(&self, path: &str) -> Result<[u8; 32], KeyFileError>;
    /// Reads a secret file's text with the checks of a key file (an IKEv2 PSK in ASCII).
    fn read_secret_text(&self, path: &str) -> Result<Zeroizing<String>, KeyFileError>;
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
        let (mut file, size) = open_checked(path, &resolved, secret)?;
        if size > MAX_KEY_FILE_LEN {
            return Err(KeyFileError::BadContents(
                path.to_owned(),
                format!("file is {size} bytes, a key is 44 base64 characters"),
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

/// Opens the key file `resolved` (written `path` in the config) with every check of the module
/// doc done on descriptors: its directory first, then the file relative to that directory.
/// Returns the file and its size.
fn open_checked(path: &str, resolved: &Path, secret: bool) -> Result<(File, u64), KeyFileError> {
    let unreadable = |e: std::io::Error| KeyFileError::Unreadable(path.to_owned(), os_message(&e));
    let (dir, name) = match (resolved.parent(), resolved.file_name()) {
        (Some(d), Some(n)) if d.as_os_str().is_empty() => (Path::new("."), n),
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(KeyFileError::NotRegular {
                path: path.to_owned(),
                kind: "not a file name",
            });
        }
    };
    let euid = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == euid || uid == 0;

    // O_PATH: no read permission needed on the directory, only search.
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => KeyFileError::Missing(path.to_owned()),
        e => unreadable(e.into()),
    })?;
    let dir_stat = rustix::fs::fstat(&dir_fd).map_err(|e| unreadable(e.into()))?;
    if !trusted(dir_stat.st_uid) {
        return Err(KeyFileError::DirOwner {
            path: path.to_owned(),
            dir: dir.display().to_string(),
            owner: dir_stat.st_uid,
            euid,
        });
    }
    let dir_mode = dir_stat.st_mode & 0o7777;
    if dir_mode & 0o022 != 0 {
        return Err(KeyFileError::DirWritable {
            path: path.to_owned(),
            dir: dir.display().to_string(),
            mode: dir_mode,
        });
    }

    // O_NONBLOCK: opening a FIFO for reading waits for a writer otherwise.
    let fd = rustix::fs::openat(
        &dir_fd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(KeyFileError::Missing(path.to_owned())),
        // ELOOP (a symlink under O_NOFOLLOW), ENXIO (a socket), EACCES...: say what is there.
        Err(e) => {
            return Err(
                match rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_symlink() => {
                        KeyFileError::Symlink {
                            path: path.to_owned(),
                            target: rustix::fs::readlinkat(&dir_fd, name, Vec::new())
                                .map(|t| format!(" to \"{}\"", t.to_string_lossy()))
                                .unwrap_or_default(),
                        }
                    }
                    Ok(st) => match kind_of(rustix::fs::FileType::from_raw_mode(st.st_mode)) {
                        Some(kind) => KeyFileError::NotRegular {
                            path: path.to_owned(),
                            kind,
                        },
                        None => unreadable(e.into()),
                    },
                    Err(_) => unreadable(e.into()),
                },
            );
        }
    };
    // Judge the file that was opened, not the name: no window for a swap in between.
    let st = rustix::fs::fstat(&fd).map_err(|e| unreadable(e.into()))?;
    if let Some(kind) = kind_of(rustix::fs::FileType::from_raw_mode(st.st_mode)) {
        return Err(KeyFileError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    if !trusted(st.st_uid) {
        return Err(KeyFileError::Owner {
            path: path.to_owned(),
            owner: st.st_uid,
            euid,
        });
    }
    let mode = st.st_mode & 0o7777;
    if secret && mode & 0o077 != 0 {
        return Err(KeyFileError::Loose {
            path: path.to_owned(),
            mode,
        });
    }
    if !secret && mode & 0o022 != 0 {
        return Err(KeyFileError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    // A negative size cannot come from fstat of a regular file; refuse rather than read.
    let size = u64::try_from(st.st_size)
        .map_err(|_| KeyFileError::Unreadable(path.to_owned(), "negative file size".to_owned()))?;
    Ok((File::from(fd), size))
}

/// What a file that is not a regular file is, for the message (`None`: a regular file).
fn kind_of(ft: rustix::fs::FileType) -> Option<&'static str> {
    use rustix::fs::FileType as T;
    match ft {
        T::RegularFile => None,
        T::Directory => Some("a directory"),
        T::Fifo => Some("a FIFO"),
        T::Socket => Some("a socket"),
        T::CharacterDevice | T::BlockDevice => Some("a device"),
        T::Symlink => Some("a symlink"),
        T::Unknown => Some("not a regular file"),
    }
}

impl KeyFiles for FsKeyFiles {
    fn read_key(&self, path: &str) -> Result<SecretKey, KeyFileError> {
        let text = self.read_text(path, true)?;
        parse_key_base64(&text).map_err(|m| KeyFileError::BadContents(path.to_owned(), m))
    }

    fn read_secret_text(&self, path: &str) -> Result<Zeroizing<String>, KeyFileError> {
        self.read_text(path, true)
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

    fn read_secret_text(&self, path: &str) -> Result<Zeroizing<String>, KeyFileError> {
        self.get(path).map(|s| Zeroizing::new(s.to_owned()))
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
    use std::os::unix::fs::{PermissionsExt as _, symlink};

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
                    mode
                }
            );
        }
        // A public key file is not secret: readable by all is fine, writable by others is not.
        write(dir.path(), "k", KEY, 0o644);
        assert_eq!(files.read_public_key("k").unwrap(), [7u8; 32]);
        for mode in [0o664, 0o646] {
            write(dir.path(), "k", KEY, mode);
            assert_eq!(
                files.read_public_key("k").unwrap_err().to_string(),
                format!(
                    "\"k\" is writable by group or others (mode {mode:04o}): run `chmod go-w` on it"
                )
            );
        }
    }

    #[test]
    fn a_symlink_is_refused_not_followed_even_to_a_tight_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "loose", KEY, 0o644);
        write(dir.path(), "tight", KEY, 0o600);
        symlink("loose", dir.path().join("to-loose")).unwrap();
        symlink("tight", dir.path().join("to-tight")).unwrap();
        let files = FsKeyFiles::new(dir.path().into(), None);
        for (link, target) in [("to-loose", "loose"), ("to-tight", "tight")] {
            assert_eq!(
                files.read_key(link).unwrap_err().to_string(),
                format!(
                    "\"{link}\" is a symlink to \"{target}\": a key file must be the file itself \
                     (whoever controls a link can swap the key): replace the link with the file it points to"
                )
            );
            assert!(matches!(
                files.read_public_key(link).unwrap_err(),
                KeyFileError::Symlink { .. }
            ));
        }
        // The target itself is fine.
        assert_eq!(*files.read_key("tight").unwrap(), [7u8; 32]);
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.psk");
        let out = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfifo: {out:?}");
        let files = FsKeyFiles::new(dir.path().into(), None);
        // On a thread: a blocking open would hang here for ever, which must fail the test instead.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(files.read_key("fifo.psk").map(|_| ()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO key file hung (opened without O_NONBLOCK?)");
        assert_eq!(
            got.unwrap_err().to_string(),
            "\"fifo.psk\" is a FIFO, not a regular file: put the key in a plain file"
        );
    }

    /// The uid of `nobody`.
    const NOBODY: u32 = 65534;

    /// Whether the test can chown files (root). Not root: skips loudly, unless in CI.
    fn can_chown(test: &str) -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the key file tests as root ({test})"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("SKIPPING {test}: needs root to chown files");
        }
        false
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        if !can_chown("a_key_file_owned_by_another_user_is_refused") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "theirs.key", KEY, 0o600);
        write(dir.path(), "theirs.pub", KEY, 0o644);
        for f in ["theirs.key", "theirs.pub"] {
            std::os::unix::fs::chown(dir.path().join(f), Some(NOBODY), None).unwrap();
        }
        let files = FsKeyFiles::new(dir.path().into(), None);
        assert_eq!(
            files.read_key("theirs.key").unwrap_err().to_string(),
            "\"theirs.key\" is owned by uid 65534, and run as root tandem refuses key files \
             another user could replace. If the daemon runs as that user (the package's service \
             runs as `tandem`), check as it does: `runuser -u tandem -- tandem check -c CONFIG`; \
             if root runs the daemon, run `chown 0` on it"
        );
        assert!(matches!(
            files.read_public_key("theirs.pub").unwrap_err(),
            KeyFileError::Owner { owner: NOBODY, .. }
        ));
    }

    #[test]
    fn a_directory_others_can_write_is_refused_even_when_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        write(&keys, "k", KEY, 0o600);
        write(&keys, "k.pub", KEY, 0o644);
        let files = FsKeyFiles::new(dir.path().into(), None);
        for mode in [0o770, 0o757, 0o777, 0o1777] {
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(mode)).unwrap();
            let d = keys.display();
            assert_eq!(
                files.read_key("keys/k").unwrap_err().to_string(),
                format!(
                    "\"keys/k\": its directory \"{d}\" is writable by group or others (mode \
                     {mode:04o}), who could replace the file: run `chmod go-w {d}` or move the \
                     file to a private directory"
                )
            );
            assert!(matches!(
                files.read_public_key("keys/k.pub").unwrap_err(),
                KeyFileError::DirWritable { .. }
            ));
        }
        // Readable by all is fine: only writing lets others swap the file.
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(*files.read_key("keys/k").unwrap(), [7u8; 32]);
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        if !can_chown("a_directory_owned_by_another_user_is_refused") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        write(&keys, "k", KEY, 0o600);
        std::os::unix::fs::chown(&keys, Some(NOBODY), None).unwrap();
        let files = FsKeyFiles::new(dir.path().into(), None);
        assert!(matches!(
            files.read_key("keys/k").unwrap_err(),
            KeyFileError::DirOwner {
                owner: NOBODY,
                euid: 0,
                ..
            }
        ));
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
        assert_eq!(
            files.read_key("no-such-dir/k").unwrap_err(),
            KeyFileError::Missing("no-such-dir/k".into())
        );
        assert_eq!(
            files.read_key("d").unwrap_err().to_string(),
            "\"d\" is a directory, not a regular file: put the key in a plain file"
        );
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
