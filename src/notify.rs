//! sd_notify: tells systemd (`Type=notify`) that the daemon is ready, what it is doing, that it
//! is still alive (the watchdog), and when it reloads or stops.
//!
//! The protocol is one datagram per notification on the Unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for a Linux abstract socket), holding newline-separated `KEY=value`
//! assignments (`sd_notify(3)`). It is small enough to implement here instead of adding a
//! dependency.
//!
//! Nothing here may break the daemon: without `NOTIFY_SOCKET` there is no [`Notifier`] at all,
//! and a notification that cannot be sent is logged at debug and otherwise ignored. The socket
//! is non-blocking, so a stalled service manager can cost a notification but never a runtime
//! thread.
//!
//! It knows nothing of the bridge: the daemon decides when it is ready and what its status is.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

/// The longest `STATUS=` text sent; longer text is cut at a character boundary. systemd drops
/// a whole notification above its 4096-byte buffer, so a long status must not cost it.
const MAX_STATUS_BYTES: usize = 1024;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog_interval: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for, or `None` when `NOTIFY_SOCKET` is unset (not started by
    /// systemd as `Type=notify`) or unusable (logged).
    ///
    /// The watchdog is on when `WATCHDOG_USEC` is set (`WatchdogSec=`) and `WATCHDOG_PID`, if
    /// set, is this process.
    pub fn from_env() -> Option<Notifier> {
        let var = |name| std::env::var(name).ok();
        from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// A notifier for the socket at `address`: an absolute path, or `@name` for a Linux
    /// abstract socket (as in `NOTIFY_SOCKET`). The watchdog is off.
    pub fn new(address: impl AsRef<OsStr>) -> io::Result<Notifier> {
        let address = socket_addr(address.as_ref())?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            address,
            watchdog_interval: None,
        })
    }

    /// How often to call [`Notifier::watchdog`]: half of `WatchdogSec=`, as
    /// `sd_watchdog_enabled(3)` advises. `None` when the watchdog is off.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// `READY=1`: startup is complete (the daemon decides what that means; the bridge sends it
    /// once its config is valid and its clients have started), or a reload announced by
    /// [`Notifier::reloading`] is finished.
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// `STATUS=text`: one line shown by `systemctl status`. Newlines become spaces.
    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={}", status_line(text)));
    }

    /// `WATCHDOG=1`: the main loop is alive. Call it every [`Notifier::watchdog_interval`].
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253's `Type=notify-reload` needs the
    /// timestamp; older versions ignore it). Send [`Notifier::ready`] when the reload is done,
    /// whether the new config was applied or refused.
    pub fn reloading(&self) {
        match monotonic_usec() {
            Some(usec) => self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}")),
            None => self.notify("RELOADING=1"),
        }
    }

    /// `STOPPING=1`: the daemon is draining and will exit.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.address)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", state.len()),
            ));
        }
        Ok(())
    }

    fn notify(&self, state: &str) {
        if let Err(error) = self.send(state) {
            let what = state.split('\n').next().unwrap_or_default();
            debug!(%error, notification = what, "Cannot notify the service manager.");
        }
    }
}

/// [`Notifier::from_env`] without the environment, so it can be tested.
fn from_vars(
    notify_socket: Option<&OsStr>,
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    own_pid: u32,
) -> Option<Notifier> {
    let address = notify_socket.filter(|a| !a.is_empty())?;
    match Notifier::new(address) {
        Ok(mut notifier) => {
            notifier.watchdog_interval = watchdog_interval(watchdog_usec, watchdog_pid, own_pid);
            Some(notifier)
        }
        Err(error) => {
            // Logged once at startup: with `Type=notify` the start will time out, and this
            // line says why.
            warn!(%error, socket = ?address, "NOTIFY_SOCKET is unusable; not notifying systemd.");
            None
        }
    }
}

/// Half the watchdog period from `WATCHDOG_USEC`, if it is set, valid and meant for `own_pid`.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        // Set for another process (a parent that exec'd us without clearing it).
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec = usec?.trim().parse::<u64>().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

