//! `bench-report`: the benchmark report of one `scripts/bench.sh` run, put together from
//! what each benchmark wrote into the results folder: the goals table (`tests::goals`),
//! then each benchmark's own Markdown. Writes `report.md` (everything), `report.json`
//! (the goals and every benchmark's JSON) and `summary.md` (the goals table and the
//! headline figures, which `scripts/bench.sh` puts into the README).
//!
//!     target/release/bench-report --dir bench-results

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::{Value, json};
use tests::bench::{machine, write_json};
use tests::goals::{self, Results};

#[derive(Parser)]
#[command(
    name = "bench-report",
    about = "The goals table and the whole benchmark report"
)]
struct Args {
    /// The results folder the benchmarks wrote into.
    #[arg(long, default_value = "bench-results")]
    dir: PathBuf,
    /// A line on how the run was made (the command, `--quick`), put above the table.
    #[arg(long, default_value = "")]
    note: String,
}

/// The benchmarks' reports in the results folder: (title, Markdown file, JSON file).
const SECTIONS: [(&str, &str, &str); 5] = [
    (
        "The whole system (`loadgen --start-system`) and the peer",
        "loadgen/report.md",
        "loadgen/report.json",
    ),
    (
        "The command API alone (`bench-commands`)",
        "commands.md",
        "commands.json",
    ),
    (
        "The query API alone (`bench-queries`) and `pgbench -S`",
        "queries.md",
        "queries.json",
    ),
    (
        "As the log grows, and rebuild under load (`bench-growth`)",
        "growth.md",
        "growth.json",
    ),
    ("At rest (`bench-idle`)", "idle.md", "idle.json"),
];

/// Reads a JSON report; `None` when the benchmark did not write one.
fn read_json(path: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text)?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut reports = Vec::new();
    for (_, _, json) in SECTIONS {
        reports.push(read_json(&args.dir.join(json))?);
    }
    let results = Results {
        loadgen: reports[0].clone(),
        commands: reports[1].clone(),
        queries: reports[2].clone(),
        growth: reports[3].clone(),
        idle: reports[4].clone(),
    };
    let goals = goals::evaluate(&results);
    let table = goals::markdown(&goals);
    let header = format!(
        "Machine: {}. {}Every ratio is of two figures measured in this run; the limits are \
         measured, not quoted. The ratio of a throughput goal is the measured rate ÷ the rate \
         it is a multiple of (met at the goal's factor: 5 for the peer); of a bound, the \
         measured figure ÷ the bound (met below 1). Details: `bench-results/report.md` \
         (of a full run, also `docs/benchmark-report.md`).\n",
        machine(),
        if args.note.is_empty() {
            String::new()
        } else {
            format!("{} ", args.note)
        }
    );
    let summary = format!("{header}\n{table}");
    let mut report = format!("## Efficiency goals\n\n{summary}");
    for (title, markdown, _) in SECTIONS {
        report.push_str(&format!("\n## {title}\n\n"));
        match std::fs::read_to_string(args.dir.join(markdown)) {
            Ok(text) => report.push_str(text.trim_end()),
            Err(_) => report.push_str("Not run."),
        }
        report.push('\n');
    }
    std::fs::write(args.dir.join("summary.md"), &summary)?;
    std::fs::write(args.dir.join("report.md"), &report)?;
    let sections: serde_json::Map<String, Value> = SECTIONS
        .iter()
        .zip(&reports)
        .map(|((_, _, json), report)| ((*json).to_owned(), report.clone().unwrap_or(Value::Null)))
        .collect();
    write_json(
        &args.dir.join("report.json"),
        &json!({ "machine": machine(), "note": args.note, "goals": goals, "benchmarks": sections }),
    )?;
    println!("{summary}");
    Ok(())
}
