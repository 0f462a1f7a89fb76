//! The command line's own surface: help with examples, completions, man pages, --version.

mod common;

use std::process::Command;

use common::*;

fn run_args(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().expect("spawn ringsync")
}

const SUBCOMMANDS: [&str; 7] = ["copy", "mirror", "diff", "bench", "dump", "completions", "man"];

#[test]
fn every_subcommand_help_ends_with_examples() {
    for sub in SUBCOMMANDS {
        let out = run_args(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help: {}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text
            .rfind("Examples:")
            .unwrap_or_else(|| panic!("{sub} --help has no Examples:\n{text}"));
        let examples: Vec<&str> = text[at..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert!(
            (2..=5).contains(&examples.len())
                && examples.iter().all(|l| l.trim_start().starts_with("ringsync ")),
            "{sub} --help: want 2-5 example command lines, got {examples:?}"
        );
        for ex in &examples {
            assert!(
                ex.contains(&format!("ringsync {sub}")),
                "{sub}: example {ex:?} runs another command"
            );
        }
    }
}

#[test]
fn completions_are_scripts_the_shells_accept() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_args(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("ringsync") && script.contains("exclude"),
            "{shell}: {script}"
        );
        if shell == "bash" && have_tool("bash") {
            let dir = scratch("completions");
            let f = dir.path().join("c.bash");
            std::fs::write(&f, &out.stdout).unwrap();
            let check = Command::new("bash").arg("-n").arg(&f).output().unwrap();
            assert!(check.status.success(), "bash -n: {}", describe(&check));
        }
    }
    let out = run_args(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn man_pages_render_for_the_command_and_each_subcommand() {
    let out = run_args(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH ringsync 1") && page.contains("mirror"),
        "{page}"
    );
    let out = run_args(&["man", "copy"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH ringsync-copy 1") && page.contains("dry\\-run"),
        "{page}"
    );
    let dir = scratch("man");
    let out = run_args(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for sub in SUBCOMMANDS {
        assert!(
            dir.path().join(format!("ringsync-{sub}.1")).is_file(),
            "no page for {sub}"
        );
    }
    assert_eq!(run_args(&["man", "nosuch"]).status.code(), Some(2));
}

#[test]
fn version_names_the_commit_and_io_uring() {
    let out = run_args(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("ringsync {} (git ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        v.contains("io_uring: usable") || v.contains("io_uring: not usable"),
        "{v}"
    );
    // Built from a checkout, the commit is one of this repository's.
    let in_repo = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .is_ok_and(|o| o.status.success());
    if in_repo {
        let commit = v
            .split("(git ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_default();
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            known,
            "--version names commit {commit:?}, which this repository lacks: {v}"
        );
    }
    let short = run_args(&["-V"]);
    assert!(String::from_utf8_lossy(&short.stdout).contains("(git "));
}
