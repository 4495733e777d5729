//! The README's "Two terminals" block, run as a newcomer would type it:
//! each `# terminal 1` line is started first and left running, the lines
//! after it (until the next blank line) are the second terminal, tried
//! until they succeed (the newcomer starts them once the first is ready),
//! and every other line runs on its own. Everything runs in private IPC
//! and mount namespaces with a fresh /tmp and /dev/shm, so the README's
//! fixed names (`/tmp/demo.fifo`, `/demo`...) meet nobody else's.

use ipc_tests::{LONG, Proc};

/// The fenced `sh` block under `heading` in `file` (from the repo root).
fn block_under(file: &str, heading: &str) -> Vec<String> {
    let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(&path).expect("read the README");
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("{file} has a {heading:?} section"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("a ```sh block under {heading:?} in {file}"));
    block.lines().map(str::to_string).collect()
}

fn two_terminal_block() -> Vec<String> {
    block_under("README.md", "## Two terminals")
}

/// The same commands in the Chinese README (only the comments differ:
/// `# 终端 1` for `# terminal 1`).
#[test]
fn the_chinese_readme_shows_the_same_two_terminal_commands() {
    let commands = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.split(" # ").next().unwrap_or(l).trim_end().to_string())
            .collect()
    };
    let english = two_terminal_block();
    let chinese = block_under("docs/README.zh-CN.md", "## 两个终端");
    assert_eq!(commands(english.clone()), commands(chinese.clone()));
    let roles = |lines: &[String], one: &str, two: &str| -> Vec<u8> {
        lines
            .iter()
            .filter_map(|l| {
                (l.ends_with(one).then_some(1)).or_else(|| l.ends_with(two).then_some(2))
            })
            .collect()
    };
    assert_eq!(
        roles(&english, "# terminal 1", "# terminal 2"),
        roles(&chinese, "# 终端 1", "# 终端 2")
    );
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The block as a bash script that reports `=== ok N`/`=== fail N` for
/// each line N and what it leaves behind.
fn script(lines: &[String]) -> String {
    let mut out = String::from(
        "set -u\nlogs=$(mktemp -d \"$PWD/logs.XXXXXX\")\nfailed=0\n\
         fail() { echo \"=== fail $1: $2\"; sed 's/^/    /' \"$logs/$1\"; failed=1; }\n\
         first=\n",
    );
    // The first terminal's command stays running until the second one's
    // lines (up to the next blank line) are done.
    let end_first = "if [ -n \"$first\" ]; then\n\
         for _ in $(seq 30); do kill -0 \"$first\" 2>/dev/null || break; sleep 0.1; done\n\
         kill -INT \"$first\" 2>/dev/null; wait \"$first\"; s=$?\n\
         case $s in 0|130) echo \"=== ok $firstline\";; *) fail \"$firstline\" \"exit $s\";; esac\n\
         first=\nfi\n";
    let mut first_running = false;
    for (n, line) in lines.iter().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        let command = line.split(" # ").next().unwrap_or(line).trim();
        if line.is_empty() {
            out.push_str(end_first);
            first_running = false;
            continue;
        }
        if command.starts_with("cargo build") {
            continue; // the test crate built the binaries already
        }
        let q = quote(command);
        if line.ends_with("# terminal 1") {
            out.push_str(&format!(
                "bash -c {q} > \"$logs/{n}\" 2>&1 & first=$! firstline={n}\n"
            ));
            first_running = true;
        } else if first_running {
            // The second terminal: tried until the first one is ready.
            out.push_str(&format!(
                "ok=\nfor _ in $(seq 120); do bash -c {q} > \"$logs/{n}\" 2>&1 && {{ ok=1; break; }}; sleep 0.5; done\n\
                 if [ -n \"$ok\" ]; then echo \"=== ok {n}\"; else fail {n} \"never succeeded\"; fi\n"
            ));
        } else {
            out.push_str(&format!(
                "bash -c {q} > \"$logs/{n}\" 2>&1; s=$?; wait\n\
                 if [ $s = 0 ]; then echo \"=== ok {n}\"; else fail {n} \"exit $s\"; fi\n"
            ));
        }
    }
    out.push_str(end_first);
    out.push_str(
        "cd / && rm -rf /tmp/readme\n\
         for left in /tmp/* /dev/shm/*; do [ -e \"$left\" ] && echo \"=== left $left\"; done\n\
         ipcs -q -m -s | awk '/^0x/ { print \"=== left System V id \" $2 }'\n\
         echo \"=== end $failed\"\n",
    );
    out
}

#[test]
fn the_readme_two_terminal_block_runs_as_written() {
    if !nix::unistd::geteuid().is_root() {
        // unshare needs CAP_SYS_ADMIN; CI runs as root.
        eprintln!("readme terminals: not root, skipped");
        return;
    }
    let lines = two_terminal_block();
    let bin_dir = ipc_tests::bin("pipe-demo")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    // `target/debug/X` as in the README, from a scratch working directory
    // that holds copies of the demos (the real target directory may be
    // under the /tmp that the namespace replaces).
    let work = common::cleanup::PrivateDir::create("readme-terminals").unwrap();
    let debug = work.path().join("target/debug");
    std::fs::create_dir_all(&debug).unwrap();
    for entry in std::fs::read_dir(&bin_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with("-demo") && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), debug.join(&name)).unwrap();
        }
    }
    let body = script(&lines);
    // cd first: the shell keeps its working directory when /tmp is
    // covered, and copies the demos into the new /tmp from there (so that
    // nothing, pyenv's shims included, finds its working directory gone).
    let wrapped = format!(
        "cd {} && mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /dev/shm \
         && mkdir /tmp/readme && cp -a target /tmp/readme/ && cd /tmp/readme && {{\n{body}\n}}",
        quote(&work.path().display().to_string())
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--ipc",
        "--mount",
        "--propagation",
        "private",
        "bash",
        "-c",
        &wrapped,
    ])
    .env_remove("TMPDIR")
    .env_remove("XDG_RUNTIME_DIR")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = Proc::start(cmd).finish(LONG);
    let report = format!("{}\nscript:\n{body}", out.describe());
    assert!(
        out.stdout.contains("=== end 0"),
        "a README line failed:\n{report}"
    );
    // What the block makes itself (`touch /tmp/demo.key`) is the reader's.
    let touched: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("touch "))
        .collect();
    let left: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("=== left "))
        .filter(|path| !touched.contains(path))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{report}");
    // Every line that is a command ran (and said ok).
    let commands = lines
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with("cargo build"))
        .count();
    let oks = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("=== ok "))
        .count();
    assert_eq!(oks, commands, "{report}");
}
