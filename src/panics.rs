//! One pass of a long-running loop in a task of its own, so that a panic ends only that pass.

use std::future::Future;

use tracing::Instrument;

/// Runs `pass` in a task of its own and returns what it returned, or the message of the panic
/// that ended it; the caller's loop goes on either way.
pub async fn caught<T: Send + 'static>(
    pass: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    tokio::spawn(pass.in_current_span())
        .await
        .map_err(panic_message)
}

/// `caught` for one pass of `resource`: a pass that panicked is counted as a failed pass.
pub async fn caught_pass<T: Send + 'static>(
    resource: crate::store::Resource,
    pass: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let started = std::time::Instant::now();
    let outcome = caught(pass).await;
    if outcome.is_err() {
        crate::metric::record_pass(resource, "failed", 0, started.elapsed());
    }
    outcome
}

/// What a task that did not finish said: its panic's message, or why it was stopped.
pub fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .map_or_else(|| "a panic".to_owned(), |m| format!("panic: {m}"))
}

#[cfg(test)]
mod tests {
    use super::caught;

    #[tokio::test]
    async fn a_panicking_pass_is_returned_as_its_message_and_the_next_pass_runs() {
        let first = caught(async { panic!("a bug in one pass") }).await;
        let second = caught(async { 7 }).await;

        assert_eq!(first.err().as_deref(), Some("panic: a bug in one pass"));
        assert_eq!(second.ok(), Some(7));
    }
}
