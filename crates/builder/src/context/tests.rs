//! What a user of `FileTree` can rely on, one behaviour per test.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use bytes::Bytes;

use super::*;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
}

fn walk(root: &Path) -> Result<FileTree, ContextError> {
    FileTree::from_dir(root, &ContextOptions::default())
}

fn paths(tree: &FileTree) -> Vec<&str> {
    tree.entries().iter().map(|e| e.path.as_str()).collect()
}

fn mode_of(tree: &FileTree, path: &str) -> u32 {
    tree.entries()
        .iter()
        .find(|e| e.path == path)
        .map(|e| e.mode)
        .unwrap_or_else(|| panic!("{path} not in the tree"))
}

fn item(path: &str, data: &[u8]) -> ContextItem {
    ContextItem {
        source: format!("ConfigMap src key {path}"),
        path: path.into(),
        mode: None,
        data: Bytes::copy_from_slice(data),
        archive: false,
    }
}

fn archive_item(path: &str, data: Vec<u8>) -> ContextItem {
    ContextItem {
        source: format!("ConfigMap src key {path}"),
        path: path.into(),
        mode: None,
        data: Bytes::from(data),
        archive: true,
    }
}

fn items(list: Vec<ContextItem>) -> Result<FileTree, ContextError> {
    FileTree::from_items(list, &ContextOptions::default())
}

/// A tar whose entries are written with raw names, so hostile names can be built.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o640);
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

// --- directories ---

#[test]
fn entries_are_sorted_by_the_byte_order_of_their_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["b", "a-b", "a/x", "A"] {
        write(dir.path(), f, "x");
    }
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(paths(&tree), ["A", "a", "a-b", "a/x", "b"]);
}

#[test]
fn modes_follow_the_owner_execute_bit_and_directories_are_0755() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, mode) in [("private", 0o600), ("tool", 0o700), ("group-exec", 0o650)] {
        write(dir.path(), name, "x");
        chmod(dir.path(), name, mode);
    }
    fs::create_dir(dir.path().join("locked")).expect("mkdir");
    chmod(dir.path(), "locked", 0o700);
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(mode_of(&tree, "private"), 0o644);
    assert_eq!(mode_of(&tree, "tool"), 0o755);
    assert_eq!(mode_of(&tree, "group-exec"), 0o644);
    assert_eq!(mode_of(&tree, "locked"), 0o755);
}

#[test]
fn symlinks_are_stored_as_links_and_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "real/file", "x");
    symlink("real", dir.path().join("alias")).expect("symlink");
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(paths(&tree), ["alias", "real", "real/file"]);
    let alias = &tree.entries()[0];
    assert_eq!(
        alias.kind,
        EntryKind::Symlink {
            target: "real".into()
        }
    );
}

#[test]
fn a_relative_symlink_out_of_the_context_is_stored_as_it_is() {
    // Inside the image it resolves against the image's root, as Docker and BuildKit store it.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    symlink("../../etc/passwd", dir.path().join("sub/escape")).expect("symlink");
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(paths(&tree), ["sub", "sub/escape"]);
    assert_eq!(
        tree.entries()[1].kind,
        EntryKind::Symlink {
            target: "../../etc/passwd".into()
        }
    );
}

#[test]
fn an_absolute_symlink_is_kept_because_it_points_inside_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    symlink("/etc/passwd", dir.path().join("passwd")).expect("symlink");
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(
        tree.entries()[0].kind,
        EntryKind::Symlink {
            target: "/etc/passwd".into()
        }
    );
}

#[test]
fn a_socket_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let err = walk(dir.path()).expect_err("socket");
    let message = err.to_string();
    assert!(
        message.contains("app.sock") && message.contains("socket"),
        "{message}"
    );
}

#[test]
fn a_fifo_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("queue");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let message = walk(dir.path()).expect_err("fifo").to_string();
    assert!(
        message.contains("queue") && message.contains("fifo"),
        "{message}"
    );
}

#[test]
fn an_excluded_special_file_is_no_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _listener =
        std::os::unix::net::UnixListener::bind(dir.path().join("app.sock")).expect("bind");
    let opts = ContextOptions {
        exclude: vec!["*.sock".into()],
        ..ContextOptions::default()
    };
    let tree = FileTree::from_dir(dir.path(), &opts).expect("walk");
    assert!(tree.is_empty());
}

