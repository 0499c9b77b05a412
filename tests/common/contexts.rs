//! Build contexts large enough to be split into layers (64 MiB of files or more), written
//! deterministically so that two calls with the same seed give the same files.

use std::path::Path;

/// Incompressible "media" files and compressible text files.
const MEDIA_FILES: usize = 10;
const MEDIA_BYTES: usize = 6 << 20;
const TEXT_DIRS: usize = 20;
const TEXT_FILES_PER_DIR: usize = 20;

/// Writes about 76 MiB under `dir`: `media/clip-N.bin` (10 x 6 MiB of noise) and
/// `src/dir-NN/file-NN.txt` (400 text files of 16 to 64 KiB). The same `seed` gives the same
/// bytes.
pub fn write_large_context(dir: &Path, seed: u64) {
    let mut rng = XorShift(seed.max(1));
    std::fs::create_dir_all(dir.join("media")).expect("media dir");
    for i in 0..MEDIA_FILES {
        let mut bytes = vec![0u8; MEDIA_BYTES];
        for chunk in bytes.chunks_mut(8) {
            let n = rng.next().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("media/clip-{i}.bin")), bytes).expect("media file");
    }
    const WORDS: [&str; 12] = [
        "layer", "image", "build", "file", "context", "digest", "push", "node", "pull", "tar",
        "blob", "index",
    ];
    for d in 0..TEXT_DIRS {
        let sub = dir.join(format!("src/dir-{d:02}"));
        std::fs::create_dir_all(&sub).expect("text dir");
        for f in 0..TEXT_FILES_PER_DIR {
            let size = 16_384 + (rng.next() % 49_152) as usize;
            let mut text = String::with_capacity(size + 64);
            while text.len() < size {
                text.push_str(WORDS[(rng.next() % 12) as usize]);
                text.push(if rng.next().is_multiple_of(9) {
                    '\n'
                } else {
                    ' '
                });
            }
            std::fs::write(sub.join(format!("file-{f:02}.txt")), text).expect("text file");
        }
    }
}

/// Appends a line to one text file of a context written by [`write_large_context`]; returns
/// its path relative to the context.
pub fn change_one_file(dir: &Path, line: &str) -> String {
    let relative = "src/dir-07/file-03.txt";
    let path = dir.join(relative);
    let mut text = std::fs::read_to_string(&path).expect("text file");
    text.push_str(line);
    text.push('\n');
    std::fs::write(&path, text).expect("changed file");
    relative.to_owned()
}

/// Whether the trees under `a` and `b` hold the same paths, kinds, contents and link targets
/// (modes are not compared: unpacking rootless may change them). Panics naming the first
/// difference.
pub fn assert_same_files(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let entry = entry.expect("entry");
                let path = entry.path();
                let relative = path
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                let kind = entry.file_type().expect("file type");
                if kind.is_dir() {
                    stack.push(path);
                    out.push((relative, "dir".to_owned()));
                } else if kind.is_symlink() {
                    let target = std::fs::read_link(&path).expect("link");
                    out.push((relative, format!("link {}", target.display())));
                } else {
                    let bytes = std::fs::read(&path).expect("file");
                    let digest = imagebuild::oci::Digest::of(&bytes).to_string();
                    out.push((relative, digest));
                }
            }
        }
        out.sort();
        out
    };
    let (left, right) = (list(a), list(b));
    for (l, r) in left.iter().zip(&right) {
        assert_eq!(l, r, "{} and {} differ", a.display(), b.display());
    }
    assert_eq!(
        left.len(),
        right.len(),
        "{} and {} hold different numbers of entries",
        a.display(),
        b.display()
    );
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// (digest, size) of each layer of a manifest.
pub fn layer_list(manifest: &serde_json::Value) -> Vec<(String, u64)> {
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().expect("digest").to_owned(),
                l["size"].as_u64().expect("size"),
            )
        })
        .collect()
}

/// The layers of the manifest `reference` serves, read by skopeo with `ca` and `creds`.
pub fn served_layers(ca: &Path, creds: &str, reference: &str) -> Vec<(String, u64)> {
    let raw = super::env()
        .raw_manifest(ca, creds, reference)
        .unwrap_or_else(|| panic!("skopeo cannot read {reference}"));
    layer_list(&serde_json::from_slice(&raw).expect("manifest JSON"))
}

/// The number before ` bytes uploaded` in a command's output or a Ready message.
pub fn bytes_uploaded(text: &str) -> u64 {
    let at = text
        .find(" bytes uploaded")
        .unwrap_or_else(|| panic!("no upload figure: {text}"));
    let digits: String = text[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .expect("a number")
}
