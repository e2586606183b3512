//! `alexnet`: fine-tune an ImageNet AlexNet on a folder of labelled photos.

mod args;
mod backends;
mod commands;
mod experiment;
mod plots;
mod progress;
mod rundir;
mod selfcheck;
mod weights_cmd;

use clap::Parser;

fn main() {
    let mut cli = args::Cli::parse();
    cli.apply_globals();
    // Every flag is checked before any work: one-line usage errors, exit status 2.
    if let Err(e) = args::validate(&cli) {
        e.exit();
    }
    alexnet_core::retain_freed_memory();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
