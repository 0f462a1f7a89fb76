//! A backend wrapper that applies [`crate::failpoint`] rules to ring ops (built only with the
//! `failpoints` feature, and only when a rule is set). An op a rule fails is not performed
//! (except `close`, which is, so no descriptor leaks) and completes with the errno; a `short`
//! read or write moves half its bytes and completes with that count, the op handed back with
//! its original length, as a kernel's short count would be seen.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{Backend, Completion, Errno, Op, Pool, Token};
use crate::failpoint::{self, Fault};

pub struct Faulty {
    inner: Box<dyn Backend>,
    ready: VecDeque<Completion>,
    /// Ops changed on their way in: (token, offset or descriptor) → what to undo or report.
    changed: Vec<(Token, u64, Change)>,
}

enum Change {
    /// A shortened read or write: its real length.
    Short(u32),
    /// A close performed whose completion must report this errno.
    Fail(Errno),
}

impl Faulty {
    pub fn new(inner: Box<dyn Backend>) -> Faulty {
        Faulty {
            inner,
            ready: VecDeque::new(),
            changed: Vec::new(),
        }
    }

    fn fail_now(&mut self, token: Token, op: Op, e: Errno) {
        self.ready.push_back(Completion {
            token,
            result: Err(e),
            op,
            opened: None,
            latency: Duration::ZERO,
        });
    }

    /// Undo the changes made to an op at push time, and remember the names of descriptors.
    fn fix(&mut self, c: &mut Completion) {
        if let (Op::OpenAt { name, .. }, Some(fd)) = (&c.op, &c.opened) {
            failpoint::opened(fd.as_raw_fd(), name.as_bytes());
        }
        let key = match &c.op {
            Op::Read { offset, .. } | Op::Write { offset, .. } => *offset,
            Op::Close { fd } => *fd as u64,
            _ => return,
        };
        let Some(i) = self
            .changed
            .iter()
            .position(|(t, k, _)| *t == c.token && *k == key)
        else {
            return;
        };
        let (_, _, change) = self.changed.swap_remove(i);
        match (change, &mut c.op) {
            (Change::Short(real), Op::Read { len, .. } | Op::Write { len, .. }) => *len = real,
            (Change::Fail(e), _) => c.result = Err(e),
            _ => {}
        }
    }
}

impl Backend for Faulty {
    fn describe(&self) -> String {
        format!("{} + failpoints", self.inner.describe())
    }

    fn push(&mut self, token: Token, mut op: Op) {
        let fault = match &op {
            Op::OpenAt { name, .. } => failpoint::hit("open", name.as_bytes()),
            Op::Statx { name, .. } => failpoint::hit("statx", name.as_bytes()),
            Op::Read { fd, .. } => failpoint::hit_fd("read", fd.as_raw_fd()),
            Op::Write { fd, .. } => failpoint::hit_fd("write", fd.as_raw_fd()),
            Op::Fsync { fd } => failpoint::hit_fd("fsync", fd.as_raw_fd()),
            Op::Close { fd } => {
                let f = failpoint::hit_fd("close", *fd);
                failpoint::closing(*fd);
                f
            }
        };
        match (fault, &mut op) {
            (None, _) => self.inner.push(token, op),
            (Some(Fault::Short), Op::Read { len, offset, .. } | Op::Write { len, offset, .. })
                if *len > 1 =>
            {
                self.changed.push((token, *offset, Change::Short(*len)));
                *len /= 2;
                self.inner.push(token, op);
            }
            (Some(Fault::Short), _) => self.inner.push(token, op),
            (Some(Fault::Fail(e)), Op::Close { fd }) => {
                self.changed.push((token, *fd as u64, Change::Fail(e)));
                self.inner.push(token, op);
            }
            (Some(Fault::Fail(e)), _) => self.fail_now(token, op, e),
        }
    }

    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> std::io::Result<()> {
        let from = out.len();
        let mine = self.ready.len();
        out.extend(self.ready.drain(..));
        if mine < min_complete || self.inner.in_flight() > 0 {
            self.inner.wait(min_complete.saturating_sub(mine), out)?;
        }
        for c in &mut out[from..] {
            self.fix(c);
        }
        Ok(())
    }

    fn submit(&mut self) {
        self.inner.submit()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.ready.len()
    }

    fn pool(&mut self) -> &mut Pool {
        self.inner.pool()
    }
}
