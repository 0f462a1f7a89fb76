//! Child processes of the stream tests: exit code and stderr, collected with a deadline.

use std::io::{Read, Seek};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// One finished process: exit code and stderr.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stderr: String,
}

impl Ran {
    pub fn describe(&self, what: &str) -> String {
        let s = &self.stderr;
        let s = if s.len() > 4000 {
            let mut i = s.len() - 4000;
            while !s.is_char_boundary(i) {
                i += 1;
            }
            format!("...{}", &s[i..])
        } else {
            s.clone()
        };
        format!("{what}: exit {:?}\n--- stderr ---\n{s}", self.code)
    }

    pub fn panicked(&self) -> bool {
        self.stderr.contains("panicked")
    }
}

/// An anonymous file for a child's stderr, and a handle to read it back.
pub fn err_file() -> (std::fs::File, Stdio) {
    let f = tempfile::tempfile().expect("tempfile for stderr");
    let c = f.try_clone().expect("clone stderr file");
    (f, Stdio::from(c))
}

pub fn read_back(mut f: std::fs::File) -> String {
    let mut s = Vec::new();
    f.rewind().unwrap();
    f.read_to_end(&mut s).unwrap();
    String::from_utf8_lossy(&s).into_owned()
}

/// Wait for every child, killing all of them at the deadline (then panic).
pub fn wait_all(kids: &mut [(&str, Child)], what: &str, deadline: Duration) -> Vec<Option<i32>> {
    let start = Instant::now();
    let mut codes: Vec<Option<Option<i32>>> = vec![None; kids.len()];
    while codes.iter().any(|c| c.is_none()) {
        for (i, (_, k)) in kids.iter_mut().enumerate() {
            if codes[i].is_none() {
                if let Some(st) = k.try_wait().expect("try_wait") {
                    codes[i] = Some(st.code());
                }
            }
        }
        if start.elapsed() > deadline {
            for (_, k) in kids.iter_mut() {
                let _ = k.kill();
                let _ = k.wait();
            }
            let names: Vec<&str> = kids.iter().map(|(n, _)| *n).collect();
            panic!(
                "{what}: {names:?} still running after {deadline:?} (killed; exit codes so far {codes:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    codes.into_iter().map(|c| c.unwrap()).collect()
}

/// Run one ringsync process (stdin and stdout /dev/null) to its end, or kill it at `deadline`.
pub fn run_ringsync(args: &[&std::ffi::OsStr], deadline: Duration) -> Ran {
    let (f, e) = err_file();
    let c = std::process::Command::new(super::bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(e)
        .spawn()
        .expect("spawn ringsync");
    let mut kids = vec![("ringsync", c)];
    let codes = wait_all(&mut kids, &format!("ringsync {args:?}"), deadline);
    Ran {
        code: codes[0],
        stderr: read_back(f),
    }
}
