//! The queue file: tables, the value header, and opening a file with every check.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};

use super::SpoolError;

/// Version of the queue file's layout (tables, keys, `meta` entries).
pub const FORMAT_VERSION: u64 = 1;
/// Version of an entry's header, its first byte.
pub const ENTRY_VERSION: u8 = 1;
/// Header bytes before an entry's data: version (1) and append time (8).
pub const HEADER_LEN: usize = 9;
/// What an entry counts for in the budget beyond its data: key (8) and header.
pub const ENTRY_OVERHEAD: u64 = 8 + HEADER_LEN as u64;

pub(super) const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const META_VERSION: &str = "format_version";
pub(super) const META_NEXT_SEQ: &str = "next_seq";

/// redb's page cache per queue file: the spool is written once and read once, mostly in
/// order, so a small cache does.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The stored value of an entry appended at `at`.
pub(super) fn encode(data: &[u8], at: SystemTime) -> Vec<u8> {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut value = Vec::with_capacity(HEADER_LEN + data.len());
    value.push(ENTRY_VERSION);
    value.extend_from_slice(&millis.to_le_bytes());
    value.extend_from_slice(data);
    value
}

/// The append time and data of a stored value.
pub(super) fn decode(value: &[u8]) -> Result<(SystemTime, &[u8]), String> {
    let Some((header, data)) = value.split_at_checked(HEADER_LEN) else {
        return Err(format!(
            "a value of {} bytes is shorter than its header",
            value.len()
        ));
    };
    if header[0] != ENTRY_VERSION {
        return Err(format!("an entry has header version {}", header[0]));
    }
    let mut millis = [0; 8];
    millis.copy_from_slice(&header[1..]);
    let at = UNIX_EPOCH + Duration::from_millis(u64::from_le_bytes(millis));
    Ok((at, data))
}

/// The budget bytes of a stored value of `len` bytes.
pub(super) fn cost(len: usize) -> u64 {
    (len as u64).saturating_sub(HEADER_LEN as u64) + ENTRY_OVERHEAD
}

/// What [`open`] found in a queue file.
pub(super) struct Opened {
    pub db: Database,
    pub next_seq: u64,
    pub entries: u64,
    pub bytes: u64,
    pub oldest: Option<SystemTime>,
}

/// Opens (creating if absent) a queue file: redb's crash recovery, a full checksum check,
/// the format version, and a scan of every value. Blocking.
pub(super) fn open(file: &Path) -> Result<Opened, SpoolError> {
    // redb is not written to panic on a damaged file, but a damaged file is exactly where
    // an unnoticed `unwrap` in a dependency would be hit: report it as damage.
    catch_unwind(AssertUnwindSafe(|| open_checked(file))).unwrap_or_else(|_| {
        Err(SpoolError::Corrupt {
            file: file.to_owned(),
            reason: "reading the file failed (redb panicked)".to_owned(),
        })
    })
}

fn open_checked(file: &Path) -> Result<Opened, SpoolError> {
    let db = open_recovered(file)?;
    let txn = db.begin_write().map_err(|e| redb_error(file, e))?;
    let (contents, stored_next_seq) = {
        let mut meta = txn.open_table(META).map_err(|e| redb_error(file, e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| redb_error(file, e))?;
        check_version(file, &mut meta, &table)?;
        let contents = scan(file, &table)?;
        let stored = meta
            .get(META_NEXT_SEQ)
            .map_err(|e| redb_error(file, e))?
            .map_or(1, |v| v.value());
        (contents, stored)
    };
    txn.commit().map_err(|e| redb_error(file, e))?;
    let next_seq = stored_next_seq.max(contents.last.map_or(1, |l| l.saturating_add(1)));
    Ok(Opened {
        db,
        next_seq,
        entries: contents.entries,
        bytes: contents.bytes,
        oldest: contents.oldest,
    })
}

/// Opens (creating if absent) the file: redb recovers it after an unclean shutdown, and
/// every checksum is checked.
fn open_recovered(file: &Path) -> Result<Database, SpoolError> {
    let mut db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(file)
        .map_err(|e| redb_error(file, e))?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            file = %file.display(),
            "Spool file repaired after an unclean shutdown."
        ),
        Err(e) => return Err(redb_error(file, e)),
    }
    Ok(db)
}

