use clap::Parser;

fn main() -> std::process::ExitCode {
    agent::cli::main(agent::cli::Cli::parse())
}
