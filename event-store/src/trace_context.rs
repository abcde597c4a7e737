//! The W3C trace context that an event carries from the request that caused it to the
//! read-model write, so that one deposit is one trace (README, "Observing"): stored in
//! the event's metadata (`trace`), sent as the `traceparent` header of its NATS message
//! ([`crate::relay::TRACEPARENT_HEADER`]), and continued by the projector.
//!
//! The helpers here turn a `traceparent` into the parent or a link of a `tracing` span
//! and back, through `tracing-opentelemetry` and the W3C propagator of the OpenTelemetry
//! SDK (`TraceContextPropagator`: version 00, 32 hex digits of trace id, 16 of span id,
//! flags; anything else is no context). Without the OpenTelemetry layer installed (no
//! trace export configured) they do nothing, and [`current`] returns `None`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header (and carrier key) of a span's context.
const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported: set once by the process's telemetry set-up. The spans that
/// exist only for a trace (one per relayed, decided or projected event) are created only
/// then, so a process without trace export pays nothing for them.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records that an OpenTelemetry layer exports spans in this process.
pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}

/// Whether spans are exported (see [`set_exporting`]).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A carrier holding one `traceparent` and nothing else (no `tracestate`: the store keeps
/// only the `traceparent`).
struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The OpenTelemetry context (a remote parent) a `traceparent` names; `None` for one that
/// is not valid W3C Trace Context.
pub fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
    let context = TraceContextPropagator::new().extract(&OneHeader(traceparent));
    context.span().span_context().is_valid().then_some(context)
}

/// The span context a `traceparent` names, for a link; `None` when it is not valid.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    parse(traceparent).map(|context| context.span().span_context().clone())
}

/// The `traceparent` of `span` as the OpenTelemetry layer recorded it; `None` when no
/// layer records it (trace export off) or the span is disabled. Starts the span's
/// OpenTelemetry side, so call it only after [`set_parent`].
pub fn of_span(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span (see [`of_span`]).
pub fn current() -> Option<String> {
    of_span(&tracing::Span::current())
}

/// Makes the context `traceparent` names the parent of `span`, which must not have been
/// entered yet. An absent or invalid `traceparent` leaves the span where it is.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(context) = traceparent.and_then(parse) {
        // Fails only without the layer (nothing to do) or for a span already started,
        // which callers do not pass.
        let _ = span.set_parent(context);
    }
}

/// Renames `span` as exported, once its name is known (an HTTP span's route is known only
/// after routing); `otel.name` cannot do it for a span already started.
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// Links `span` to the context `traceparent` names: a batch span to each command or event
/// it carries. An absent or invalid `traceparent` adds nothing.
pub fn add_link(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(context) = traceparent.and_then(span_context) {
        span.add_link(context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_parses_to_its_trace_and_span_id() {
        let context = span_context(GIVEN).expect("valid");
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
    }

    #[test]
    fn a_malformed_or_all_zero_traceparent_is_no_context() {
        for invalid in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(parse(invalid).is_none(), "{invalid:?} parsed");
        }
    }

    #[test]
    fn without_the_opentelemetry_layer_a_span_has_no_traceparent() {
        let span = tracing::info_span!("request");
        set_parent(&span, Some(GIVEN));
        assert_eq!(of_span(&span), None);
    }
}
