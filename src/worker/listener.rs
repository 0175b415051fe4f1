//! LISTEN for new requests and wake the worker; it only wakes, polling stays the truth.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel the insert trigger notifies.
const CHANNEL: &str = "openai_project_requests";

/// Starts listening; the returned `Notify` fires on each notification and after each (re)connect.
pub fn spawn_listener(pool: PgPool, stop: CancellationToken) -> Arc<Notify> {
    let wake = Arc::new(Notify::new());
    let waker = wake.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            match listen_until_lost(&pool, &waker, &stop).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "the request listener lost its connection; reconnecting");
                }
            }
            let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    });
    wake
}

/// Listens on a fresh connection until it is lost; wakes the worker once listening, since
/// anything inserted while no one listened was not announced.
async fn listen_until_lost(
    pool: &PgPool,
    wake: &Notify,
    stop: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    wake.notify_one();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            received = listener.try_recv() => match received? {
                Some(_) => wake.notify_one(),
                None => return Err(sqlx::Error::Protocol("the server closed the connection".into())),
            },
        }
    }
}
