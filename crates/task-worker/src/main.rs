//! `task-worker` binary: a skeleton that says it is not implemented yet and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!("task-worker is not implemented yet");
    std::process::ExitCode::FAILURE
}
