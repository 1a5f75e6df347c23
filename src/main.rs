//! `stubmail`: thin binary; the command line is defined in `cli` and
//! executed in `commands`.

mod cli;
mod commands;

use clap::Parser;

fn main() {
    stubmail::logging::init("warn");
    let cli = cli::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("stubmail: {e:#}");
        std::process::exit(1);
    }
}
