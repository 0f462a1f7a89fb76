//! `ringsync copy`: check SRC and DST, run the engine, report.
//!
//! Must not: create anything before SRC and DST are checked (overlap is a usage error that
//! leaves no trace).

use std::io::Write;

use crate::config::CopyConfig;
use crate::error::exit;

/// The one line an interrupted run ends with.
pub fn interrupted_line(command: &str, signal: i32, finished: u64, unfinished: u64) -> String {
    format!(
        "{command} interrupted by {}: {finished} files finished, {unfinished} unfinished removed; \
         run the same command again to complete it",
        crate::signals::name(signal)
    )
}

/// `ringsync copy SRC DST`; returns the exit status.
pub fn copy(mut cfg: CopyConfig, json: bool) -> i32 {
    if let Err(e) = crate::roots::refuse_overlap("copy", &cfg.src, &cfg.dst) {
        eprintln!("ringsync: {e}");
        return exit::USAGE;
    }
    match crate::filter::Filter::load(&cfg.filter_spec) {
        Ok(f) => cfg.filter = std::sync::Arc::new(f),
        Err(e) => {
            eprintln!("ringsync: {e}");
            return exit::USAGE;
        }
    }
    // Before any worker starts: a signal from here on stops the run cleanly.
    if let Err(e) = crate::signals::install(|_| {}) {
        eprintln!("ringsync: cannot watch for signals: {e}");
        return exit::FATAL;
    }
    match crate::engine::copy(cfg) {
        Ok(outcome) => {
            if json {
                let v = crate::summary::to_json(&outcome);
                // A closed stdout (e.g. `| head`) is not worth a panic.
                let _ = writeln!(std::io::stdout().lock(), "{v}");
            }
            if let Some(signal) = outcome.interrupted {
                eprintln!(
                    "ringsync: {}",
                    interrupted_line("copy", signal, outcome.totals.files, outcome.unfinished)
                );
            }
            outcome.exit_code
        }
        Err(e) => {
            eprintln!("ringsync: {e}");
            exit::FATAL
        }
    }
}
