//! `petal listen` over a pseudo-terminal standing for the board's serial port: every line sent
//! gets one answer line, in order, equal to `petal classify`'s for the same text.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A pseudo-terminal: the master end (ours) and the slave's path (the "serial port").
fn pty() -> (File, PathBuf) {
    let (mut master, mut slave) = (0, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: openpty writes the two descriptors and the slave's name (128 bytes is ample for
    // /dev/pts/N) into our locals; no termios or window size are passed.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: `slave` is a descriptor openpty just opened; the child opens the path itself. The
    // master is not inherited by children (else closing ours would not hang the port up).
    unsafe {
        libc::close(slave);
        libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    // SAFETY: NUL-terminated by openpty.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `master` is ours alone from here.
    (unsafe { File::from_raw_fd(master) }, PathBuf::from(path))
}

#[test]
fn every_serial_line_gets_classify_s_answer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let src = workspace().join("testdata/golden/tiny-bert");
    let petal = env!("CARGO_BIN_EXE_petal");
    let ok = Command::new(petal)
        .args([
            "-q",
            "convert",
            src.to_str().unwrap(),
            "-o",
            model.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let texts = ["a good day", "the worst service ever", "", "nothing much"];
    let out = Command::new(petal)
        .args(["-q", "classify", model.to_str().unwrap()])
        .args(texts)
        .output()
        .unwrap();
    let mut want: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(want.len(), texts.len());

    let (mut master, port) = pty();
    let mut child = Command::new(petal)
        .args([
            "listen",
            model.to_str().unwrap(),
            "--serial",
            port.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The port is open (and in raw mode) once it says so.
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = log.next().expect("petal listen ended").unwrap();
        if line.contains("petal listen: reading") {
            break;
        }
    }
    std::thread::spawn(move || for _ in log {});
    // Lines as a terminal sends them, one not UTF-8 among them.
    let mut sent = Vec::new();
    for t in texts {
        sent.extend_from_slice(t.as_bytes());
        sent.extend_from_slice(b"\r\n");
    }
    sent.extend_from_slice(b"\xff\xfe\n");
    want.push("error\tline is not UTF-8".into());
    master.write_all(&sent).unwrap();
    let mut got = String::new();
    let reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.iter().filter(|&&b| b == b'\n').count() >= 5 {
                break;
            }
        }
        let _ = tx.send(all);
    });
    let bytes = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("no answer within 120 s");
    got += &String::from_utf8(bytes).unwrap();
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    // Hanging up the port ends it cleanly.
    drop(master);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
