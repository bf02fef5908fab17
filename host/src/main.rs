use clap::Parser;

fn main() -> std::process::ExitCode {
    egress_proxy::cli::run(egress_proxy::cli::Cli::parse())
}
