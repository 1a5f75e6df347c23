//! The benchmark harness at tiny sizes (issue #8: CI runs a smoke mode so
//! the harness cannot rot). Figures from debug builds mean nothing; this
//! only checks that every benchmark runs and measures something.

mod common;
#[path = "../bench/suite.rs"]
mod suite;

#[test]
fn every_benchmark_runs_at_smoke_size() {
    let rows = suite::run(&suite::Scale::smoke());
    let table = suite::markdown(&rows);
    println!("{table}");
    assert_eq!(rows.len(), 10, "{table}");
    for r in &rows {
        assert!(r.ours.chars().any(|c| c.is_ascii_digit()), "no figure for {}: {table}", r.name);
        if let Some(x) = r.ratio {
            assert!(x.is_finite() && x > 0.0, "ratio of {}: {table}", r.name);
        }
    }
}
