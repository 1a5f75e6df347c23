//! `post_manager-cgi`: the outbox as a CGI program only (RFC 3875), for
//! Apache, nginx+fcgiwrap or any web server that starts a process per
//! request. The same handler as `post_manager` (which also answers CGI),
//! without the server, UDP, client and command-line code: a web server
//! starts it for every request, and what it must map and relocate at
//! start-up is most of its cost (docs/OPERATING.md).

fn main() -> std::process::ExitCode {
    stubmail::logging::init("info");
    // Private files, as `post_manager` (see its main.rs).
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    if !post_manager::cgi::is_cgi() {
        eprintln!("post_manager-cgi answers one request from a web server (GATEWAY_INTERFACE=CGI/1.1); run `post_manager serve` for a standalone outbox");
        return std::process::ExitCode::from(2);
    }
    match post_manager::cgi::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("post_manager-cgi: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
