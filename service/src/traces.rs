//! Trace export: the process's `tracing` spans go to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf), configured only by the standard `OTEL_*` environment variables
//! (README, "Configuration"), and off when no endpoint is set.
//!
//! The spans are `tracing` spans bridged by `tracing-opentelemetry` into an
//! `opentelemetry_sdk` tracer provider with a batch span processor: ending a span only
//! puts it on a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048 by default) that a thread
//! of the SDK exports every `OTEL_BSP_SCHEDULE_DELAY` (5 s by default); when the queue is
//! full, spans are dropped. So a collector that is slow or down costs a command nothing
//! but lost spans. What the SDK reads itself: `OTEL_EXPORTER_OTLP_ENDPOINT` (to which
//! `/v1/traces` is added) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is),
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, the
//! `OTEL_BSP_*` batch settings and `OTEL_SPAN_LINK_COUNT_LIMIT` (128 by default: a batch
//! span links to at most that many commands or events). What this module decides:
//! whether to export at all ([`wanted`]), and the service name when `OTEL_SERVICE_NAME`
//! is unset (the binary's name rather than the SDK's `unknown_service`).

use std::time::Duration;

use opentelemetry_otlp::{ExporterBuildError, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// How long a stopping process waits for its last spans to reach the collector. Short:
/// a collector that is down must not hold up a shutdown that Kubernetes times (30 s
/// grace), and what is lost is only the last few seconds of spans.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The variables that name an OTLP endpoint; with neither set, nothing is exported.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Why trace export could not be set up; the process runs on without it.
#[derive(Debug, thiserror::Error)]
#[error("could not set up the OTLP trace exporter")]
pub struct TracesError(#[from] ExporterBuildError);

/// Whether `variable` is set to something other than blanks.
fn is_set(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|value| !value.trim().is_empty())
}

/// Whether the environment asks for trace export: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns it off (the
/// specification's meaning of both).
pub fn wanted() -> bool {
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|value| value.trim().eq_ignore_ascii_case("none"));
    !disabled && !no_exporter && ENDPOINT_VARIABLES.iter().any(|variable| is_set(variable))
}

/// The tracer provider the environment asks for, `None` when it asks for none
/// ([`wanted`]). `service_name` names the process unless `OTEL_SERVICE_NAME` does.
pub fn provider_from_env(service_name: &'static str) -> Result<Option<SdkTracerProvider>, TracesError> {
    if !wanted() {
        return Ok(None);
    }
    // The builder reads the endpoint, timeout and headers variables itself; a blocking
    // HTTP client on the batch processor's own thread, never on the runtime's.
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let mut resource = Resource::builder();
    if !is_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service_name);
    }
    // The sampler (`OTEL_TRACES_SAMPLER`) and the batch settings (`OTEL_BSP_*`) come from
    // the SDK's defaults, which read the environment.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(Some(provider))
}

/// The running trace export, to be flushed when the process stops
/// ([`crate::shutdown::flush_traces`]). Holds nothing when export is off.
#[derive(Default)]
pub struct Traces {
    pub(crate) provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued and stops the exporter, waiting at most [`FLUSH_TIMEOUT`].
    /// Blocks the calling thread: call it off the async runtime.
    pub fn shutdown_blocking(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(%error, "the last spans may not have reached the trace collector");
        }
    }
}
