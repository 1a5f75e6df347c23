//! `cargo bench --bench suite` (run by `bench/run`): every benchmark at the
//! sizes issue #8 names, against release builds; prints the table and
//! writes bench/RESULTS.md. `-- --smoke` runs the tiny sizes instead.

#[path = "../tests/common/mod.rs"]
mod common;
mod suite;

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let scale = if smoke { suite::Scale::smoke() } else { suite::Scale::full() };
    // `--only TEXT`: just the benchmarks whose name contains TEXT (for
    // profiling one of them); RESULTS.md is then left alone.
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let rows = suite::run_only(&scale, only.as_deref());
    let table = suite::markdown(&rows);
    println!("{table}");
    if smoke || only.is_some() {
        return;
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024))
        .unwrap_or(0);
    let date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let missed: Vec<&suite::Row> = rows.iter().filter(|r| !r.met).collect();
    let mut md = format!(
        "# Benchmark results\n\nMeasured by `bench/run` on {date}: {cpu}, {cores} cores, {mem} GiB, loopback only. \
         Release builds. Each figure was measured beside its anchor in the same run; ratios are oriented so that \
         higher is better for Stubmail.\n\n{table}\n"
    );
    md.push_str("## Targets missed\n\n");
    if missed.is_empty() {
        md.push_str("None.\n");
    }
    for r in missed {
        md.push_str(&format!("- **{}**: {} against a target of {}.\n", r.name, r.ours, r.target));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    // The analysis (what the profiles show) is written by hand: keep it.
    if let Some(analysis) = std::fs::read_to_string(&path).ok().and_then(|old| old.find("\n## Analysis").map(|i| old[i..].to_string())) {
        md.push_str(&analysis);
    }
    std::fs::write(&path, md).expect("writing bench/RESULTS.md");
    eprintln!("wrote {}", path.display());
}