#[test]
fn a_name_that_is_not_utf8_is_refused_showing_it_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(dir.path().join(name), "x").expect("write");
    let message = walk(dir.path()).expect_err("not utf-8").to_string();
    assert!(message.contains(r"caf\xE9.txt"), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn a_name_with_a_newline_is_refused_showing_it_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "two\nlines", "x");
    let message = walk(dir.path()).expect_err("newline").to_string();
    assert!(message.contains(r"two\nlines"), "{message}");
}

#[test]
fn hard_links_are_stored_as_regular_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a", "same");
    fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link");
    let tree = walk(dir.path()).expect("walk");
    assert!(
        tree.entries()
            .iter()
            .all(|e| matches!(e.kind, EntryKind::File { size: 4, .. }))
    );
    assert_eq!(tree.len(), 2);
}

#[test]
fn dockerignore_is_honoured_and_itself_still_included() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), ".dockerignore", "*.md\n!KEEP.md\nbuild\n");
    for f in ["a.md", "KEEP.md", "build/out.o", "main.rs"] {
        write(dir.path(), f, "x");
    }
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(paths(&tree), [".dockerignore", "KEEP.md", "main.rs"]);
}

#[test]
fn an_exception_reaches_into_an_excluded_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), ".dockerignore", "build\n!build/keep.txt\n");
    write(dir.path(), "build/keep.txt", "x");
    write(dir.path(), "build/drop.o", "x");
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(paths(&tree), [".dockerignore", "build", "build/keep.txt"]);
}

#[test]
fn exclude_option_has_the_last_word_over_dockerignore() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), ".dockerignore", "!secret.txt\n");
    write(dir.path(), "secret.txt", "x");
    let opts = ContextOptions {
        exclude: vec!["secret.txt".into(), ".dockerignore".into()],
        ..ContextOptions::default()
    };
    let tree = FileTree::from_dir(dir.path(), &opts).expect("walk");
    assert!(tree.is_empty());
}

#[test]
fn dockerignore_is_ignored_when_not_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), ".dockerignore", "*\n");
    write(dir.path(), "a", "x");
    let opts = ContextOptions {
        honour_dockerignore: false,
        ..ContextOptions::default()
    };
    let tree = FileTree::from_dir(dir.path(), &opts).expect("walk");
    assert_eq!(paths(&tree), [".dockerignore", "a"]);
}

#[test]
fn a_byte_limit_refuses_a_larger_context() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a", "12345");
    write(dir.path(), "b", "67890");
    let opts = ContextOptions {
        max_bytes: Some(8),
        ..ContextOptions::default()
    };
    let err = FileTree::from_dir(dir.path(), &opts).expect_err("too large");
    assert!(
        matches!(err, ContextError::TooLarge { limit: 8, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("more than 8 bytes"));
}

#[test]
fn an_entry_limit_refuses_a_context_with_more_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["a", "b", "c"] {
        write(dir.path(), f, "x");
    }
    let opts = ContextOptions {
        max_entries: Some(2),
        ..ContextOptions::default()
    };
    let err = FileTree::from_dir(dir.path(), &opts).expect_err("too many");
    assert!(err.to_string().contains("more than 2 entries"), "{err}");
}

#[test]
fn a_root_that_is_not_a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "file", "x");
    let err = walk(&dir.path().join("file")).expect_err("not a dir");
    assert!(matches!(err, ContextError::NotADirectory(_)));
}

#[test]
fn counts_entries_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "d/a", "123");
    write(dir.path(), "b", "45");
    let tree = walk(dir.path()).expect("walk");
    assert_eq!(tree.len(), 3);
    assert_eq!(tree.total_bytes(), 5);
}

// --- items ---

#[test]
fn items_land_at_their_paths_with_0644_unless_they_set_a_mode() {
    let mut script = item("bin/run.sh", b"#!/bin/sh\n");
    script.mode = Some(0o750);
    let tree = items(vec![item("index.html", b"<p>hi</p>"), script]).expect("items");
    assert_eq!(paths(&tree), ["bin", "bin/run.sh", "index.html"]);
    assert_eq!(mode_of(&tree, "bin/run.sh"), 0o750);
    assert_eq!(mode_of(&tree, "index.html"), 0o644);
}

#[test]
fn item_paths_that_escape_or_are_malformed_are_refused_naming_the_source() {
    for bad in ["../etc/passwd", "/etc/passwd", "a//b", "a/./b", ""] {
        let message = items(vec![item(bad, b"x")]).expect_err(bad).to_string();
        assert!(message.contains("ConfigMap src key"), "{bad}: {message}");
    }
}