fn socket_addr(address: &OsStr) -> io::Result<SocketAddr> {
    let bytes = address.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(address),
        Some(b'@') => abstract_addr(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an @abstract socket name",
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// `text` as one line (a newline would start another assignment; systemd refuses NUL), cut
/// to [`MAX_STATUS_BYTES`].
fn status_line(text: &str) -> String {
    let mut end = text.len().min(MAX_STATUS_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace(['\n', '\r', '\0'], " ")
}

/// `CLOCK_MONOTONIC` now, in microseconds: the clock systemd compares `MONOTONIC_USEC=` with.
/// `std::time::Instant` reads the same clock but does not expose its value.
#[cfg(target_os = "linux")]
fn monotonic_usec() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `struct timespec` for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(now.tv_sec).ok()?;
    let micros = u64::try_from(now.tv_nsec).ok()? / 1_000;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(not(target_os = "linux"))]
fn monotonic_usec() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A bound datagram socket standing in for systemd's, in its own temporary directory.
    struct FakeManager {
        dir: PathBuf,
        path: PathBuf,
        socket: UnixDatagram,
    }

    impl FakeManager {
        fn new() -> FakeManager {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "bmb-notify-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            FakeManager { dir, path, socket }
        }

        fn notifier(&self) -> Notifier {
            Notifier::new(&self.path).unwrap()
        }

        fn receive(&self) -> String {
            receive(&self.socket)
        }
    }

    impl Drop for FakeManager {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 8192];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_sends_exactly_ready_1() {
        let manager = FakeManager::new();
        manager.notifier().ready();
        assert_eq!(manager.receive(), "READY=1");
    }

    #[test]
    fn watchdog_sends_exactly_watchdog_1() {
        let manager = FakeManager::new();
        manager.notifier().watchdog();
        assert_eq!(manager.receive(), "WATCHDOG=1");
    }

    #[test]
    fn stopping_sends_exactly_stopping_1() {
        let manager = FakeManager::new();
        manager.notifier().stopping();
        assert_eq!(manager.receive(), "STOPPING=1");
    }

    #[test]
    fn status_sends_one_line() {
        let manager = FakeManager::new();
        let notifier = manager.notifier();
        notifier.status("Waiting for the broker.");
        assert_eq!(manager.receive(), "STATUS=Waiting for the broker.");
        notifier.status("two\nlines\r\0and a NUL");
        assert_eq!(manager.receive(), "STATUS=two lines  and a NUL");
    }

    #[test]
    fn long_status_is_cut_at_a_character_boundary() {
        let manager = FakeManager::new();
        // 'é' is two bytes: the cut at 1024 bytes falls in the middle of one.
        let text = format!("a{}", "é".repeat(1000));
        manager.notifier().status(&text);
        let got = manager.receive();
        assert_eq!(got, format!("STATUS=a{}", "é".repeat(511)));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn reloading_sends_the_monotonic_time() {
        let manager = FakeManager::new();
        let before = monotonic_usec().unwrap();
        manager.notifier().reloading();
        let after = monotonic_usec().unwrap();
        let got = manager.receive();
        let usec = got
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected datagram {got:?}"));
        let usec: u64 = usec.parse().unwrap();
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
    }

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn monotonic_time_advances_with_the_monotonic_clock() {
        let before = monotonic_usec().unwrap();
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = started.elapsed();
        let after = monotonic_usec().unwrap();
        assert!(after - before >= 20_000, "{before} → {after}");
        // Both read CLOCK_MONOTONIC: they agree within scheduling noise.
        let diff = (after - before).abs_diff(elapsed.as_micros() as u64);
        assert!(
            diff < 50_000,
            "clock_gettime and Instant differ by {diff} µs"
        );
    }

    #[test]
    fn notifications_arrive_in_order() {
        let manager = FakeManager::new();
        let notifier = manager.notifier();
        notifier.status("Connecting.");
        notifier.ready();
        notifier.watchdog();
        notifier.stopping();
        let got: Vec<String> = (0..4).map(|_| manager.receive()).collect();
        assert_eq!(
            got,
            ["STATUS=Connecting.", "READY=1", "WATCHDOG=1", "STOPPING=1"]
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn abstract_socket_names_start_with_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("bmb-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::new(format!("@{name}")).unwrap().ready();
        assert_eq!(receive(&manager), "READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let manager = FakeManager::new();
        let notifier = manager.notifier();
        drop(manager);
        assert!(notifier.send("READY=1").is_err());
        // The convenience methods swallow the error.
        notifier.ready();
        notifier.status("still fine");
        notifier.watchdog();
        notifier.reloading();
        notifier.stopping();
    }

    #[test]
    fn relative_and_empty_addresses_are_refused() {
        for address in ["notify", "", "vsock:2:1234"] {
            let err = Notifier::new(address).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{address:?}");
        }
    }

    #[test]
    fn from_vars_needs_notify_socket() {
        assert!(from_vars(None, Some("30000000"), None, 7).is_none());
        assert!(from_vars(Some(OsStr::new("")), None, None, 7).is_none());
        assert!(from_vars(Some(OsStr::new("relative")), None, None, 7).is_none());
    }

    #[test]
    fn from_vars_sets_up_the_watchdog_and_sends_to_the_socket() {
        let manager = FakeManager::new();
        let notifier = from_vars(
            Some(manager.path.as_os_str()),
            Some("30000000"),
            Some("7"),
            7,
        )
        .unwrap();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
        notifier.watchdog();
        assert_eq!(manager.receive(), "WATCHDOG=1");

        let without = from_vars(Some(manager.path.as_os_str()), None, None, 7).unwrap();
        assert_eq!(without.watchdog_interval(), None);
    }

    #[test]
    fn watchdog_interval_is_half_the_period_for_this_process_only() {
        let half = |usec, pid| watchdog_interval(usec, pid, 42);
        assert_eq!(half(Some("30000000"), None), Some(Duration::from_secs(15)));
        assert_eq!(
            half(Some("30000000"), Some("42")),
            Some(Duration::from_secs(15))
        );
        assert_eq!(half(Some("1"), None), Some(Duration::from_nanos(500)));
        assert_eq!(half(Some("30000000"), Some("41")), None);
        assert_eq!(half(Some("30000000"), Some("x")), None);
        assert_eq!(half(Some("0"), None), None);
        assert_eq!(half(Some("soon"), None), None);
        assert_eq!(half(None, Some("42")), None);
    }
}
