//! `alert-subscriber` binary: a skeleton that says it is not implemented yet and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!("alert-subscriber is not implemented yet");
    std::process::ExitCode::FAILURE
}
