//! The `openai-project-sync` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    openai_project_sync::cli::main()
}
