//! The HTTP endpoints of `run`: `/metrics` (Prometheus text format 0.0.4),
//! `/healthz` (the process is alive) and `/readyz` (the database answers now).
//! Off unless `--listen` is given.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::db::{Pool, describe_error, describe_pool_error};
use crate::metrics::{self, Metrics};

/// How long `/readyz` waits for the database before saying no.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints read; `run` writes it.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    /// Whether the last cycle reached the database (true before the first).
    pub reached_database: AtomicBool,
    /// The probes' own connection, kept between probes; the metrics' reads
    /// of the log tables use it too.
    pub pool: Pool,
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.encode(),
    )
}

/// Ready when the database answers now. After a cycle that could not reach
/// it the probe asks too: the pod is back in service as soon as the database
/// is, not at the next cycle, which may be a whole schedule period away.
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let why = if shared.reached_database.load(Ordering::Relaxed) {
        ""
    } else {
        "the last cycle could not reach the database, and now: "
    };
    let ping = async {
        // The probe's own pool of one keeps its connection between probes:
        // a new TLS connection every few seconds would flood the server's
        // and PgBouncer's logs. The sidecar holds this one idle connection.
        let client = shared
            .pool
            .get()
            .await
            .map_err(|e| describe_pool_error(&e))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| describe_error(&e))
    };
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}{error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}the database did not answer within {READY_TIMEOUT:?}\n"),
        ),
    }
}
