//! A name is not an object: while a role runs, somebody removes its
//! segment, socket file or FIFO and puts a file of their own under the same
//! name. When the role stops (Ctrl-C, or a second Ctrl-C that removes
//! objects from the signal handler) it must leave that file alone: it
//! removes only what it made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cleanup::{PrivateDir, unique_name};
use ipc_tests::{Proc, SHORT};
use nix::sys::signal::Signal;

/// Start `demo args`, wait until `path` exists, replace it with a regular
/// file of ours, stop the role with SIGINT (twice if `twice`), and check
/// that the file is still there, untouched.
fn replaced_while_running(demo: &str, args: &[&str], ready: &str, path: &Path, twice: bool) {
    let mut role = Proc::spawn(demo, args);
    role.wait_for_line(|l| l.contains(ready), SHORT);
    assert!(
        path.exists(),
        "{demo} {args:?}: {} not made",
        path.display()
    );
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, b"not yours").unwrap();
    role.signal(Signal::SIGINT);
    if twice {
        std::thread::sleep(Duration::from_millis(20));
        role.signal(Signal::SIGINT);
    }
    let out = role.finish(SHORT);
    // One Ctrl-C: 130 after the guards ran. Two: the handler removes what
    // it registered and the process dies of SIGINT (or had finished: 130).
    use std::os::unix::process::ExitStatusExt;
    let ended = (out.status.code(), out.status.signal());
    let stopped = ended == (Some(130), None) || (twice && ended == (None, Some(libc::SIGINT)));
    assert!(stopped, "{demo} {args:?}\n{}", out.describe());
    assert_eq!(
        std::fs::read(path).ok().as_deref(),
        Some(&b"not yours"[..]),
        "{demo} {args:?} removed a file it did not make\n{}",
        out.describe()
    );
    std::fs::remove_file(path).unwrap();
}

fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm{name}"))
}

#[test]
fn a_shm_receiver_leaves_alone_a_segment_put_under_its_name() {
    for twice in [false, true] {
        for variant in [&[][..], &["futex"][..]] {
            let name = format!("/{}", unique_name("shm-demo-test"));
            let mut args: Vec<&str> = variant.to_vec();
            args.extend(["receiver", "--name", &name, "--quiet"]);
            replaced_while_running("shm-demo", &args, "waiting", &shm_path(&name), twice);
        }
    }
}

#[test]
fn socket_and_memfd_servers_leave_alone_a_file_put_under_their_socket_name() {
    let dir = PrivateDir::create("replaced-names").unwrap();
    for twice in [false, true] {
        let sock = dir.path().join(format!("server-{twice}.sock"));
        let path = sock.to_str().unwrap();
        replaced_while_running(
            "socket-demo",
            &["server", "--path", path],
            "listen",
            &sock,
            twice,
        );
        let sock = dir.path().join(format!("memfd-{twice}.sock"));
        let path = sock.to_str().unwrap();
        replaced_while_running(
            "memfd-demo",
            &["receiver", "--path", path],
            "listen",
            &sock,
            twice,
        );
    }
}
