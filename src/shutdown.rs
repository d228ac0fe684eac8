//! Process signals: SIGTERM (systemd `stop`, `docker stop`, PID 1) and SIGINT (Ctrl-C) both
//! mean "drain and exit"; SIGHUP (`systemctl reload`) means "re-read the config".

/// Listens for SIGINT and SIGTERM from the moment it is called (inside a tokio runtime) and
/// resolves on the first. Installed at once, not when first polled: a SIGTERM during start-up
/// (before the bridge's main loop polls this) must drain and exit 0, not kill the process by
/// the signal's default action.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let next = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = next(term) => {}
                () = next(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One item per SIGHUP, from a task that listens for them; `on_signal` runs at once on each
/// (the daemon reopens its log file there). Must be called inside a tokio runtime. Without
/// SIGHUP support (not Unix, or the handler could not be installed) the receiver never
/// yields.
pub fn reload_requests(on_signal: fn()) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        on_signal();
                        // A burst of SIGHUPs while one reload runs needs only one more.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "Cannot listen for SIGHUP; live reload is off."),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = on_signal;
        drop(tx);
    }
    rx
}
