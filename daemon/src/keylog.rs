//! Opening the `TANDEM_KEYLOG` file (docs/protocol.md key log, debugging only), so that the SA keys land
//! only in a file that nobody else can read or already holds open.
//!
//! The file is opened with `O_CREAT | O_NOFOLLOW` and mode 0600, then judged by `fstat` on the
//! opened descriptor, and only then truncated:
//! - a symlink at the path is refused, not followed (whoever made it would choose where the keys
//!   go, or which file of ours gets truncated);
//! - it must be a regular file with one link (a hard link elsewhere would be a second name for
//!   the keys), owned by us, with no group or world permission bit: a file that others could read
//!   may already be open in their hands, and what we write would reach them through that
//!   descriptor whatever its mode is now;
//! - it starts empty on every start: keys from an earlier run are not kept.
//!
//! Every refusal names the path and says what to do; the daemon then runs without a key log.

use std::fs::File;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Why the key log was not opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyLogError {
    /// `open` failed for another reason (no such directory, permission).
    #[error("cannot open the key log \"{path}\": {source}")]
    Open {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A symlink sits at the path.
    #[error(
        "the key log \"{path}\" is a symlink: refusing to follow it; remove it (the daemon creates the key log itself, mode 0600)"
    )]
    Symlink {
        /// The path.
        path: String,
    },
    /// A directory, FIFO, device or socket sits at the path.
    #[error(
        "the key log \"{path}\" exists and is not a regular file: remove it or set TANDEM_KEYLOG to another path"
    )]
    NotRegular {
        /// The path.
        path: String,
    },
    /// A file owned by someone else sits at the path.
    #[error(
        "the key log \"{path}\" exists and is owned by uid {owner}, not by the daemon (uid {euid}): remove it (the daemon creates the key log itself, mode 0600)"
    )]
    Owner {
        /// The path.
        path: String,
        /// The file's owner.
        owner: u32,
        /// The daemon's effective uid.
        euid: u32,
    },
    /// A file others could read (and so may hold open) sits at the path.
    #[error(
        "the key log \"{path}\" exists with mode {mode:04o}, readable by others who may already hold it open: remove it (the daemon creates the key log itself, mode 0600)"
    )]
    Loose {
        /// The path.
        path: String,
        /// The permission bits.
        mode: u32,
    },
    /// A file with other names (hard links) sits at the path.
    #[error(
        "the key log \"{path}\" has {links} hard links: remove it (the daemon creates the key log itself, mode 0600)"
    )]
    Linked {
        /// The path.
        path: String,
        /// The link count.
        links: u64,
    },
}

/// Opens (creating it 0600, or reusing our own 0600 file) and empties the key log at `path`.
pub fn open(path: &Path) -> Result<File, KeyLogError> {
    let p = || path.display().to_string();
    // O_NONBLOCK: opening a FIFO for writing waits for a reader otherwise (it fails with ENXIO).
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    );
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(KeyLogError::Symlink { path: p() }),
        Err(Errno::NXIO) | Err(Errno::ISDIR) => return Err(KeyLogError::NotRegular { path: p() }),
        Err(e) => {
            return Err(KeyLogError::Open {
                path: p(),
                source: e.into(),
            });
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| KeyLogError::Open {
        path: p(),
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(KeyLogError::NotRegular { path: p() });
    }
    let euid = rustix::process::geteuid().as_raw();
    if st.st_uid != euid {
        return Err(KeyLogError::Owner {
            path: p(),
            owner: st.st_uid,
            euid,
        });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyLogError::Loose { path: p(), mode });
    }
    #[allow(clippy::useless_conversion)] // `st_nlink` is u32 on some targets, u64 on others
    let links = u64::from(st.st_nlink);
    if links != 1 {
        return Err(KeyLogError::Linked { path: p(), links });
    }
    let file = File::from(fd);
    file.set_len(0)
        .map_err(|source| KeyLogError::Open { path: p(), source })?;
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    #[test]
    fn a_new_key_log_is_created_0600_and_an_old_one_of_ours_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keylog");
        let mut f = open(&path).unwrap();
        f.write_all(b"first run\n").unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        let mut f = open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        f.write_all(b"second run\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second run\n");
    }

    #[test]
    fn an_existing_key_log_others_can_read_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keylog");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::write(&path, "old\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = open(&path).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "the key log \"{}\" exists with mode {mode:04o}, readable by others who may \
                     already hold it open: remove it (the daemon creates the key log itself, mode \
                     0600)",
                    path.display()
                )
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        }
    }

    #[test]
    fn a_symlink_at_the_key_log_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("keylog");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            open(&path).unwrap_err(),
            KeyLogError::Symlink { .. }
        ));
        // A dangling link: not created through either.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("created-via-link"), &dangling).unwrap();
        assert!(matches!(
            open(&dangling).unwrap_err(),
            KeyLogError::Symlink { .. }
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        assert!(!dir.path().join("created-via-link").exists());
    }

    #[test]
    fn a_hard_linked_fifo_or_foreign_key_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "keep me\n").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        let linked = dir.path().join("linked");
        std::fs::hard_link(&other, &linked).unwrap();
        assert!(matches!(
            open(&linked).unwrap_err(),
            KeyLogError::Linked { links: 2, .. }
        ));
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me\n");

        // A FIFO: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let out = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(matches!(
            open(&fifo).unwrap_err(),
            KeyLogError::NotRegular { .. }
        ));

        // Someone else's file (only root can make one here).
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::write(&theirs, "").unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            assert!(matches!(
                open(&theirs).unwrap_err(),
                KeyLogError::Owner { owner: 65534, .. }
            ));
        } else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the key log tests as root"
            );
            #[allow(clippy::print_stderr)]
            {
                eprintln!("SKIPPING the foreign-owner key log case: needs root to chown");
            }
        }
    }
}
