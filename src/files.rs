//! File modes the daemon checks at start: secret files (passwords, tokens, keys) that other
//! users can read or write, and state directories and the log file that other users can
//! open. It warns, naming the key, the path and the mode, never the content; it changes
//! nothing an operator made (the directories and files the daemon creates itself are created
//! 0700 and 0600).
//!
//! [`loose`] is pure; [`warnings`] reads the modes. [`read_capped`] reads a file the
//! operator names with a size cap, so `/dev/zero` or a wrong path to a huge file is an error,
//! not an allocation without end.

use std::path::Path;

use crate::config::Config;

/// What a file is to the bridge, which decides the mode bits that are too loose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A password, token or private key: nobody else may read or write it (group and other
    /// bits `rw`).
    Secret,
    /// A state directory: nobody else may enter, list or change it (group and other bits).
    StateDir,
    /// The log file: nobody else may read or write it (group and other bits `rw`).
    Log,
}

impl Kind {
    /// The group and other bits that draw a warning.
    const fn loose_bits(self) -> u32 {
        match self {
            Kind::Secret | Kind::Log => 0o066,
            Kind::StateDir => 0o077,
        }
    }
}

/// The warning for `key` = `path` of `kind` at `mode` (the file's permission bits), or
/// `None` when the mode is tight enough.
pub fn loose(key: &str, path: &Path, kind: Kind, mode: u32) -> Option<String> {
    let mode = mode & 0o7777;
    if mode & kind.loose_bits() == 0 {
        return None;
    }
    let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (true, true) => "its group and all users",
        (true, false) => "its group",
        _ => "all users",
    };
    Some(match kind {
        Kind::Secret => format!(
            "{key}: {} (mode {mode:04o}) can be read or written by {who}; it holds a secret: \
             chmod 0600 (or 0400), and chown it to the bridge's user",
            path.display()
        ),
        Kind::StateDir => format!(
            "{key}: {} (mode {mode:04o}) can be opened by {who}; the bridge does not change a \
             directory it did not create: chmod 0700",
            path.display()
        ),
        Kind::Log => format!(
            "{key}: {} (mode {mode:04o}) can be read or written by {who}; the bridge does not \
             change a file it did not create: chmod 0600",
            path.display()
        ),
    })
}

/// The files of `config` to check: key, path and kind. Only those in use: the state
/// directories of enabled features, the secret files named.
pub fn checked<'a>(config: &'a Config) -> Vec<(&'static str, &'a Path, Kind)> {
    let mut files = Vec::new();
    let mut secret = |key, path: &'a Option<std::path::PathBuf>| {
        if let Some(path) = path {
            files.push((key, path.as_path(), Kind::Secret));
        }
    };
    secret("mqtt.password_file", &config.mqtt.password_file);
    secret("bayeux.token_file", &config.bayeux.token_file);
    if let Some(oauth) = &config.bayeux.oauth {
        secret("bayeux.oauth.client_secret_file", &oauth.client_secret_file);
        secret("bayeux.oauth.private_key_file", &oauth.private_key_file);
        secret("bayeux.oauth.refresh_token_file", &oauth.refresh_token_file);
    }
    if let Some(tls) = &config.mqtt.tls {
        secret("mqtt.tls.key_file", &tls.key_file);
    }
    if config.replay.enabled {
        files.push((
            "replay.state_dir",
            config.replay.state_dir.as_path(),
            Kind::StateDir,
        ));
    }
    if config.spool.enabled {
        files.push(("spool.dir", config.spool.dir.as_path(), Kind::StateDir));
    }
    if let Some(file) = &config.log.file {
        files.push(("log.file", file.as_path(), Kind::Log));
    }
    files
}

/// Warnings about the files of `config` whose modes are too loose (see [`loose`]). A file
/// that does not exist (yet) draws none: the bridge creates it private, or refuses to start
/// when it needs it.
pub fn warnings(config: &Config) -> Vec<String> {
    checked(config)
        .into_iter()
        .filter_map(|(key, path, kind)| warning(key, path, kind))
        .collect()
}

/// The warning for the file at `path` (see [`loose`]), reading its mode; `None` when it is
/// private enough or does not exist.
pub fn warning(key: &str, path: &Path, kind: Kind) -> Option<String> {
    loose(key, path, kind, mode(path)?)
}

/// The most bytes of a secret file (a password, token, private key): a 4096-bit RSA key in
/// PEM takes about 3.3 KiB.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The most bytes of a config file, a PEM certificate bundle or the checkpoint file.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Reads `path` whole, refusing a file of more than `max` bytes (an
/// [`io::ErrorKind::InvalidData`](std::io::ErrorKind::InvalidData) error that says so)
/// without reading more than `max + 1` bytes of it: a device such as `/dev/zero` or a
/// FIFO is read no further than that.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The permission bits of `path` (following symbolic links, as reading it does).
#[cfg(unix)]
fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_refuses_a_file_over_the_cap_and_an_endless_device() {
        let dir = std::env::temp_dir().join(format!("files-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"12345");
        let err = read_capped(&path, 4).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
        #[cfg(unix)]
        {
            let err = read_capped(Path::new("/dev/zero"), 1024).unwrap_err();
            assert!(err.to_string().contains("larger than 1024 bytes"), "{err}");
        }
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read_capped_text(&path, 5).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_modes_draw_no_warning() {
        let path = Path::new("/s");
        for mode in [0o600, 0o400, 0o700, 0o100600] {
            assert_eq!(loose("k", path, Kind::Secret, mode), None, "{mode:o}");
            assert_eq!(loose("k", path, Kind::Log, mode), None, "{mode:o}");
        }
        assert_eq!(loose("k", path, Kind::StateDir, 0o040700), None);
        // Execute bits alone do not expose a file's content.
        assert_eq!(loose("k", path, Kind::Secret, 0o611), None);
    }

    #[test]
    fn loose_secret_files_are_named_with_key_path_mode_and_who() {
        let warning = loose(
            "bayeux.token_file",
            Path::new("/etc/b/token"),
            Kind::Secret,
            0o100644,
        )
        .unwrap();
        assert!(warning.starts_with("bayeux.token_file: /etc/b/token (mode 0644)"));
        assert!(warning.contains("its group and all users"), "{warning}");
        assert!(warning.contains("chmod 0600"), "{warning}");
        let group = loose("k", Path::new("/p"), Kind::Secret, 0o640).unwrap();
        assert!(group.contains("by its group;"), "{group}");
        let others = loose("k", Path::new("/p"), Kind::Secret, 0o602).unwrap();
        assert!(others.contains("by all users;"), "{others}");
    }

    #[test]
    fn state_dirs_open_to_others_are_named() {
        let warning = loose("spool.dir", Path::new("/var/lib/b"), Kind::StateDir, 0o755).unwrap();
        assert!(warning.contains("(mode 0755)"), "{warning}");
        assert!(warning.contains("chmod 0700"), "{warning}");
        assert!(loose("spool.dir", Path::new("/d"), Kind::StateDir, 0o710).is_some());
    }
}
