//! hack/controller-image.sh making a multi-platform controller image: one binary per platform
//! (`IMAGEBUILD_BINARY_<os>_<arch>`), one image index pushed to the test Gitea, judged by
//! `imagebuild inspect`, skopeo and umoci.
//!
//! This machine has no cross toolchain, so the linux/arm64 binary is a stand-in: a tiny static
//! AArch64 executable the test writes itself (it prints a line and exits), which is all the
//! script asks of a binary for another architecture. The linux/amd64 child holds the debug
//! build of imagebuild with its libraries and loader, as the single-platform image does. Also
//! here: the binaries the script refuses before it builds anything.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use imagebuild::oci::Digest;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const IMAGEBUILD: &str = env!("CARGO_BIN_EXE_imagebuild");

/// A minimal static linux/arm64 executable: an ELF header, one loadable segment (and, given an
/// `interpreter`, a PT_INTERP naming it, as a dynamically linked binary has), and code that
/// writes "imagebuild stand-in" to stdout and exits 0.
fn arm64_stand_in(interpreter: Option<&str>) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let message = b"imagebuild stand-in\n";
    let interp: Vec<u8> = interpreter
        .map(|i| [i.as_bytes(), b"\0"].concat())
        .unwrap_or_default();
    let headers = EHDR + PHDR * if interpreter.is_some() { 2 } else { 1 };
    let code_at = (headers + interp.len()).next_multiple_of(4);
    // write(1, message, len); exit(0). `adr` is relative to itself: the message follows the
    // eight instructions, seven after the adr.
    let movz = |rd: u32, imm: u32| 0xd280_0000 | (imm << 5) | rd;
    let adr_x1 = |offset: u32| 0x1000_0000 | ((offset & 3) << 29) | ((offset >> 2) << 5) | 1;
    let svc = 0xd400_0001;
    let code = [
        movz(0, 1),                    // fd 1
        adr_x1(7 * 4),                 // the message
        movz(2, message.len() as u32), // its length
        movz(8, 64),                   // write
        svc,
        movz(0, 0),  // status 0
        movz(8, 93), // exit
        svc,
    ];
    let total = code_at + code.len() * 4 + message.len();

    let mut elf = Vec::with_capacity(total);
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + code_at as u64).to_le_bytes()); // entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [EHDR, PHDR, (headers - EHDR) / PHDR, 64, 0, 0] {
        elf.extend_from_slice(&(half as u16).to_le_bytes());
    }
    let mut segment = |kind: u32, flags: u32, offset: usize, size: usize, align: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&(offset as u64).to_le_bytes());
        for address in [BASE + offset as u64; 2] {
            elf.extend_from_slice(&address.to_le_bytes());
        }
        for len in [size as u64; 2] {
            elf.extend_from_slice(&len.to_le_bytes());
        }
        elf.extend_from_slice(&align.to_le_bytes());
    };
    if !interp.is_empty() {
        segment(3, 4, headers, interp.len(), 1); // PT_INTERP, readable
    }
    segment(1, 5, 0, total, 0x1000); // PT_LOAD, readable and executable
    elf.extend_from_slice(&interp);
    elf.resize(code_at, 0);
    for instruction in code {
        elf.extend_from_slice(&instruction.to_le_bytes());
    }
    elf.extend_from_slice(message);
    assert_eq!(elf.len(), total);
    elf
}

