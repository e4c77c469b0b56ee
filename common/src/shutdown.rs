//! Graceful shutdown: one cancellation token for the whole process, cancelled by SIGTERM or
//! SIGINT; a second signal exits at once.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cloneable handle on the process's shutdown state.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, un-cancelled handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts stopping everything.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether stopping has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once stopping has begun.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Sleeps for `d` unless stopping begins first; `false` means stop now.
    pub async fn pause(&self, d: std::time::Duration) -> bool {
        tokio::select! {
            _ = self.token.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// The underlying token, for `select!` and child tokens.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Waits for every tracked task to finish, up to `deadline`. Returns false on timeout.
    pub async fn wait_tasks(&self, deadline: std::time::Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Triggers on the first SIGTERM/SIGINT; exits the process with 130 on the second.
    pub fn listen_for_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining (send again to force exit)");
            this.trigger();
            wait_for_signal().await;
            tracing::warn!("second shutdown signal; exiting without draining");
            std::process::exit(130);
        });
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C through tokio is the best remaining option.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
