//! The transfer stream, one behaviour per test: what the sender writes and what the receiver
//! accepts or refuses (with hostile streams built by hand, not by the sender).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use tar::{EntryType, Header};

use super::*;
use crate::context::{ContextOptions, FileTree};

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

fn options() -> ReceiveOptions {
    ReceiveOptions {
        context: ContextOptions::default(),
        origin: "PersistentVolumeClaim ns/src".into(),
        sub_path: String::new(),
    }
}

fn stream_of(root: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    write_tree(root, "", &mut out).expect("write_tree");
    out
}

fn receive_into(
    stream: &[u8],
    options: &ReceiveOptions,
) -> (tempfile::TempDir, Result<Counts, ReceiveError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = receive(stream, &dir.path().join("context"), options);
    (dir, result)
}

fn refusal(stream: &[u8], options: &ReceiveOptions) -> String {
    match receive_into(stream, options).1 {
        Err(ReceiveError::Refused(e)) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// One hand-made entry: name bytes, type, link target, data.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// A hand-made stream, with names no honest sender writes.
fn hostile(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, target, data) in entries {
        let mut header = Header::new_old();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn a_received_tree_walks_exactly_like_the_directory_it_came_from() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    write(root, "index.html", "<h1>hi</h1>\n");
    write(root, "bin/run.sh", "#!/bin/sh\necho run\n");
    fs::set_permissions(root.join("bin/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    write(root, "deep/er/still/file.txt", "deep\n");
    fs::create_dir_all(root.join("empty")).unwrap();
    symlink("../index.html", root.join("bin/index")).unwrap();
    symlink("/etc/hostname", root.join("hostname")).unwrap();
    let long = format!("{}/{}.txt", "d".repeat(80), "f".repeat(120));
    write(root, &long, "long name\n");

    let stream = stream_of(root);
    let (dir, counts) = receive_into(&stream, &options());
    let counts = counts.expect("received");

    let sent = FileTree::from_dir(root, &ContextOptions::default()).unwrap();
    let got = FileTree::from_dir(&dir.path().join("context"), &ContextOptions::default()).unwrap();
    assert_eq!(sent.entries().len(), got.entries().len());
    assert_eq!(sent.fingerprint().unwrap(), got.fingerprint().unwrap());
    assert_eq!(counts.bytes, sent.total_bytes());
}

#[test]
fn the_dockerignore_travels_first_so_exclusions_are_known_before_anything_else() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a.txt", "a\n");
    write(src.path(), ".dockerignore", "secret\n");
    write(src.path(), ".a", "dot\n");
    let stream = stream_of(src.path());
    let mut archive = tar::Archive::new(&stream[..]);
    let first = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.path_bytes().as_ref(), b".dockerignore");
}

#[test]
fn a_fifo_is_refused_naming_its_path_in_the_claim() {
    let stream = hostile(&[
        (b"app", EntryType::Directory, b"", b""),
        (b"app/queue", EntryType::Fifo, b"", b""),
    ]);
    let mut options = options();
    options.sub_path = "src".into();
    let message = refusal(&stream, &options);
    assert!(
        message
            .contains("\"src/app/queue\" in PersistentVolumeClaim ns/src is a named pipe (fifo)"),
        "{message}"
    );
}

#[test]
fn devices_and_hard_links_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Link] {
        let stream = hostile(&[(b"dev", kind, b"a.txt", b"")]);
        let message = refusal(&stream, &options());
        assert!(message.contains("\"dev\""), "{kind:?}: {message}");
    }
}

#[test]
fn names_that_climb_out_or_are_absolute_are_refused_before_anything_is_written() {
    for name in [&b"../escape"[..], b"/etc/passwd", b"a/../../b"] {
        let stream = hostile(&[(name, EntryType::Regular, b"", b"x")]);
        let (dir, result) = receive_into(&stream, &options());
        assert!(
            matches!(result, Err(ReceiveError::Refused(_))),
            "{result:?}"
        );
        assert!(!dir.path().join("escape").exists());
    }
}

#[test]
fn symlinks_are_stored_as_they_came_wherever_they_point() {
    for target in ["../../etc/passwd", "/etc/passwd"] {
        let stream = hostile(&[(b"link", EntryType::Symlink, target.as_bytes(), b"")]);
        let (dir, result) = receive_into(&stream, &options());
        result.expect("a link is stored, not followed");
        let link = fs::read_link(dir.path().join("context/link")).unwrap();
        assert_eq!(link, Path::new(target));
    }
}

#[test]
fn nothing_is_written_through_a_link_that_leaves_the_directory() {
    let stream = hostile(&[
        (b"up", EntryType::Symlink, b"..", b""),
        (b"up/planted", EntryType::Regular, b"", b"x"),
    ]);
    let (dir, result) = receive_into(&stream, &options());
    let message = result.expect_err("a file below a link").to_string();
    assert!(message.contains("\"up\""), "{message}");
    assert!(!dir.path().join("planted").exists());
}

#[test]
fn nothing_is_written_through_a_symlink_received_earlier() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().as_bytes().to_vec();
    let stream = hostile(&[
        (b"link", EntryType::Symlink, &target, b""),
        (b"link/planted", EntryType::Regular, b"", b"x"),
    ]);
    let message = refusal(&stream, &options());
    assert!(message.contains("link"), "{message}");
    assert!(!outside.path().join("planted").exists());
}

#[test]
fn the_same_path_twice_is_refused() {
    let stream = hostile(&[
        (b"a.txt", EntryType::Regular, b"", b"one"),
        (b"a.txt", EntryType::Regular, b"", b"two"),
    ]);
    let message = refusal(&stream, &options());
    assert!(message.contains("a.txt"), "{message}");
}

