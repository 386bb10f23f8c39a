//! The `firebreak` binary: parse the command line and hand over to [`firebreak::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = firebreak::cli::Cli::parse();
    firebreak::cli::main(cli)
}
