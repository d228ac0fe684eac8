//! The checkpoint file on disk: its format, and the directory, lock and durable-write
//! primitives the store uses.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing::warn;

use super::{CheckpointError, LOCK_FILE_NAME, VERSION};

/// The file, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileV1 {
    pub(super) version: u64,
    pub(super) channels: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    pub(super) replay_id: i64,
    /// Unix seconds of the last advance; `0` when a hand-written file has none.
    #[serde(
        default,
        serialize_with = "secs_as_string",
        deserialize_with = "secs_from_string_or_number"
    )]
    pub(super) updated: u64,
}

fn secs_as_string<S: Serializer>(secs: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(secs)
}

fn secs_from_string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Number(u64),
        Text(String),
    }
    match Secs::deserialize(deserializer)? {
        Secs::Number(secs) => Ok(secs),
        Secs::Text(text) => text.parse().map_err(|_| {
            serde::de::Error::custom(format!("`updated` must be Unix seconds, not {text:?}"))
        }),
    }
}

/// Parses the file; the error says what is wrong.
pub(super) fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    /// Read first, so a future version is reported as such rather than as unknown fields.
    #[derive(Deserialize)]
    struct Header {
        version: u64,
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".to_owned());
    }
    let header: Header = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if header.version != VERSION {
        return Err(format!(
            "unsupported version {} (this build reads version {VERSION})",
            header.version
        ));
    }
    let file: FileV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(file.channels)
}

/// Creates `dir` (0700 on unix) unless it exists, and makes its entry durable.
pub(super) fn create_dir(dir: &Path) -> Result<(), CheckpointError> {
    let dir_error = |path: &Path, source| CheckpointError::Dir {
        path: path.to_owned(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| dir_error(dir, e))?;
    // Without this a power loss could take the new directory, and the first checkpoints
    // written into it, away.
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent).map_err(|e| dir_error(parent, e))
}

/// Removes a temporary file left by a flush interrupted before its rename.
/// Takes the state directory's exclusive lock (released when the file is closed, including
/// when the process dies), so two bridges never write the same checkpoints.
pub(super) fn lock_dir(dir: &Path) -> Result<File, CheckpointError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| CheckpointError::Dir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(CheckpointError::Locked { path }),
        Err(fs::TryLockError::Error(source)) => Err(CheckpointError::Dir { path, source }),
    }
}

pub(super) fn remove_leftover(temp: &Path) {
    match fs::remove_file(temp) {
        Ok(()) => warn!(
            path = %temp.display(),
            "Removed a checkpoint file left by an interrupted flush; the previous checkpoints stand."
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // The next flush reports the problem if it persists.
        Err(e) => warn!(
            path = %temp.display(),
            error = %e,
            "Cannot remove a checkpoint file left by an interrupted flush."
        ),
    }
}

/// Writes `bytes` to a new file at `path` and syncs it. Whatever is at `path` first (a file
/// left by a failed flush, or a symlink planted there) is removed, never followed:
/// `remove_file` removes a link itself, and the file is then created with `create_new`
/// (`O_CREAT | O_EXCL`, which fails rather than follow a symlink that appeared in between)
/// and, on Linux, `O_NOFOLLOW`. On unix it is created with mode 0600 and set to 0600
/// explicitly, whatever the umask: it holds the same positions as the checkpoint file it
/// replaces. A directory at `path` is not removed: that is an error.
pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
        #[cfg(target_os = "linux")]
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Syncs a directory, making the entries created or renamed in it durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    // Elsewhere a directory cannot be opened as a file; the rename is as durable as it gets.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