#[test]
fn excluded_special_files_are_skipped_as_a_local_build_skips_them() {
    let stream = hostile(&[
        (b"cache/pipe", EntryType::Fifo, b"", b""),
        (b"keep.txt", EntryType::Regular, b"", b"keep"),
    ]);
    let mut options = options();
    options.context.exclude = vec!["cache".into()];
    let (dir, result) = receive_into(&stream, &options);
    result.expect("the fifo is excluded");
    assert!(dir.path().join("context/keep.txt").is_file());
    assert!(!dir.path().join("context/cache/pipe").exists());
}

#[test]
fn the_contexts_dockerignore_excludes_while_receiving_and_is_kept_for_the_builder() {
    let stream = hostile(&[
        (
            b".dockerignore",
            EntryType::Regular,
            b"",
            b"*.sock\n.dockerignore\n",
        ),
        (b"app.sock", EntryType::Fifo, b"", b""),
        (b"a.txt", EntryType::Regular, b"", b"a"),
    ]);
    let (dir, result) = receive_into(&stream, &options());
    result.expect("the fifo is excluded by .dockerignore");
    assert!(dir.path().join("context/.dockerignore").is_file());
    let tree = FileTree::from_dir(&dir.path().join("context"), &ContextOptions::default()).unwrap();
    let paths: Vec<&str> = tree.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["a.txt"]);
}

#[test]
fn a_context_over_the_size_limit_is_refused_before_its_bytes_are_read() {
    let stream = hostile(&[(b"big.bin", EntryType::Regular, b"", &[7u8; 2000])]);
    let mut options = options();
    options.context.max_bytes = Some(1000);
    let (dir, result) = receive_into(&stream, &options);
    let message = match result {
        Err(ReceiveError::Refused(e)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(message.contains("more than 1000 bytes"), "{message}");
    assert!(!dir.path().join("context/big.bin").exists());
}

#[test]
fn a_context_over_the_entry_limit_is_refused() {
    let stream = hostile(&[
        (b"a", EntryType::Regular, b"", b""),
        (b"b", EntryType::Regular, b"", b""),
        (b"c", EntryType::Regular, b"", b""),
    ]);
    let mut options = options();
    options.context.max_entries = Some(2);
    let message = refusal(&stream, &options);
    assert!(message.contains("more than 2 entries"), "{message}");
}

#[test]
fn a_stream_cut_short_is_an_interruption_not_a_context() {
    let mut stream = hostile(&[(b"a.txt", EntryType::Regular, b"", &[1u8; 4096])]);
    stream.truncate(512 + 1000);
    let (_dir, result) = receive_into(&stream, &options());
    assert!(
        matches!(result, Err(ReceiveError::Interrupted(_))),
        "{result:?}"
    );
}

#[test]
fn modes_are_normalised_to_the_owners_execute_bit() {
    let mut out = Vec::new();
    for (name, mode) in [("run", 0o700), ("data", 0o600)] {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(mode);
        header.set_size(1);
        out.extend_from_slice({
            header.set_path(name).unwrap();
            header.set_cksum();
            header.as_bytes()
        });
        out.extend_from_slice(b"x");
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    let (dir, result) = receive_into(&out, &options());
    result.unwrap();
    let mode = |n: &str| {
        fs::metadata(dir.path().join("context").join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!((mode("run"), mode("data")), (0o755, 0o644));
}

#[test]
fn the_sender_refuses_a_socket_naming_it_relative_to_the_claim() {
    let claim = tempfile::tempdir().unwrap();
    fs::create_dir_all(claim.path().join("app")).unwrap();
    let _listener =
        std::os::unix::net::UnixListener::bind(claim.path().join("app/ctl.sock")).unwrap();
    let root = context_root(claim.path(), Some("app")).unwrap();
    let error = write_tree(&root, "app", Vec::new()).expect_err("socket");
    assert_eq!(
        error.to_string(),
        "app/ctl.sock is a socket: only regular files, directories and symlinks can go into an image; remove it from the claim"
    );
}

#[test]
fn the_sender_sends_a_fifo_as_a_header_without_opening_it() {
    let src = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(src.path().join("pipe"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let stream = stream_of(src.path());
    let mut archive = tar::Archive::new(&stream[..]);
    let entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.header().entry_type(), EntryType::Fifo);
}

#[test]
fn a_sub_path_must_exist_and_lead_through_directories_only() {
    let claim = tempfile::tempdir().unwrap();
    fs::create_dir_all(claim.path().join("real/app")).unwrap();
    symlink("real", claim.path().join("via")).unwrap();
    assert_eq!(
        context_root(claim.path(), Some("real/app/")).unwrap(),
        claim.path().join("real/app")
    );
    let missing = context_root(claim.path(), Some("real/nope"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        missing,
        "subPath `real/nope` does not exist in the claim (`real/nope` is missing)"
    );
    let through = context_root(claim.path(), Some("via/app"))
        .unwrap_err()
        .to_string();
    assert!(through.contains("symlink `via`"), "{through}");
    let climbing = context_root(claim.path(), Some("../x"))
        .unwrap_err()
        .to_string();
    assert!(climbing.contains("`..`"), "{climbing}");
}

#[tokio::test]
async fn an_unreachable_controller_is_reported_as_such_not_as_a_broken_stream() {
    let claim = tempfile::tempdir().unwrap();
    write(claim.path(), "a.txt", "a\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/contexts/x");
    let error = send(SendRequest {
        claim_root: claim.path().to_owned(),
        sub_path: None,
        url: url.clone(),
        token: "t".into(),
    })
    .await
    .expect_err("nothing listens");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot send the context to {url}: ")),
        "{message}"
    );
    assert!(!message.contains("stopped receiving"), "{message}");
}
