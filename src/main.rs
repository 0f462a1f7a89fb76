//! The binary is glue: parse, validate, run, report, exit.

/// `eprintln!` that cannot panic on a closed stderr (as in the library, src/lib.rs).
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use clap::{CommandFactory, FromArgMatches};
use ringsync::cli::{Cli, Command};
use ringsync::error::exit;

/// `ringsync 0.1.0 (git 0123456789ab)`; `--version` also says whether io_uring works here
/// (probed only when asked: it costs a ring set-up).
fn command() -> clap::Command {
    let short = concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("RINGSYNC_GIT_COMMIT"),
        ")"
    );
    let cmd = Cli::command().version(short);
    if !std::env::args_os().any(|a| a == "--version") {
        return cmd;
    }
    let kernel = rustix::system::uname().release().to_string_lossy().into_owned();
    let uring = match ringsync::ring::probe_uring() {
        Ok(()) => format!("io_uring: usable (kernel {kernel})"),
        Err(e) => format!(
            "io_uring: not usable here ({e}; kernel {kernel}): copy and mirror use the \
             pread/pwrite engine"
        ),
    };
    cmd.long_version(format!("{short}\n{uring}"))
}

/// `ringsync man [COMMAND] [--dir DIR]`.
fn man(sub: Option<&str>, dir: Option<&std::path::Path>) -> i32 {
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let res = match (sub, dir) {
        (_, Some(d)) => clap_mangen::generate_to(cmd, d).map_err(|e| format!("{}: {e}", d.display())),
        (Some(name), None) => match cmd.find_subcommand(name) {
            Some(s) => clap_mangen::Man::new(s.clone())
                .render(&mut std::io::stdout())
                .map_err(|e| e.to_string()),
            None => {
                eprintln!(
                    "ringsync: man: no subcommand '{name}' (copy, mirror, diff, send, receive, dump, bench, completions, man)"
                );
                return exit::USAGE;
            }
        },
        (None, None) => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(|e| e.to_string()),
    };
    match res {
        Ok(()) => exit::OK,
        Err(e) => {
            // A closed stdout (`| head`) is not worth a message.
            if !e.contains("Broken pipe") {
                eprintln!("ringsync: man: {e}");
            }
            exit::FATAL
        }
    }
}

/// A mirror or copy with a remote side.
fn run_remote((opts, src, dst): ringsync::cli::RemoteRunOpts) -> i32 {
    let _ = ringsync::signals::install(|_| {});
    ringsync::remote::mirror(&opts, &src, &dst)
}

/// `ringsync serve ROLE`: the other machine's end of a remote mirror.
fn serve(role: ringsync::cli::ServeRole) -> i32 {
    use ringsync::cli::ServeRole;
    match role {
        ServeRole::Receive { dst, no_fsync, quiet } => ringsync::remote::serve_receive(
            &ringsync::receive::ReceiveConfig {
                dst,
                input: None,
                drop_privileged: false,
                fsync: !no_fsync,
                progress: ringsync::progress::mode(true, false),
                quiet,
                check_dst_state: true,
                wire: None,
                verify: false,
                one_way: false,
            },
            match ringsync::engine::choose_engine(ringsync::config::EngineChoice::Auto, true) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("ringsync: serve: {}", e.0);
                    return exit::FATAL;
                }
            },
        ),
        ServeRole::List {
            src,
            root,
            checksum,
            filters,
            compress,
            quiet,
        } => match ringsync::engine::choose_engine(ringsync::config::EngineChoice::Auto, true) {
            Ok(e) => ringsync::remote::serve_list_src(&src, root, checksum, filters, compress, e, quiet),
            Err(e) => {
                eprintln!("ringsync: serve: {}", e.0);
                exit::FATAL
            }
        },
        ServeRole::Send {
            src,
            resume,
            listing,
            filters,
            no_delete,
            root,
            checksum,
            state,
            from,
            expect,
            compress,
            quiet,
        } => {
            let listed = if root { ringsync::listing::FLAG_ROOT } else { 0 }
                | if checksum {
                    ringsync::listing::FLAG_CHECKSUM
                } else {
                    0
                };
            let resume = match resume
                .as_deref()
                .map(ringsync::stream::ResumeToken::decode)
                .transpose()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ringsync: serve: --resume: {e}");
                    return exit::USAGE;
                }
            };
            let engine = match ringsync::engine::choose_engine(ringsync::config::EngineChoice::Auto, true) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("ringsync: serve: {}", e.0);
                    return exit::FATAL;
                }
            };
            ringsync::remote::serve_send(
                ringsync::remote::ServeSend {
                    listing,
                    listed,
                    filters,
                    no_delete,
                    state,
                    from: from.zip(expect),
                    compress,
                },
                ringsync::send::SendConfig {
                    src,
                    out: None,
                    engine,
                    memory: 64 << 20,
                    bwlimit: None,
                    progress: ringsync::progress::mode(true, false),
                    quiet,
                    resume,
                    from: None,
                    listing: None,
                    quiet_reader_gone: false,
                    wire: None,
                    wire_live: false,
                },
            )
        }
    }
}

fn main() {
    let parsed = command()
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
        Command::Mirror(args) => match args.remote(sub) {
            Some(r) => run_remote(r.unwrap_or_else(|e| usage(e))),
            None => {
                let cfg = args.validate(sub).unwrap_or_else(|e| usage(e));
                ringsync::mirror::mirror(&cfg)
            }
        },
        Command::Serve { role } => serve(role),
        Command::Bench(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::bench::bench(&cfg)
        }
        Command::Diff(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::mirror::diff(&cfg)
        }
        Command::Check(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::mirror::diff(&cfg)
        }
        Command::Send(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::send::send(&cfg)
        }
        Command::Receive(args) if args.token => ringsync::receive::print_token(&args.dst),
        Command::Receive(args) => {
            let cfg = args.validate().unwrap_or_else(|e| usage(e));
            ringsync::receive::receive(&cfg)
        }
        Command::Dump { file, json } => ringsync::dump::dump(file.as_deref(), json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "ringsync", &mut std::io::stdout());
            exit::OK
        }
        Command::Man { command: sub, dir } => man(sub.as_deref(), dir.as_deref()),
        Command::Copy(args) => match args.remote(sub) {
            // A copy with a remote side: a remote mirror that deletes nothing.
            Some(r) => run_remote(r.unwrap_or_else(|e| usage(e))),
            None => {
                let cfg = args.validate(sub).unwrap_or_else(|e| usage(e));
                let opts = ringsync::copy::CopyOptions {
                    dry_run: args.dry_run,
                    deref: args.dereference_src,
                    json: args.data.json,
                };
                ringsync::copy::copy(cfg, &opts)
            }
        },
    };
    std::process::exit(code);
}
