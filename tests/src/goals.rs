//! The README's efficiency goals (issue 15), each a ratio of two figures measured in
//! the same run, or a fixed latency bound, evaluated from the JSON reports that
//! `scripts/bench.sh`'s benchmarks write. `bench-report` prints the table; this module
//! only reads figures and judges them, so the judging is tested without a benchmark.
//!
//! A goal whose figures are missing (its benchmark did not run, or could not: the peer
//! not built) is reported as not measured, with the reason, never as met.

use serde::Serialize;
use serde_json::Value;

/// The JSON reports one `scripts/bench.sh` run wrote; `None` for a benchmark that did
/// not run.
#[derive(Debug, Default, Clone)]
pub struct Results {
    /// `loadgen --start-system` (`report.json`): the whole system, and the peer.
    pub loadgen: Option<Value>,
    /// `bench-commands --json`: the command API alone.
    pub commands: Option<Value>,
    /// `bench-queries --json`: the query API alone, and `pgbench -S`.
    pub queries: Option<Value>,
    /// `bench-idle --json`: the system at rest.
    pub idle: Option<Value>,
    /// `bench-growth --json`: deposits as the log grows, and the rebuild under load.
    pub growth: Option<Value>,
}

/// Whether a goal is met in this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// A figure is missing; the text says which and why.
    NotMeasured(String),
}

/// One row of the goals table.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What the goal asks, in the README's words.
    pub goal: String,
    /// The figure measured, formatted with its unit; empty when not measured.
    pub measured: String,
    /// What it is held against, measured in the same run (or a fixed bound), formatted.
    pub limit: String,
    /// Measured ÷ the reference it is a multiple of (throughput goals), or measured ÷
    /// the bound (latency and cost goals); `None` when not measured.
    pub ratio: Option<f64>,
    pub verdict: Verdict,
}

/// A figure of `report` at JSON `pointer` (RFC 6901, `/a/0/b`).
fn figure(report: &Option<Value>, pointer: &str) -> Option<f64> {
    report.as_ref()?.pointer(pointer)?.as_f64()
}

/// Why a figure is missing: its report is missing, or the report says why (the peer's
/// `unavailable`), or the report lacks it.
fn missing(report: &Option<Value>, benchmark: &str, pointer: &str) -> String {
    match report {
        None => format!("{benchmark} did not run"),
        Some(report) => report
            .pointer(&format!("{}/unavailable", parent(pointer)))
            .and_then(Value::as_str)
            .map_or_else(
                || format!("{benchmark}'s report has no {pointer}"),
                |reason| format!("{benchmark}: {reason}"),
            ),
    }
}