#[test]
fn an_item_mode_beyond_permission_bits_is_refused() {
    let mut odd = item("a", b"x");
    odd.mode = Some(0o100644);
    assert!(items(vec![odd]).is_err());
}

#[test]
fn duplicate_item_paths_are_refused_naming_both_sources() {
    let mut first = item("index.html", b"1");
    first.source = "ConfigMap one key index.html".into();
    let mut second = item("index.html", b"2");
    second.source = "ConfigMap two key page".into();
    let message = items(vec![first, second])
        .expect_err("duplicate")
        .to_string();
    assert!(
        message.contains("ConfigMap one key index.html")
            && message.contains("ConfigMap two key page"),
        "{message}"
    );
}

#[test]
fn exclude_patterns_apply_to_items() {
    let opts = ContextOptions {
        exclude: vec!["*.md".into()],
        ..ContextOptions::default()
    };
    let tree =
        FileTree::from_items(vec![item("README.md", b"x"), item("a", b"y")], &opts).expect("items");
    assert_eq!(paths(&tree), ["a"]);
}

#[test]
fn a_dockerignore_item_is_honoured() {
    let tree = items(vec![
        item(".dockerignore", b"*.md\n"),
        item("README.md", b"x"),
    ])
    .expect("items");
    assert_eq!(paths(&tree), [".dockerignore"]);
}

// --- archives ---

#[test]
fn an_archive_unpacks_under_its_key_without_the_extension() {
    let tar = raw_tar(&[
        ("./", tar::EntryType::Directory, b"", ""),
        ("./index.html", tar::EntryType::Regular, b"<p>hi</p>", ""),
        ("./css/site.css", tar::EntryType::Regular, b"p{}", ""),
    ]);
    let tree = items(vec![archive_item("site.tar.gz", gzip(&tar))]).expect("archive");
    assert_eq!(
        paths(&tree),
        ["site", "site/css", "site/css/site.css", "site/index.html"]
    );
    assert_eq!(mode_of(&tree, "site/index.html"), 0o644);
}

#[test]
fn an_archive_with_an_explicit_path_unpacks_there_or_at_the_root() {
    let tar = raw_tar(&[("a.txt", tar::EntryType::Regular, b"x", "")]);
    let www = items(vec![archive_item("www/", tar.clone())]).expect("www");
    assert_eq!(paths(&www), ["www", "www/a.txt"]);
    let root = items(vec![archive_item(".", tar)]).expect("root");
    assert_eq!(paths(&root), ["a.txt"]);
}

