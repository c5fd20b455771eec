//! `user-service` binary: a skeleton that says it is not implemented yet and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!("user-service is not implemented yet");
    std::process::ExitCode::FAILURE
}