fn parent(pointer: &str) -> &str {
    pointer.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// `measured` ≥ `factor` × `reference`: a throughput goal relative to a rate measured
/// in the same run. The ratio is measured ÷ reference, met when it reaches `factor`.
fn at_least_times(
    goal: &str,
    measured: Result<f64, String>,
    reference: Result<f64, String>,
    factor: f64,
    reference_name: &str,
    unit: &str,
) -> Goal {
    match (measured, reference) {
        (Ok(measured), Ok(reference)) if reference > 0.0 => {
            let ratio = measured / reference;
            Goal {
                goal: goal.to_owned(),
                measured: format!("{measured:.0} {unit}"),
                limit: format!("{factor} × {reference_name} = {:.0} {unit}", factor * reference),
                ratio: Some(ratio),
                verdict: if ratio >= factor {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            }
        }
        (Ok(_), Ok(reference)) => not_measured(goal, format!("{reference_name} measured as {reference}")),
        (Err(reason), _) | (_, Err(reason)) => not_measured(goal, reason),
    }
}

/// `measured` below (or, with `inclusive`, at most) `bound`: a latency or cost goal.
/// The ratio is measured ÷ bound, met below 1 (at most 1 when inclusive).
fn below(goal: &str, measured: Result<f64, String>, bound: f64, inclusive: bool, unit: &str) -> Goal {
    match measured {
        Ok(measured) => {
            let ratio = measured / bound;
            let met = if inclusive {
                measured <= bound
            } else {
                measured < bound
            };
            Goal {
                goal: goal.to_owned(),
                measured: format!("{measured:.2} {unit}"),
                limit: format!("{} {bound} {unit}", if inclusive { "≤" } else { "<" }),
                ratio: Some(ratio),
                verdict: if met { Verdict::Met } else { Verdict::Missed },
            }
        }
        Err(reason) => not_measured(goal, reason),
    }
}

fn not_measured(goal: &str, reason: String) -> Goal {
    Goal {
        goal: goal.to_owned(),
        measured: String::new(),
        limit: String::new(),
        ratio: None,
        verdict: Verdict::NotMeasured(reason),
    }
}

/// A figure, or why it is missing.
fn get(report: &Option<Value>, benchmark: &str, pointer: &str) -> Result<f64, String> {
    figure(report, pointer).ok_or_else(|| missing(report, benchmark, pointer))
}

/// The deposit scenario's row of `loadgen`'s report.
fn loadgen_deposits(results: &Results) -> Option<Value> {
    results
        .loadgen
        .as_ref()?
        .get("scenarios")?
        .as_array()?
        .iter()
        .find(|scenario| scenario["scenario"] == "deposits")
        .cloned()
}

/// Every goal of the README, judged from `results`.
pub fn evaluate(results: &Results) -> Vec<Goal> {
    let deposits = loadgen_deposits(results);
    let whole = |pointer: &str| match &deposits {
        Some(row) => row
            .pointer(pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("loadgen's deposit row has no {pointer}")),
        None => Err("loadgen's deposit scenario did not run".to_owned()),
    };
    let growth_sizes = results
        .growth
        .as_ref()
        .and_then(|growth| growth.get("sizes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let size_rate = |index: Option<usize>| -> Result<(f64, f64), String> {
        let size = index
            .and_then(|index| growth_sizes.get(index))
            .ok_or_else(|| "bench-growth did not run two sizes".to_owned())?;
        Ok((
            size["events"].as_f64().unwrap_or(0.0),
            size["per_second"]
                .as_f64()
                .ok_or("bench-growth's size has no per_second")?,
        ))
    };
    let smallest = size_rate(Some(0));
    let largest = size_rate(growth_sizes.len().checked_sub(1).filter(|&last| last > 0));
    let largest_label = largest
        .as_ref()
        .map_or("the largest log".to_owned(), |(events, _)| {
            format!("{events:.0} events")
        });

    vec![
        at_least_times(
            "whole system: deposits/s ≥ 5 × the peer",
            whole("/per_second"),
            get(&results.loadgen, "loadgen", "/peer/per_second"),
            5.0,
            "the peer's",
            "/s",
        ),
        below(
            "whole system: deposit p99 < 25 ms",
            whole("/p99_ms"),
            25.0,
            false,
            "ms",
        ),
        at_least_times(
            &format!(
                "command API alone: deposits/s over {} accounts ≥ 1.0 × PostgreSQL's single-row INSERT commits at 16 connections",
                figure(&results.commands, "/accounts")
                    .map_or("the".to_owned(), |accounts| format!("{accounts:.0}"))
            ),
            get(&results.commands, "bench-commands", "/deposits_many/per_second"),
            get(&results.commands, "bench-commands", "/postgres_commits_16"),
            1.0,
            "INSERT commits",
            "/s",
        ),
        at_least_times(
            "query API: `GET /accounts/{id}` requests/s ≥ 1.5 × `pgbench -S` (16 clients)",
            get(
                &results.queries,
                "bench-queries",
                "/accounts_closed_loop/per_second",
            ),
            get(&results.queries, "bench-queries", "/pgbench_select_tps"),
            1.5,
            "pgbench -S",
            "/s",
        ),
        below(
            "query API: p99 < 5 ms offered open loop at 0.8 × its closed-loop rate",
            get(&results.queries, "bench-queries", "/accounts_paced/p99_ms"),
            5.0,
            false,
            "ms",
        ),
        below(
            "visibility lag p99 ≤ 30 ms, deposits offered at half the whole-system rate",
            get(
                &results.loadgen,
                "loadgen",
                "/visibility_lag_under_load/lag/p99_ms",
            ),
            30.0,
            true,
            "ms",
        ),
        below(
            "idle: whole system at rest, PostgreSQL included, < 1% of one core",
            get(&results.idle, "bench-idle", "/cpu_percent_of_one_core"),
            1.0,
            false,
            "% of a core",
        ),
        below(
            "idle: < 1 statement per second",
            get(&results.idle, "bench-idle", "/statements_per_second"),
            1.0,
            false,
            "/s",
        ),
        at_least_times(
            &format!("with {largest_label} stored: deposits/s ≥ 0.9 × the rate with the smallest log"),
            largest.map(|(_, rate)| rate),
            smallest.map(|(_, rate)| rate),
            0.9,
            "the smallest log's",
            "/s",
        ),
        at_least_times(
            "rebuild --all under load: events/s ≥ 0.9 × (COPY into bare tables + the same indexes)",
            get(&results.growth, "bench-growth", "/rebuild/events_per_second"),
            get(
                &results.growth,
                "bench-growth",
                "/rebuild/reference_events_per_second",
            ),
            0.9,
            "the reference's",
            "events/s",
        ),
        below(
            "live visibility lag p99 < 100 ms during the rebuild",
            get(&results.growth, "bench-growth", "/rebuild/lag_p99_ms"),
            100.0,
            false,
            "ms",
        ),
    ]
}

/// The goals as a Markdown table: goal, measured, limit measured in the same run,
/// ratio, met/missed.
pub fn markdown(goals: &[Goal]) -> String {
    let mut out =
        String::from("| goal | measured | limit (same run) | ratio | met? |\n|---|---:|---:|---:|---|\n");
    for goal in goals {
        let verdict = match &goal.verdict {
            Verdict::Met => "met".to_owned(),
            Verdict::Missed => "**missed**".to_owned(),
            Verdict::NotMeasured(reason) => format!("not measured: {}", reason.replace('\n', " ")),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            goal.goal,
            goal.measured,
            goal.limit,
            goal.ratio.map_or(String::new(), |ratio| format!("{ratio:.2}")),
            verdict.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> Results {
        Results {
            loadgen: Some(json!({
                "scenarios": [
                    { "scenario": "deposits", "per_second": 6000.0, "p99_ms": 20.0 },
                    { "scenario": "hot", "per_second": 1.0, "p99_ms": 900.0 },
                ],
                "peer": { "per_second": 1000.0, "p99_ms": 80.0 },
                "visibility_lag_under_load": { "lag": { "p99_ms": 30.0 } },
            })),
            commands: Some(
                json!({ "accounts": 10000, "postgres_commits_16": 10000.0, "deposits_many": { "per_second": 9000.0 } }),
            ),
            queries: Some(json!({
                "pgbench_select_tps": 20000.0,
                "accounts_closed_loop": { "per_second": 31000.0 },
                "accounts_paced": { "p99_ms": 4.0 },
            })),
            idle: Some(json!({ "cpu_percent_of_one_core": 0.5, "statements_per_second": 0.4 })),
            growth: Some(json!({
                "sizes": [ { "events": 0, "per_second": 5000.0 }, { "events": 10000000, "per_second": 4600.0 } ],
                "rebuild": { "events_per_second": 100.0, "reference_events_per_second": 100.0, "lag_p99_ms": 150.0 },
            })),
        }
    }

    fn verdicts(results: &Results) -> Vec<Verdict> {
        evaluate(results).into_iter().map(|goal| goal.verdict).collect()
    }

    #[test]
    fn each_goal_is_judged_against_its_own_reference() {
        use Verdict::{Met, Missed};
        assert_eq!(
            verdicts(&full()),
            vec![Met, Met, Missed, Met, Met, Met, Met, Met, Met, Met, Missed]
        );
        let goals = evaluate(&full());
        assert_eq!(goals[0].ratio, Some(6.0));
        assert_eq!(goals[2].ratio, Some(0.9));
        assert!(goals[8].goal.contains("10000000 events"), "{}", goals[8].goal);
        assert!(goals[2].goal.contains("over 10000 accounts"), "{}", goals[2].goal);
    }

    #[test]
    fn a_missing_peer_is_not_measured_with_its_reason_and_never_met() {
        let mut results = full();
        results.loadgen.as_mut().expect("loadgen")["peer"] = json!({ "unavailable": "cargo failed" });
        let goal = &evaluate(&results)[0];
        assert_eq!(
            goal.verdict,
            Verdict::NotMeasured("loadgen: cargo failed".to_owned())
        );
        assert!(markdown(std::slice::from_ref(goal)).contains("not measured: loadgen: cargo failed"));
    }

    #[test]
    fn a_benchmark_that_did_not_run_leaves_its_goals_unmeasured() {
        let results = Results {
            growth: None,
            ..full()
        };
        let goals = evaluate(&results);
        assert!(matches!(&goals[8].verdict, Verdict::NotMeasured(reason) if reason.contains("two sizes")));
        assert_eq!(
            goals[9].verdict,
            Verdict::NotMeasured("bench-growth did not run".to_owned())
        );
    }
}
