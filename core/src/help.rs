//! Keeps the examples in every program's `--help` true.

/// Shared by the binaries' tests: every leaf subcommand's help shows at
/// least one example, and every example parses with the real definition.
pub fn check_examples(cmd: clap::Command, program: &str, parse: &dyn Fn(Vec<String>) -> Result<(), String>) {
    fn leaves(c: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
        let subs: Vec<_> = c.get_subcommands().filter(|s| s.get_name() != "help").collect();
        if subs.is_empty() {
            out.push((path.clone(), c.clone()));
        }
        for s in subs {
            let mut p = path.clone();
            p.push(s.get_name().to_string());
            leaves(s, p, out);
        }
    }
    let mut all = Vec::new();
    leaves(&cmd, vec![], &mut all);
    for (path, mut c) in all {
        let help = c.render_long_help().to_string();
        let examples: Vec<&str> = help.lines().map(str::trim).filter(|l| l.starts_with(&format!("{program} "))).collect();
        assert!(!examples.is_empty(), "`{program} {}` --help shows no example:\n{help}", path.join(" "));
        for ex in examples {
            // The command itself, without shell redirections or pipes.
            let cmdline = ex.split(['>', '|', '#']).next().unwrap_or(ex);
            let words: Vec<String> = cmdline.split_whitespace().map(str::to_string).collect();
            if let Err(e) = parse(words) {
                panic!("example {ex:?} does not parse: {e}");
            }
        }
    }
}

