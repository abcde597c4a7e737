//! Every metric an eventledger process exports, in one table: its name, kind and help
//! text. The recorder describes them all at start, so `/metrics` carries `# HELP` and
//! `# TYPE` for each (`promtool check metrics` wants both), and a reader looking for
//! "what does this series mean" finds it here, as do the alert rules and the dashboard
//! (`deploy/prometheus/alerts.yml`, `deploy/grafana/`).
//!
//! Names follow Prometheus' conventions: base units as suffixes (`_seconds`), `_total`
//! on counters, no unit on pure counts of things already named (`_events`, `_commands`).
//! Durations and sizes are histograms with fixed buckets ([`LATENCY_BUCKETS_SECONDS`],
//! [`BATCH_SIZE_BUCKETS`]), not summaries: buckets add up across instances and keep
//! their meaning after a quiet minute.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

/// Bucket bounds, in seconds, of every `_seconds` histogram: from 0.5 ms (a cached
/// lookup) to the 15 s request timeout, about three to a decade so a quantile read from
/// them is off by at most a factor of about 2.5.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// Bucket bounds of the batch-size histograms (commands or events per batch): powers of
/// two up to the largest batch any part of the system forms.
pub const BATCH_SIZE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The batch-size histograms, which take [`BATCH_SIZE_BUCKETS`]; every other histogram
/// is a duration in seconds.
pub const BATCH_SIZE_HISTOGRAMS: [&str; 2] = ["command_api_batch_commands", "projector_batch_events"];

/// Every metric, by the crate that records it.
pub const METRICS: &[Metric] = &[
    // service: every process.
    metric(
        "eventledger_build_info",
        Kind::Gauge,
        "Always 1; the version label says which build runs.",
    ),
    metric(
        "eventledger_ready",
        Kind::Gauge,
        "1 while the process's dependencies (PostgreSQL, NATS) answer, checked at each scrape; 0 otherwise.",
    ),
    metric(
        "eventledger_dependency_up",
        Kind::Gauge,
        "1 while the dependency named by the label answers, checked at each scrape.",
    ),
    metric(
        "http_requests_total",
        Kind::Counter,
        "HTTP requests answered, by route template, method and status code.",
    ),
    metric(
        "http_request_duration_seconds",
        Kind::Histogram,
        "Time from the request's headers to its answer, by route template and method.",
    ),
    metric(
        "http_requests_refused_total",
        Kind::Counter,
        "Requests refused before a handler ran, by reason: overloaded, timeout, headers-too-large.",
    ),
    // command-api.
    metric(
        "command_api_commands_total",
        Kind::Counter,
        "Commands handled, by command and outcome (committed, already_stored, or the problem type).",
    ),
    metric(
        "command_api_command_seconds",
        Kind::Histogram,
        "Time to decide and commit one command, retries included, by command.",
    ),
    metric(
        "command_api_queue_depth",
        Kind::Gauge,
        "Commands waiting for the committer.",
    ),
    metric(
        "command_api_command_retries_total",
        Kind::Counter,
        "Commands decided again after a version conflict.",
    ),
    metric(
        "command_api_batch_commands",
        Kind::Histogram,
        "Commands carried by one group-commit transaction.",
    ),
    metric(
        "command_api_batch_seconds",
        Kind::Histogram,
        "Time to commit one group-commit transaction.",
    ),
    metric(
        "command_api_idempotent_replays_total",
        Kind::Counter,
        "Requests answered from the idempotency table.",
    ),
    metric(
        "command_api_errors_total",
        Kind::Counter,
        "Error answers, by problem type.",
    ),
    metric(
        "command_api_expiries_total",
        Kind::Counter,
        "Pending transfers the expiry worker tried to void, by outcome: expired, lost (a post or void won), failed.",
    ),
    metric(
        "command_api_expiry_failures_total",
        Kind::Counter,
        "Expiry worker rounds that failed (PostgreSQL unavailable, lost its lock connection).",
    ),
    // event-store, in the command API.
    metric(
        "event_store_events_appended_total",
        Kind::Counter,
        "Events appended to the log.",
    ),
    metric(
        "relay_active",
        Kind::Gauge,
        "1 on the instance whose relay holds the leadership lock and publishes, 0 on a standby and between rounds, by relay name.",
    ),
    metric(
        "relay_position",
        Kind::Gauge,
        "The last position the relay published and saw acknowledged, by relay name.",
    ),
    metric(
        "relay_published_total",
        Kind::Counter,
        "Events the relay published and saw acknowledged.",
    ),
    metric(
        "relay_failures_total",
        Kind::Counter,
        "Relay rounds that failed and started again.",
    ),
    // projector.
    metric(
        "projector_position",
        Kind::Gauge,
        "The projection's checkpoint: the last position applied, by projection.",
    ),
    metric(
        "projector_head",
        Kind::Gauge,
        "The last position in the event log.",
    ),
    metric(
        "projector_lag_events",
        Kind::Gauge,
        "Events in the log the projection has not applied yet, by projection.",
    ),
    metric(
        "projector_lag_seconds",
        Kind::Gauge,
        "Age of the oldest event the projection has not applied yet, by projection (0 when caught up).",
    ),
    metric(
        "projector_state",
        Kind::Gauge,
        "1 for the state the projection is in (live, rebuilding, stopped), by projection and state.",
    ),
    metric(
        "projector_events_applied_total",
        Kind::Counter,
        "Events applied to the read model, by projection.",
    ),
    metric(
        "projector_batches_total",
        Kind::Counter,
        "Batches applied in one transaction each, by projection.",
    ),
    metric(
        "projector_batch_events",
        Kind::Histogram,
        "Events applied by one batch transaction, by projection.",
    ),
    metric(
        "projector_duplicates_skipped_total",
        Kind::Counter,
        "Delivered events at or below the checkpoint, skipped, by projection.",
    ),
    metric(
        "projector_gap_events_filled_total",
        Kind::Counter,
        "Events missing from a delivery and read from PostgreSQL instead, by projection.",
    ),
    metric(
        "projector_failures_total",
        Kind::Counter,
        "Live projection rounds that failed and caught up again, by projection.",
    ),
    metric(
        "projector_stops_total",
        Kind::Counter,
        "Projections stopped on an event that cannot be applied, by projection.",
    ),
    metric(
        "projector_lease_held",
        Kind::Gauge,
        "1 while this projector instance holds the projection's live-applier lease, else 0, by projection.",
    ),
    metric("projector_rebuilds_total", Kind::Counter, "Rebuilds started."),
    metric(
        "projector_rebuild_events_total",
        Kind::Counter,
        "Events replayed by rebuilds.",
    ),
];

/// Describes every metric of [`METRICS`] to the installed recorder.
pub fn describe_all() {
    for metric in METRICS {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_end_in_total_and_nothing_else_does() {
        for metric in METRICS {
            assert_eq!(
                metric.kind == Kind::Counter,
                metric.name.ends_with("_total"),
                "{}",
                metric.name
            );
        }
    }

    #[test]
    fn every_histogram_is_a_duration_or_a_batch_size() {
        for metric in METRICS.iter().filter(|metric| metric.kind == Kind::Histogram) {
            assert!(
                metric.name.ends_with("_seconds") || BATCH_SIZE_HISTOGRAMS.contains(&metric.name),
                "{}",
                metric.name
            );
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = METRICS.iter().map(|metric| metric.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
    }
}