/// Checks the file's format version; a new (empty) file gets [`FORMAT_VERSION`].
fn check_version(
    file: &Path,
    meta: &mut Table<'_, &str, u64>,
    entries: &Table<'_, u64, &[u8]>,
) -> Result<(), SpoolError> {
    let version = meta
        .get(META_VERSION)
        .map_err(|e| redb_error(file, e))?
        .map(|v| v.value());
    match version {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(SpoolError::Incompatible {
            file: file.to_owned(),
            what: "spool format",
            found_version: found,
            supported_version: FORMAT_VERSION,
        }),
        None if entries.is_empty().map_err(|e| redb_error(file, e))? => {
            meta.insert(META_VERSION, FORMAT_VERSION)
                .map_err(|e| redb_error(file, e))?;
            Ok(())
        }
        None => Err(corrupt(file, "entries without a format version".into())),
    }
}

/// What a scan of the entries found.
struct Contents {
    entries: u64,
    bytes: u64,
    oldest: Option<SystemTime>,
    /// The last entry's sequence number.
    last: Option<u64>,
}

/// Reads every value: each must decode; counts them and their budget bytes.
fn scan(file: &Path, table: &Table<'_, u64, &[u8]>) -> Result<Contents, SpoolError> {
    let mut contents = Contents {
        entries: 0,
        bytes: 0,
        oldest: None,
        last: None,
    };
    for item in table.iter().map_err(|e| redb_error(file, e))? {
        let (key, value) = item.map_err(|e| redb_error(file, e))?;
        let value = value.value();
        let (at, _) = decode(value).map_err(|r| corrupt(file, r))?;
        contents.oldest.get_or_insert(at);
        contents.entries += 1;
        contents.bytes += cost(value.len());
        contents.last = Some(key.value());
    }
    Ok(contents)
}

/// How many entries of a damaged file can still be read, without changing it.
pub(super) fn readable_entries(file: &Path) -> u64 {
    catch_unwind(AssertUnwindSafe(|| {
        let Ok(db) = redb::ReadOnlyDatabase::open(file) else {
            return 0;
        };
        let Ok(txn) = db.begin_read() else {
            return 0;
        };
        let Ok(table) = txn.open_table(ENTRIES) else {
            return 0;
        };
        let Ok(iter) = table.iter() else {
            return 0;
        };
        let mut count = 0;
        for item in iter {
            match item {
                Ok((_, value)) if decode(value.value()).is_ok() => count += 1,
                _ => break,
            }
        }
        count
    }))
    .unwrap_or(0)
}

pub(super) fn corrupt(file: &Path, reason: String) -> SpoolError {
    SpoolError::Corrupt {
        file: file.to_owned(),
        reason,
    }
}

/// Our error for any of redb's: damage, an unreadable format, a file in use, or IO.
pub(super) fn redb_error(file: &Path, error: impl Into<redb::Error>) -> SpoolError {
    use redb::Error as E;
    match error.into() {
        E::DatabaseAlreadyOpen => SpoolError::Busy {
            file: file.to_owned(),
        },
        E::UpgradeRequired(version) => SpoolError::Incompatible {
            file: file.to_owned(),
            what: "redb file format",
            found_version: version.into(),
            supported_version: REDB_FILE_FORMAT,
        },
        E::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => corrupt(file, e.to_string()),
        E::Io(e) => SpoolError::io(file, e),
        E::DatabaseClosed => SpoolError::Closed,
        E::Corrupted(reason) => corrupt(file, reason),
        other => corrupt(file, other.to_string()),
    }
}

/// The redb file format version this build writes (redb 4).
const REDB_FILE_FORMAT: u64 = 3;
