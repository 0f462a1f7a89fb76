//! Per-operation cost of the two backends: 4 KiB reads of a page-cached file at queue depths
//! 1 and 32, through io_uring (fixed buffers) and through pread. This is the overhead that
//! decides small-file throughput; whole-command comparisons live in tools/bench-copy.sh.
//!
//! Run: `cargo bench --bench ring_ops` (prints ns per op; medians of 5 rounds).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use ringsync::ring::{self, Completion, EngineKind, Op, RingConfig};

const FILE_BYTES: usize = 64 << 20;
const OP_BYTES: u32 = 4096;
const OPS_PER_ROUND: usize = 100_000;
const ROUNDS: usize = 5;

fn round(kind: EngineKind, fd: &Arc<OwnedFd>, depth: usize) -> f64 {
    let cfg = RingConfig {
        sq_entries: 256,
        pool_units: depth,
        pool_unit_bytes: OP_BYTES as usize,
        buffers: ringsync::ring::Buffers::Fixed,
        async_reads: false,
    };
    let mut backend = ring::build(kind, cfg).expect("backend");
    let mut done = Vec::<Completion>::with_capacity(512);
    let (mut issued, mut finished) = (0usize, 0usize);
    let slots = (FILE_BYTES / OP_BYTES as usize) as u64;
    let start = Instant::now();
    while finished < OPS_PER_ROUND {
        while issued < OPS_PER_ROUND && issued - finished < depth {
            let lease = backend.pool().acquire(1).expect("one unit per op in flight");
            let offset = (issued as u64 * 7919 % slots) * OP_BYTES as u64;
            backend.push(issued as u64, Op::read(fd.clone(), lease, offset, OP_BYTES));
            issued += 1;
        }
        backend.wait(1, &mut done).expect("wait");
        for c in done.drain(..) {
            assert_eq!(c.result, Ok(OP_BYTES), "short or failed read");
            let lease = c.op.into_lease().expect("read has a lease");
            backend.pool().release(lease);
            finished += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / OPS_PER_ROUND as f64
}

fn main() {
    let dir = std::env::temp_dir().join(format!("ringsync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("data");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&vec![0xa5u8; FILE_BYTES]).expect("fill");
    drop(f);
    let fd: Arc<OwnedFd> = Arc::new(std::fs::File::open(&path).expect("open").into());
    println!("{:<8} {:>6} {:>12}", "backend", "depth", "ns/op (p50)");
    for kind in [EngineKind::Uring, EngineKind::Sync] {
        if kind == EngineKind::Uring && ring::probe_uring().is_err() {
            println!("uring    unavailable here: skipped");
            continue;
        }
        for depth in [1, 32] {
            let mut t: Vec<f64> = (0..ROUNDS).map(|_| round(kind, &fd, depth)).collect();
            t.sort_by(f64::total_cmp);
            println!(
                "{:<8} {:>6} {:>12.0}",
                format!("{kind:?}").to_lowercase(),
                depth,
                t[ROUNDS / 2]
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
