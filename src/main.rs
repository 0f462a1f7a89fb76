//! The binary is glue: parse, validate, run, report, exit.

use clap::{CommandFactory, FromArgMatches};
use ringsync::cli::{Cli, Command};
use ringsync::error::exit;

fn main() {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let sub = matches.subcommand().map(|(_, m)| m);
    let usage = |e: String| -> ! {
        eprintln!("ringsync: {e}");
        std::process::exit(exit::USAGE);
    };
    let code = match cli.command {
        Command::Mirror(args) => {
            let cfg = args.validate(sub).unwrap_or_else(|e| usage(e));
            ringsync::mirror::mirror(&cfg)
        }
        Command::Bench(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::bench::bench(&cfg)
        }
        Command::Diff(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::mirror::diff(&cfg)
        }
        Command::Copy(args) => {
            let cfg = args.validate(sub).unwrap_or_else(|e| usage(e));
            let opts = ringsync::copy::CopyOptions {
                dry_run: args.dry_run,
                deref: args.dereference_src,
                json: args.data.json,
            };
            ringsync::copy::copy(cfg, &opts)
        }
    };
    std::process::exit(code);
}
