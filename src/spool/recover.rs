//! Moving damaged queue files aside (`bayeux-mqtt-bridge spool-recover`).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{SpoolError, format, sync_dir};

/// What [`recover`] did with one queue file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The queue file.
    pub file: PathBuf,
    /// What was found and done.
    pub outcome: Recovery,
}

/// The outcome for one queue file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The file opened and passed every check; left alone.
    Healthy {
        /// Entries in it.
        entries: u64,
    },
    /// The file was damaged or of another format, and was renamed.
    MovedAside {
        /// Its new name, `<name>.redb.damaged-<unix seconds>`.
        to: PathBuf,
        /// Why it could not be used.
        reason: String,
        /// Entries that could still be read from it (0 if none or unreadable): the rest,
        /// if it held more, are lost.
        readable_entries: u64,
    },
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Recovery::Healthy { entries } => {
                write!(f, "{}: healthy, {entries} entries", self.file.display())
            }
            Recovery::MovedAside {
                to,
                reason,
                readable_entries,
            } => write!(
                f,
                "{}: moved aside to {} ({reason}); {readable_entries} entries could still be \
                 read from it",
                self.file.display(),
                to.display()
            ),
        }
    }
}

/// Checks every queue file (`*.redb`) in `dir`, in name order: a healthy one is left alone;
/// one that is [`SpoolError::Corrupt`] or [`SpoolError::Incompatible`] is renamed to
/// `<name>.redb.damaged-<unix seconds>` so the bridge starts with an empty queue of that
/// name. A directory that does not exist holds nothing to recover. Other errors (a file in
/// use by a running bridge, IO) stop it. Blocking.
pub fn recover(dir: &Path) -> Result<Vec<Recovered>, SpoolError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SpoolError::io(dir, e)),
    };
    let mut files = Vec::new();
    for item in listing {
        let path = item.map_err(|e| SpoolError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "redb") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let outcome = match format::open(&file) {
            Ok(opened) => Recovery::Healthy {
                entries: opened.entries,
            },
            Err(e @ (SpoolError::Corrupt { .. } | SpoolError::Incompatible { .. })) => {
                move_aside(&file, &e)?
            }
            Err(e) => return Err(e),
        };
        out.push(Recovered { file, outcome });
    }
    Ok(out)
}

fn move_aside(file: &Path, error: &SpoolError) -> Result<Recovery, SpoolError> {
    let readable_entries = format::readable_entries(file);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".damaged-{secs}"));
    let to = PathBuf::from(name);
    fs::rename(file, &to).map_err(|e| SpoolError::io(file, e))?;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(|e| SpoolError::io(parent, e))?;
    }
    let reason = match error {
        SpoolError::Corrupt { reason, .. } => format!("damaged: {reason}"),
        SpoolError::Incompatible {
            what,
            found_version,
            supported_version,
            ..
        } => format!("{what} version {found_version}, this build reads {supported_version}"),
        other => other.to_string(),
    };
    Ok(Recovery::MovedAside {
        to,
        reason,
        readable_entries,
    })
}
