//! SIGINT, SIGTERM and SIGHUP: the first one asks the run to stop cleanly, a second one ends the
//! process at once (the default action).
//!
//! The handler only records the signal; the engine and the walk poll [`interrupted`] and wind
//! down themselves (no new work, unfinished files removed, directories finished). A signal that
//! was ignored when the process started (`nohup` ignores SIGHUP; background jobs of a
//! non-interactive shell ignore SIGINT) stays ignored, as a shell's children expect.
//!
//! Must not: do anything but record and hand over in the handler (signal-hook's iterator runs
//! the callback on its own thread, outside signal context).

use std::sync::atomic::{AtomicI32, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The first stop signal received, 0 while none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The first stop signal received so far.
pub fn interrupted() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// `SIGINT`-style name of a signal number, for messages.
pub fn name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        SIGHUP => "SIGHUP".into(),
        s => format!("signal {s}"),
    }
}

/// Signals ignored by this process now (the `SigIgn` mask of /proc/self/status; bit n-1 is
/// signal n). Read before any handler is installed, it says what was inherited.
fn ignored_mask() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// Watch SIGINT, SIGTERM and SIGHUP (those not ignored at start). The first one is recorded
/// (see [`interrupted`]) and `on_first` runs on the watcher thread with its number; a later
/// one takes the signal's default action, ending the process. Call once per process.
pub fn install(on_first: impl FnOnce(i32) + Send + 'static) -> std::io::Result<()> {
    let ignored = ignored_mask();
    let wanted: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|s| ignored & (1u64 << (s - 1)) == 0)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new(&wanted)?;
    std::thread::Builder::new()
        .name("ringsync-signals".into())
        .spawn(move || {
            let mut on_first = Some(on_first);
            for signal in signals.forever() {
                match on_first.take() {
                    Some(f) => {
                        RECEIVED.store(signal, Ordering::Relaxed);
                        f(signal);
                    }
                    None => {
                        let _ = signal_hook::low_level::emulate_default_handler(signal);
                    }
                }
            }
        })?;
    Ok(())
}
