//! Process signals: SIGTERM (systemd `stop`, `docker stop`, PID 1) and SIGINT (Ctrl-C) both
//! mean "drain and exit"; SIGHUP (`systemctl reload`) means "re-read the config".

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One item per SIGHUP, from a task that listens for them. Must be called inside a tokio
/// runtime. Without SIGHUP support (not Unix, or the handler could not be installed) the
/// receiver never yields.
pub fn reload_requests() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // A burst of SIGHUPs while one reload runs needs only one more.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "Cannot listen for SIGHUP; live reload is off."),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}
