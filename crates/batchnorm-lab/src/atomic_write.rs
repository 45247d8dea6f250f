//! Crash-safe file replacement: a reader sees the old file or the new one, never a mix, even if
//! the process is killed (SIGKILL) or the machine loses power at any moment.
//!
//! The steps, each needed:
//! 1. write the bytes to a temporary file in the same directory (a rename across file systems
//!    is not atomic, and the temporary lives beside its target);
//! 2. `fsync` the temporary, so its data are on disk before its name is;
//! 3. `rename` it over the target: POSIX makes this atomic for readers;
//! 4. `fsync` the directory, so the rename itself survives a power loss.
//!
//! A kill between 1 and 3 leaves a stale temporary ([`temp_path`]), which the next write of the
//! same target truncates and reuses; the target itself is untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary file [`write_atomic`] uses for `path`: `.<name>.tmp` in the same directory.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "unnamed".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Replaces `path` with `bytes` atomically (temporary file, `fsync`, `rename`, `fsync` of the
/// directory). The directory must exist.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("atomic-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let file = dir.join("a.json");
/// batchnorm_lab::atomic_write::write_atomic(&file, b"{}")?;
/// assert_eq!(std::fs::read(&file)?, b"{}");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// The operating system's error from any step; the target is then unchanged (a temporary may
/// remain).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(parent_dir(path))
}

/// `fsync` of a directory, making the renames and creations in it durable.
///
/// # Errors
/// The operating system's error opening or syncing it.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    // On Unix a directory opens read-only and `fsync`s like a file; other systems have no
    // portable equivalent (Windows' `MoveFileEx` is durable on return), so nothing is done there.
    if cfg!(unix) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_the_target_and_leaves_no_temporary() {
        let d = dir("replace");
        let p = d.join("x.bin");
        write_atomic(&p, b"old contents, longer").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(!temp_path(&p).exists());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stale_temporary_from_a_killed_write_is_reused_and_the_target_kept() {
        let d = dir("stale");
        let p = d.join("x.bin");
        write_atomic(&p, b"committed").unwrap();
        // What a kill between writing and renaming leaves behind.
        fs::write(temp_path(&p), b"half-writ").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"committed");
        write_atomic(&p, b"next").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"next");
        assert!(!temp_path(&p).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_target_unchanged() {
        let d = dir("fail");
        let p = d.join("x.bin");
        write_atomic(&p, b"committed").unwrap();
        // A directory where the temporary should go makes the write fail at step 1.
        fs::create_dir(temp_path(&p)).unwrap();
        assert!(write_atomic(&p, b"lost").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"committed");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temp_path_is_a_hidden_sibling() {
        assert_eq!(
            temp_path(Path::new("a/b/bn.json")),
            Path::new("a/b/.bn.json.tmp")
        );
        assert_eq!(parent_dir(Path::new("bn.json")), Path::new("."));
    }
}
