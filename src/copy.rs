//! `ringsync copy`: check SRC and DST, then copy (or, with `--dry-run`, say what copying
//! would do), and report.
//!
//! Must not: create anything before SRC and DST are checked (overlap is a usage error that
//! leaves no trace), or write anything under `--dry-run`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::config::CopyConfig;
use crate::diff::{self, Kind, WalkOpts};
use crate::engine::Outcome;
use crate::error::{exit, ErrorLog};
use crate::meta::Preserve;
use crate::report::Reporter;
use crate::roots::Source;

/// What `copy` takes besides the engine's configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    pub dry_run: bool,
    /// `-L`: follow a symlink given as SRC.
    pub deref: bool,
    pub json: bool,
}

/// The one line an interrupted run ends with.
pub fn interrupted_line(command: &str, signal: i32, finished: u64, unfinished: u64) -> String {
    format!(
        "{command} interrupted by {}: {finished} files finished, {unfinished} unfinished removed; \
         run the same command again to complete it",
        crate::signals::name(signal)
    )
}

fn usage(e: impl std::fmt::Display) -> i32 {
    eprintln!("ringsync: {e}");
    exit::USAGE
}

/// `ringsync copy SRC DST`; returns the exit status.
pub fn copy(mut cfg: CopyConfig, o: &CopyOptions) -> i32 {
    let source = match crate::roots::resolve(&cfg.src, &cfg.dst, o.deref) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    if let Source::Tree = source {
        if let Err(e) = crate::roots::refuse_overlap("copy", &cfg.src, &cfg.dst) {
            return usage(e);
        }
    }
    match crate::filter::Filter::load(&cfg.filter_spec) {
        Ok(f) => cfg.filter = Arc::new(f),
        Err(e) => return usage(e),
    }
    let report = match Reporter::open(cfg.verbose || o.dry_run, cfg.verbose, cfg.log_file.as_deref()) {
        Ok(r) => Arc::new(r),
        Err(e) => return usage(e),
    };
    cfg.report = report.clone();
    let what = format!("copy {} {}", cfg.src.display(), cfg.dst.display());
    report.log_only(&format!(
        "{what}{}: start",
        if o.dry_run { " --dry-run" } else { "" }
    ));
    let code = if o.dry_run {
        dry_run(&cfg, &source, &report)
    } else {
        run(cfg, source, o, &report)
    };
    report.flush();
    code
}

fn run(mut cfg: CopyConfig, source: Source, o: &CopyOptions, report: &Reporter) -> i32 {
    // Before any worker starts: a signal from here on stops the run cleanly.
    if let Err(e) = crate::signals::install(|_| {}) {
        eprintln!("ringsync: cannot watch for signals: {e}");
        return exit::FATAL;
    }
    let quiet = cfg.quiet;
    let result = match source {
        Source::Tree => crate::engine::copy(cfg),
        Source::Entry {
            src_dir,
            from,
            dst_dir,
            name,
            meta,
        } => {
            cfg.src = src_dir;
            cfg.dst = dst_dir;
            crate::engine::copy_entry(cfg, from, name, meta)
        }
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            let line = e.to_string();
            eprintln!("ringsync: {line}");
            report.log_only(&format!("error: {line}"));
            return exit::FATAL;
        }
    };
    if o.json {
        let v = crate::summary::to_json(&outcome);
        // A closed stdout (e.g. `| head`) is not worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{v}");
    }
    if let Some(signal) = outcome.interrupted {
        let line = interrupted_line("copy", signal, outcome.totals.files, outcome.unfinished);
        eprintln!("ringsync: {line}");
        report.log_only(&line);
    }
    report.summary(&summary_line(&outcome), quiet || o.json);
    outcome.exit_code
}

/// `copy: 1234 files, 12 dirs, 3 other; 1.5 GiB in 3.21 s (478.2 MiB/s); 0 errors`.
fn summary_line(o: &Outcome) -> String {
    let t = &o.totals;
    let mut s = format!(
        "copy: {} files, {} dirs, {} symlinks, {} hardlinks, {} special; {}",
        t.files,
        t.dirs,
        t.symlinks,
        t.hardlinks,
        t.specials,
        crate::report::bytes_in(t.bytes, o.elapsed.as_secs_f64())
    );
    if t.reflinked > 0 {
        s.push_str(&format!(" ({} files reflinked)", t.reflinked));
    }
    s.push_str(&format!("; {} errors", o.errors));
    if o.vanished > 0 {
        s.push_str(&format!(", {} vanished", o.vanished));
    }
    if o.warnings > 0 {
        s.push_str(&format!(", {} warnings", o.warnings));
    }
    if o.interrupted.is_some() {
        s.push_str("; interrupted");
    }
    s
}

/// `--dry-run`: read SRC and DST, print what `copy` would create (`+`) or replace (`M`, `T`).
fn dry_run(cfg: &CopyConfig, source: &Source, report: &Reporter) -> i32 {
    if let Source::Entry {
        dst_dir, name, meta, ..
    } = source
    {
        use std::os::unix::ffi::OsStrExt;
        let target = dst_dir.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let marker = match std::fs::symlink_metadata(&target) {
            Err(_) => '+',
            Ok(m)
                if rustix::fs::FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&m))
                    == meta.file_type() =>
            {
                'M'
            }
            Ok(_) => 'T',
        };
        report.change(marker, name.as_bytes());
        report.summary("copy --dry-run: 1 entry (nothing was changed)", cfg.quiet);
        return exit::OK;
    }
    let engine = match crate::engine::choose_engine(cfg.engine, cfg.quiet) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ringsync: {e}");
            return exit::FATAL;
        }
    };
    let is_root = rustix::process::geteuid().is_root();
    let opts = WalkOpts {
        threads: diff::walk_threads(cfg.threads),
        engine: diff::walk_engine(cfg.engine, engine),
        checksum: false,
        renames: false,
        expand: true,
        owner: is_root,
        preserve: Preserve {
            owner: is_root,
            all_xattrs: is_root,
        },
        changed_since: None,
        skip_new_sockets: true,
        filter: cfg.filter.clone(),
        copy_view: true,
        seen: Default::default(),
        scope: None,
    };
    let errors = ErrorLog::with_report(cfg.quiet, cfg.report.clone());
    let walk = |old: Option<&Path>| diff::walk(old, &cfg.src, &opts, &errors).map_err(|e| e.to_string());
    let walked = match std::fs::metadata(&cfg.dst) {
        Ok(m) if m.is_dir() => walk(Some(&cfg.dst)),
        Ok(_) => Err(format!("{}: exists and is not a directory", cfg.dst.display())),
        // DST does not exist yet: everything would be created.
        Err(_) => walk(None),
    };
    let mut d = match walked {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ringsync: copy --dry-run: {e}");
            return exit::FATAL;
        }
    };
    diff::sort(&mut d.changes);
    let (mut created, mut replaced) = (0u64, 0u64);
    for c in &d.changes {
        match c.kind {
            Kind::Created => created += 1,
            _ => replaced += 1,
        }
        report.line(&diff::text_line(c));
    }
    crate::filter::report_unseen(&cfg.filter, &cfg.src, &errors);
    report.summary(
        &format!(
            "copy --dry-run: {created} entries would be created, {replaced} replaced; {} errors \
             (nothing was changed)",
            errors.errors()
        ),
        cfg.quiet,
    );
    errors.exit_code()
}
