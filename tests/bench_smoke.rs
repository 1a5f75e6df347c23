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
    assert_eq!(rows.len(), 30, "{table}");
    for r in &rows {
        assert!(r.ours.chars().any(|c| c.is_ascii_digit()), "no figure for {}: {table}", r.name);
        if let Some(x) = r.ratio {
            assert!(x.is_finite() && x > 0.0, "ratio of {}: {table}", r.name);
        }
    }
}

#[test]
fn an_anchor_that_cannot_start_is_named_with_what_its_log_says() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("apache-error.log");
    std::fs::write(&log, "AH00526: Syntax error on line 3 of apache.conf: Invalid command 'Lisen'\n").unwrap();
    let port = common::free_port();
    let failed = std::panic::catch_unwind(|| suite::wait_anchor_tries("Apache", port, &[&log], 2)).unwrap_err();
    let said = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(said.contains("Apache did not start") && said.contains("Invalid command 'Lisen'"), "{said}");
    // The log is quoted, not pointed at: it is gone with its directory.
    drop(d);
    assert!(said.contains("AH00526"), "{said}");
}
