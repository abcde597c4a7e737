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
//!
//! Spans are also exported as OpenTelemetry traces when the `OTEL_*` variables ask for it
//! ([`crate::traces`]). `RUST_LOG` then filters the log lines only: the exporter gets
//! every span and event at `info` and above whatever the log level, so quiet logs do not
//! mean empty traces.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::LogFormat;
use crate::metrics_catalog::{self, BATCH_SIZE_BUCKETS, BATCH_SIZE_HISTOGRAMS, LATENCY_BUCKETS_SECONDS};
use crate::traces::{self, Traces};

/// The least severe spans and events exported as traces: the request, command, batch
/// and event spans are all `info`; `debug` would add every statement's log line.
const TRACES_LEVEL: LevelFilter = LevelFilter::INFO;

/// Installs the global log subscriber, the metrics recorder, and the trace exporter when
/// the environment asks for one (`service_name` names the process unless
/// `OTEL_SERVICE_NAME` does). Calling it again (as tests do) keeps the first. A trace
/// exporter that cannot be set up is logged and left out: the process runs without
/// traces rather than not at all.
pub fn init(format: LogFormat, service_name: &'static str) -> Traces {
    // The recorder first: whatever a process records before its `/metrics` route exists
    // (the relay's `relay_active` as it takes the lock at start, say) would otherwise go
    // to no recorder and be lost until it was set again.
    metrics_handle();
    let (provider, failure) = match traces::provider_from_env(service_name) {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(provider) = provider else {
        init_logging_only(format, filter);
        if let Some(error) = failure {
            tracing::error!(error = %event_store::error_chain(&error), "traces are not exported");
        }
        return Traces::default();
    };
    let tracer = provider.tracer("eventledger");
    let exported = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(TRACES_LEVEL);
    let installed = tracing_subscriber::registry()
        .with(log_layer(format).with_filter(filter))
        .with(exported)
        .try_init()
        .is_ok();
    event_store::trace_context::set_exporting(installed);
    Traces {
        provider: Some(provider),
    }
}

/// Without trace export: one filter for the whole subscriber, so a disabled span costs
/// nothing at all.
fn init_logging_only(format: LogFormat, filter: EnvFilter) {
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

/// The log lines as a layer beside the exporter, formatted as [`init_logging_only`] does.
fn log_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
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
