//! Logging and metrics set-up. Logs go to stderr as text or JSON lines (`LOG_FORMAT`),
//! filtered by `RUST_LOG`; metrics are recorded with the `metrics` facade and rendered
//! in the Prometheus text format by `/metrics`, durations and sizes as histograms with
//! the buckets of [`crate::metrics_catalog`].
//!
//! JSON lines carry fixed top-level keys a log pipeline indexes as they are:
//! `timestamp` (RFC 3339, UTC), `level`, `message`, `target`, the event's own fields,
//! and `span` (the current span's name and fields: `method`, `route`,
//! `correlation_id` for a request). Text lines carry ANSI colour codes only when stderr
//! is a terminal, so log files and collectors get plain text.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use super::LogFormat;
use crate::metrics_catalog::{self, BATCH_SIZE_BUCKETS, BATCH_SIZE_HISTOGRAMS, LATENCY_BUCKETS_SECONDS};

/// Installs the global log subscriber. Calling it again (as tests do) keeps the first.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use. One per process because
/// the `metrics` facade has one global recorder; tests that run several apps in one
/// process share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = prometheus_builder().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours just renders
            // nothing; not a reason to stop the process.
            let _ = metrics::set_global_recorder(recorder);
            metrics_catalog::describe_all();
            // Always present, so a scrape tells which version runs even before traffic.
            metrics::gauge!("eventledger_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The exporter's settings: every histogram rendered with buckets, batch sizes with
/// their own bounds, every other one (a duration) with the latency bounds. The exporter
/// refuses only an empty list of bounds, and both lists are non-empty constants.
fn prometheus_builder() -> PrometheusBuilder {
    bucketed_builder().unwrap_or_else(|error| {
        tracing::error!(%error, "histogram buckets refused; rendering summaries instead");
        PrometheusBuilder::new()
    })
}

fn bucketed_builder() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for name in BATCH_SIZE_HISTOGRAMS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), &BATCH_SIZE_BUCKETS)?;
    }
    builder.set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS_SECONDS)
}