#[test]
fn archive_entries_that_climb_out_are_refused() {
    for name in ["../evil", "a/../../evil", "/etc/passwd"] {
        let tar = raw_tar(&[(name, tar::EntryType::Regular, b"x", "")]);
        let err = items(vec![archive_item("x.tar", tar)]).expect_err(name);
        assert!(
            matches!(err, ContextError::ArchiveEntry { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn archive_hard_links_and_devices_are_refused() {
    let cases = [
        (tar::EntryType::Link, "hard link"),
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "fifo"),
    ];
    for (kind, words) in cases {
        let tar = raw_tar(&[("thing", kind, b"", "target")]);
        let message = items(vec![archive_item("x.tar", tar)])
            .expect_err(words)
            .to_string();
        assert!(
            message.contains(words) && message.contains("thing"),
            "{message}"
        );
    }
}

#[test]
fn an_archive_symlink_out_of_the_context_is_stored_but_nothing_goes_through_it() {
    let tar = raw_tar(&[("link", tar::EntryType::Symlink, b"", "../../outside")]);
    let tree = items(vec![archive_item("x.tar", tar)]).expect("stored");
    assert_eq!(
        tree.entries()[1].kind,
        EntryKind::Symlink {
            target: "../../outside".into()
        }
    );

    let tar = raw_tar(&[
        ("link", tar::EntryType::Symlink, b"", "../../outside"),
        ("link/file", tar::EntryType::Regular, b"x", ""),
    ]);
    let message = items(vec![archive_item("x.tar", tar)])
        .expect_err("a file below a link")
        .to_string();
    assert!(message.contains("link"), "{message}");
}

#[test]
fn an_archive_bomb_is_refused_before_it_is_read() {
    let big = vec![0u8; 4 << 20];
    let tar = raw_tar(&[("zeros", tar::EntryType::Regular, &big, "")]);
    let opts = ContextOptions {
        max_bytes: Some(1 << 20),
        ..ContextOptions::default()
    };
    let err = FileTree::from_items(vec![archive_item("bomb.tar.gz", gzip(&tar))], &opts)
        .expect_err("bomb");
    assert!(matches!(err, ContextError::TooLarge { .. }), "{err}");
}

#[test]
fn an_archive_entry_limit_stops_unpacking() {
    let tar = raw_tar(&[
        ("a", tar::EntryType::Regular, b"", ""),
        ("b", tar::EntryType::Regular, b"", ""),
        ("c", tar::EntryType::Regular, b"", ""),
    ]);
    let opts = ContextOptions {
        max_entries: Some(2),
        ..ContextOptions::default()
    };
    let err = FileTree::from_items(vec![archive_item(".", tar)], &opts).expect_err("limit");
    assert!(matches!(err, ContextError::TooManyEntries { .. }), "{err}");
}

#[test]
fn data_that_is_not_an_archive_is_refused_naming_the_source() {
    let message = items(vec![archive_item("x.tar.gz", gzip(b"just text"))])
        .expect_err("not a tar")
        .to_string();
    assert!(message.contains("ConfigMap src key x.tar.gz"), "{message}");
}

#[test]
fn archive_true_needs_a_key_with_an_archive_extension() {
    let err = ContextItem::from_key(
        "ConfigMap c key notes.txt",
        "notes.txt",
        None,
        None,
        Bytes::new(),
        true,
    )
    .expect_err("not an archive name");
    assert!(err.to_string().contains(".tar.gz"), "{err}");
    let ok = ContextItem::from_key(
        "ConfigMap c key site.tgz",
        "site.tgz",
        None,
        None,
        Bytes::new(),
        true,
    )
    .expect("archive name");
    assert_eq!(ok.path, "site.tgz");
}

#[test]
fn an_archive_item_with_a_mode_is_refused() {
    let mut archive = archive_item("x.tar", raw_tar(&[]));
    archive.mode = Some(0o644);
    assert!(items(vec![archive]).is_err());
}

#[test]
fn an_archive_entry_clashing_with_an_item_names_both() {
    let tar = raw_tar(&[("index.html", tar::EntryType::Regular, b"x", "")]);
    let message = items(vec![archive_item(".", tar), item("index.html", b"y")])
        .expect_err("clash")
        .to_string();
    assert!(message.contains("entry \"index.html\""), "{message}");
    assert!(
        message.contains("ConfigMap src key index.html"),
        "{message}"
    );
}

#[test]
fn git_archive_global_headers_are_skipped() {
    let tar = raw_tar(&[
        ("pax_global_header", tar::EntryType::XGlobalHeader, b"", ""),
        ("a", tar::EntryType::Regular, b"x", ""),
    ]);
    let tree = items(vec![archive_item(".", tar)]).expect("archive");
    assert_eq!(paths(&tree), ["a"]);
}

// --- fingerprint ---

#[test]
fn fingerprint_is_the_same_for_the_same_content_read_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a/b", "content");
    let first = walk(dir.path())
        .expect("walk")
        .fingerprint()
        .expect("fingerprint");
    let second = walk(dir.path())
        .expect("walk")
        .fingerprint()
        .expect("fingerprint");
    assert_eq!(first, second);
}

#[test]
fn fingerprint_is_the_same_for_a_directory_and_items_with_the_same_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "site/index.html", "<p>hi</p>");
    let from_dir = walk(dir.path()).expect("walk").fingerprint().expect("fp");
    let from_items = items(vec![item("site/index.html", b"<p>hi</p>")])
        .expect("items")
        .fingerprint()
        .expect("fp");
    assert_eq!(from_dir, from_items);
}

#[test]
fn fingerprint_changes_with_content_and_mode() {
    let base = items(vec![item("a", b"1")])
        .expect("items")
        .fingerprint()
        .expect("fp");
    let content = items(vec![item("a", b"2")])
        .expect("items")
        .fingerprint()
        .expect("fp");
    let mut executable = item("a", b"1");
    executable.mode = Some(0o755);
    let mode = items(vec![executable])
        .expect("items")
        .fingerprint()
        .expect("fp");
    assert_ne!(base, content);
    assert_ne!(base, mode);
}
