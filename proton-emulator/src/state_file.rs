//! `--state-file`: what survives a restart, its JSON format, and how it is read and written.
//!
//! Kept: every live connection with its tags and the Create that made it (so a retried Create
//! with the same client token still answers the same connection, strictly compared if asked),
//! the sessions AssumeRole issued (so credentials handed out before a restart keep acting as
//! their role, see `sessions`), the last timestamp handed out (timestamps never go back), and
//! how far tests moved the clock. Not kept: call counts, faults, settings (they come from the
//! flags), and deleted connections that a list lag still shows.
//!
//! A write never leaves a half-written file: the document goes to a temporary file in the same
//! directory, is flushed to disk, and is renamed over the state file (then the directory is
//! flushed, so the rename itself survives a power cut). A reader sees the old state or the new
//! one. A file that cannot be read or understood stops the emulator at start-up: emptying it
//! silently would lose the connections it holds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::sessions::Session;
use super::store::{Millis, StoredConnection};

/// The format this emulator writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The whole state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateDocument {
    pub version: u32,
    /// The last timestamp handed out (epoch milliseconds).
    pub clock: Millis,
    /// What tests advanced the emulator's clock by, in milliseconds.
    #[serde(default)]
    pub clock_offset_ms: i64,
    #[serde(default)]
    pub connections: Vec<StoredConnection>,
    #[serde(default)]
    pub sessions: Vec<Session>,
}

/// What went wrong with the state file; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read the state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state file {} is not a valid state document: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state file {} holds an impossible state: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("cannot write the state file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the state file {} is in use by another emulator (it holds the lock {}); one emulator per state file",
        path.display(),
        lock.display()
    )]
    InUse { path: PathBuf, lock: PathBuf },
}

/// Reads the state file: `None` when there is none yet (the emulator starts empty).
pub fn load(path: &Path) -> Result<Option<StateDocument>, StateFileError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let document: StateDocument =
        serde_json::from_slice(&bytes).map_err(|source| StateFileError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if document.version != FORMAT_VERSION {
        return Err(StateFileError::Invalid {
            path: path.to_path_buf(),
            problem: format!(
                "format version {} (this emulator reads version {FORMAT_VERSION})",
                document.version
            ),
        });
    }
    Ok(Some(document))
}

/// Writes `document` to `path` atomically (see the module's comment).
pub fn write(path: &Path, document: &StateDocument) -> Result<(), StateFileError> {
    let bytes = serde_json::to_vec_pretty(document).map_err(|e| StateFileError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    write_atomically(path, &bytes).map_err(|source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Distinguishes the temporary files of concurrent writers in one process (the writer task is
/// alone, but start-up writes once before it runs).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    format!(".{name}.tmp-")
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = directory_of(path);
    let temp = dir.join(format!(
        "{}{}-{}",
        temp_prefix(path),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_then_rename(&temp, path, bytes);
    if result.is_err() {
        // Nothing to do if it is already gone; the rename may have failed after the write.
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_directory(dir)
}

fn write_then_rename(temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    // Sessions' secrets are in the file: only its owner reads it.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)
}

#[cfg(unix)]
fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Takes the lock that makes an emulator the only one using the state file at `path`: a file
/// beside it, locked for as long as the returned handle lives (the OS releases it when the
/// process ends, however it ends). A second emulator on the same file would delete the first
/// one's temporary files at its start and then overwrite its state.
pub fn lock(path: &Path) -> Result<File, StateFileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    let lock = directory_of(path).join(format!(".{name}.lock"));
    let write_error = |source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(write_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StateFileError::InUse {
            path: path.to_path_buf(),
            lock,
        }),
        Err(fs::TryLockError::Error(source)) => Err(write_error(source)),
    }
}

/// Removes temporary files a crash left behind mid-write (they were never renamed, so the state
/// file does not depend on them).
pub fn remove_leftovers(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(directory_of(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a leftover temporary state file")
                }
                Err(err) => {
                    tracing::warn!(file = %entry.path().display(), %err, "cannot remove a leftover temporary state file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> StateDocument {
        StateDocument {
            version: FORMAT_VERSION,
            clock: 42,
            clock_offset_ms: 7,
            connections: vec![],
            sessions: vec![],
        }
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_missing_file_is_no_state_and_a_written_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load(&path).unwrap().is_none());
        write(&path, &document()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(document()));
        let mut newer = document();
        newer.clock = 43;
        write(&path, &newer).unwrap();
        assert_eq!(load(&path).unwrap(), Some(newer));
        assert_eq!(
            dir_entries(dir.path()),
            ["state.json"],
            "no temporary file left"
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_the_owner_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, &document()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for (content, expected) in [
            ("", "EOF"),
            ("{\"version\": 1, \"clock\": ", "EOF"),
            ("[]", "invalid length 0"),
            ("\"state\"", "invalid type"),
            (
                "{\"version\": 1, \"clock\": 0, \"extra\": 1}",
                "unknown field",
            ),
        ] {
            fs::write(&path, content).unwrap();
            let err = load(&path).unwrap_err();
            assert!(matches!(err, StateFileError::Parse { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        fs::write(&path, "{\"version\": 9, \"clock\": 0}").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");

        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, StateFileError::Read { .. }), "{err:?}");
    }

    #[test]
    fn a_write_into_a_missing_directory_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("state.json");
        let err = write(&path, &document()).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, &document()).unwrap();
        fs::write(dir.path().join(".state.json.tmp-1-0"), "half").unwrap();
        fs::write(dir.path().join("other.json"), "{}").unwrap();
        remove_leftovers(&path);
        assert_eq!(dir_entries(dir.path()), ["other.json", "state.json"]);
    }
}
