//! Logging and metrics set-up. Logs go to stderr as text or JSON (`LOG_FORMAT`), filtered
//! by `RUST_LOG`; metrics are recorded with the `metrics` facade and rendered in the
//! Prometheus text format by `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Installs the global log subscriber. Calling it again (as tests do) keeps the first.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use. One per process because
/// the `metrics` facade has one global recorder; tests that run several apps in one
/// process share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours just renders
            // nothing; not a reason to stop the process.
            let _ = metrics::set_global_recorder(recorder);
            // Always present, so a scrape tells which version runs even before traffic.
            metrics::gauge!("eventledger_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}