fn write_executable(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write the stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// `bash hack/controller-image.sh` with imagebuild = the debug binary and no platform binaries
/// but those the caller adds (none leak in from the environment of the test run).
fn script(mut cmd: Command) -> Command {
    cmd.arg(common::repo_root().join("hack/controller-image.sh"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IMAGEBUILD_BINARY_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("IMAGEBUILD_BINARY", IMAGEBUILD)
        .env_remove("IMAGEBUILD_IMAGE_TAG")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// The script with only `arm64` as its linux/arm64 binary, aimed at a registry it never
/// reaches: it must refuse before it builds or pushes anything.
fn refused(arm64: &Path) -> String {
    let mut cmd = script(Command::new("bash"));
    cmd.env("IMAGEBUILD_BINARY_linux_amd64", IMAGEBUILD)
        .env("IMAGEBUILD_BINARY_linux_arm64", arm64)
        .env(
            "IMAGEBUILD_IMAGE_REPOSITORY",
            "registry.invalid/owner/imagebuild",
        )
        .env_remove("IMAGEBUILD_USERNAME");
    let out = common::output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the script accepted {}: {stderr}",
        arm64.display()
    );
    assert!(out.stdout.is_empty(), "printed a reference: {out:?}");
    assert!(!stderr.contains("context:"), "made a context: {stderr}");
    stderr
}

/// The image config of the one image in the layout `skopeo copy` wrote to `pulled/layout`.
fn pulled_config(pulled: &Path) -> Value {
    let layout = pulled.join("layout");
    let blob = |digest: &Value| -> Value {
        let digest = digest.as_str().expect("digest");
        let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
        serde_json::from_slice(&std::fs::read(path).expect("blob")).expect("blob JSON")
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json JSON");
    let manifest = blob(&index["manifests"][0]["digest"]);
    blob(&manifest["config"]["digest"])
}

fn top_level(rootfs: &Path) -> BTreeSet<String> {
    std::fs::read_dir(rootfs)
        .expect("rootfs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// The loader a binary asks for (readelf's "Requesting program interpreter").
fn interpreter(binary: &str) -> String {
    let listing = common::run_ok(Command::new("readelf").args(["-l", binary]));
    listing
        .lines()
        .find_map(|l| l.split_once("Requesting program interpreter: "))
        .map(|(_, rest)| rest.trim_end_matches(']').to_owned())
        .expect("the debug binary is dynamically linked")
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn pushes_an_index_of_one_image_per_platform_binary() {
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "the stand-in is the foreign (linux/arm64) binary: this test expects an x86_64 machine"
    );
    let env = common::env();
    let repository = env.gitea_image(&common::unique_name("controller-image"));
    let dir = tempfile::tempdir().expect("tempdir");
    let stand_in = arm64_stand_in(None);
    let arm64 = write_executable(dir.path(), "imagebuild-arm64", &stand_in);

    let mut cmd = script(env.cmd("bash"));
    cmd.env("IMAGEBUILD_BINARY_linux_amd64", IMAGEBUILD)
        .env("IMAGEBUILD_BINARY_linux_arm64", &arm64)
        .env("IMAGEBUILD_IMAGE_REPOSITORY", &repository)
        .env("IMAGEBUILD_IMAGE_TAG", "multi")
        .env("IMAGEBUILD_CA_FILE", &env.gitea_ca)
        .env("IMAGEBUILD_USERNAME", &env.gitea_user)
        .env("IMAGEBUILD_PASSWORD", &env.gitea_password);
    let out = common::output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hack/controller-image.sh failed ({}): {stderr}",
        out.status
    );
    // Exactly one line on stdout, the pushed index by digest, as the chart takes it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reference = stdout.trim_end_matches('\n');
    let digest = reference
        .strip_prefix(&format!("{repository}@"))
        .unwrap_or_else(|| panic!("stdout is not {repository}@sha256:...: {stdout:?}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71 && !digest.contains('\n'),
        "{stdout:?}"
    );

    // imagebuild's own view: an index, amd64 then arm64.
    let inspected = common::output_with_stdin(
        Command::new(IMAGEBUILD)
            .args(["inspect", reference, "--ca-file"])
            .arg(&env.gitea_ca)
            .args(["--username", &env.gitea_user, "--password-stdin"]),
        env.gitea_password.as_bytes(),
    );
    assert!(
        inspected.status.success(),
        "imagebuild inspect failed: {}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let inspected = String::from_utf8_lossy(&inspected.stdout).into_owned();
    let lines: Vec<&str> = inspected.lines().collect();
    assert_eq!(lines.len(), 3, "{inspected}");
    assert_eq!(lines[0], format!("{reference} {INDEX}"));
    let children: Vec<(&str, &str)> = lines[1..]
        .iter()
        .map(|l| l.split_once(' ').expect("platform digest"))
        .collect();
    assert_eq!(
        children.iter().map(|c| c.0).collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"],
        "{inspected}"
    );

    // The index as the registry serves it: compact, keys in a fixed order, so the same children
    // always give the same digest.
    let creds = env.gitea_creds();
    let raw_index = env
        .raw_manifest(&env.gitea_ca, &creds, reference)
        .expect("the index");
    assert_eq!(Digest::of(&raw_index).as_str(), digest);
    let descriptors: Vec<String> = children
        .iter()
        .map(|(platform, child)| {
            let raw = env
                .raw_manifest(&env.gitea_ca, &creds, &format!("{repository}@{child}"))
                .expect("a child manifest");
            assert_eq!(Digest::of(&raw).as_str(), *child);
            let manifest: Value = serde_json::from_slice(&raw).expect("child JSON");
            assert_eq!(manifest["mediaType"], MANIFEST);
            let (os, architecture) = platform.split_once('/').expect("os/arch");
            format!(
                r#"{{"mediaType":"{MANIFEST}","digest":"{child}","size":{},"platform":{{"architecture":"{architecture}","os":"{os}"}}}}"#,
                raw.len()
            )
        })
        .collect();
    let expected = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
        descriptors.join(",")
    );
    assert_eq!(String::from_utf8_lossy(&raw_index), expected);

    // Each child: its config names its platform, and the same spec otherwise.
    let mut configs = Vec::new();
    for (platform, child) in &children {
        let pulled = env.pull_and_unpack(&env.gitea_ca, &creds, &format!("{repository}@{child}"));
        let config = pulled_config(pulled.path());
        let (os, architecture) = platform.split_once('/').expect("os/arch");
        assert_eq!(config["os"], os, "{platform}: {config}");
        assert_eq!(config["architecture"], architecture, "{platform}: {config}");
        assert!(config.get("variant").is_none(), "{platform}: {config}");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/imagebuild"]),
            "{platform}: {config}"
        );
        assert_eq!(config["config"]["User"], "65532:65532", "{platform}");
        configs.push((*platform, pulled));
    }

    // linux/amd64: the (stripped) debug binary with its loader, as the single-platform image has.
    let amd64 = configs[0].1.path().join("bundle/rootfs");
    let binary = amd64.join("usr/local/bin/imagebuild");
    assert!(
        binary.is_file(),
        "no /usr/local/bin/imagebuild in linux/amd64"
    );
    let loader = interpreter(IMAGEBUILD);
    assert!(
        amd64.join(loader.trim_start_matches('/')).exists(),
        "linux/amd64 lacks the loader {loader}"
    );
    assert!(
        std::fs::read(&binary).expect("amd64 binary").len()
            <= std::fs::metadata(IMAGEBUILD).expect("debug binary").len() as usize
    );

    // linux/arm64: the stand-in, byte for byte and executable, and nothing of this machine's
    // libraries.
    let arm64_root = configs[1].1.path().join("bundle/rootfs");
    let binary = arm64_root.join("usr/local/bin/imagebuild");
    assert_eq!(
        std::fs::read(&binary).expect("/usr/local/bin/imagebuild in linux/arm64"),
        stand_in
    );
    let mode = std::fs::metadata(&binary)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "mode {mode:o}");
    assert_eq!(
        top_level(&arm64_root),
        BTreeSet::from(["etc".to_owned(), "usr".to_owned()])
    );
    assert!(arm64_root.join("etc/passwd").is_file());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn refuses_a_dynamically_linked_binary_for_another_architecture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let arm64 = write_executable(
        dir.path(),
        "dynamic-arm64",
        &arm64_stand_in(Some("/lib/ld-linux-aarch64.so.1")),
    );
    let stderr = refused(&arm64);
    assert!(
        stderr.contains("dynamically linked")
            && stderr.contains("/lib/ld-linux-aarch64.so.1")
            && stderr.contains("build it static")
            && stderr.contains("--target aarch64-unknown-linux-musl"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn refuses_a_binary_for_the_wrong_architecture_or_none() {
    // This machine's imagebuild given as the arm64 binary.
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "this test expects an x86_64 machine"
    );
    let stderr = refused(Path::new(IMAGEBUILD));
    assert!(stderr.contains("not for linux/arm64 (AArch64)"), "{stderr}");

    // A script is no binary: nothing in the image could run it.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = write_executable(dir.path(), "script", b"#!/bin/sh\necho hello\n");
    let stderr = refused(&script);
    assert!(stderr.contains("is not an ELF executable"), "{stderr}");
}
