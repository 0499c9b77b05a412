//! A deterministic ~500 MB build context shaped like real ones: many small source-like files,
//! a few large compressible logs and tables, and a few incompressible media files; and a ~20 MB
//! one of the same mix for small-context runs.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Bumped whenever the generator's output changes, so a stale corpus is regenerated.
const CORPUS_VERSION: &str = "imagebuild-bench-corpus-v1";
const MIB: usize = 1 << 20;

/// How many of each kind of file a corpus holds: (count, size) pairs.
pub struct Shape {
    /// Tag written to the marker, so two shapes never pass for each other.
    name: &'static str,
    /// Source directories of 120 files (about 4.9 kB each).
    modules: usize,
    logs: (usize, usize),
    tables: (usize, usize),
    media: (usize, usize),
}

/// ~500 MB: 24,000 source files, 180 MiB of logs, 40 MiB of tables, 160 MiB of media.
pub const FULL: Shape = Shape {
    name: "full",
    modules: 200,
    logs: (4, 45 * MIB),
    tables: (2, 20 * MIB),
    media: (4, 40 * MIB),
};

/// ~20 MB of the same mix: 960 source files, 8 MiB of logs, 3 MiB of tables, 4 MiB of media.
pub const SMALL: Shape = Shape {
    name: "small",
    modules: 8,
    logs: (1, 8 * MIB),
    tables: (1, 3 * MIB),
    media: (1, 4 * MIB),
};

/// Makes a corpus of `shape` under `dir` unless a complete one is already there.
pub fn ensure_shape(dir: &Path, shape: &Shape) -> io::Result<()> {
    let marker = dir.join(".corpus-version");
    // The full corpus keeps its original marker, so existing copies stay valid.
    let version = match shape.name {
        "full" => CORPUS_VERSION.to_owned(),
        name => format!("{CORPUS_VERSION}-{name}"),
    };
    if fs::read_to_string(&marker).is_ok_and(|v| v == version) {
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let mut rng = fastrand::Rng::with_seed(20_240_601);
    let words = vocabulary(&mut rng);
    source_tree(&dir.join("src"), shape.modules, &words, &mut rng)?;
    for i in 0..shape.logs.0 {
        write_with(
            &dir.join(format!("logs/app-{i}.log")),
            shape.logs.1,
            |out| log_lines(out, &words, &mut rng),
        )?;
    }
    for i in 0..shape.tables.0 {
        write_with(
            &dir.join(format!("data/table-{i}.csv")),
            shape.tables.1,
            |out| csv_rows(out, &mut rng),
        )?;
    }
    for i in 0..shape.media.0 {
        write_with(
            &dir.join(format!("media/video-{i}.bin")),
            shape.media.1,
            |out| random_bytes(out, &mut rng),
        )?;
    }
    fs::write(marker, version)
}

/// Identifiers built from syllables, so text compresses like code rather than like noise.
fn vocabulary(rng: &mut fastrand::Rng) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "get", "set", "buf", "len", "idx", "cfg", "ctx", "req", "res", "err", "val", "key", "map",
        "node", "tree", "item", "list", "name", "path", "file", "data", "size", "time", "user",
    ];
    const KEYWORDS: [&str; 16] = [
        "fn", "let", "if", "else", "return", "match", "for", "in", "while", "pub", "struct",
        "impl", "use", "mut", "self", "const",
    ];
    let mut words: Vec<String> = KEYWORDS.iter().map(|k| (*k).to_owned()).collect();
    for _ in 0..3000 {
        let n = rng.usize(1..4);
        let parts: Vec<&str> = (0..n)
            .map(|_| SYLLABLES[rng.usize(..SYLLABLES.len())])
            .collect();
        words.push(parts.join("_"));
    }
    words
}

/// A Zipf-like pick: low indices (keywords, common names) are far more frequent.
fn word<'a>(words: &'a [String], rng: &mut fastrand::Rng) -> &'a str {
    let r = rng.f64();
    &words[((r * r * r) * words.len() as f64) as usize]
}

fn source_tree(
    dir: &Path,
    modules: usize,
    words: &[String],
    rng: &mut fastrand::Rng,
) -> io::Result<()> {
    for d in 0..modules {
        for f in 0..120 {
            let size = 200 + (rng.f64().powi(2) * 14_000.0) as usize;
            let path = dir.join(format!("module-{d:03}/part-{}/file-{f:03}.rs", f % 4));
            write_with(&path, size, |out| source_lines(out, words, rng))?;
        }
    }
    Ok(())
}

fn source_lines(out: &mut Vec<u8>, words: &[String], rng: &mut fastrand::Rng) {
    let indent = rng.usize(0..4) * 4;
    out.extend(std::iter::repeat_n(b' ', indent));
    for i in 0..rng.usize(2..10) {
        if i > 0 {
            out.push(if rng.u8(..8) == 0 { b'.' } else { b' ' });
        }
        out.extend_from_slice(word(words, rng).as_bytes());
        if rng.u8(..10) == 0 {
            out.extend_from_slice(format!("({})", rng.u32(..1000)).as_bytes());
        }
    }
    out.extend_from_slice(b";\n");
}

fn log_lines(out: &mut Vec<u8>, words: &[String], rng: &mut fastrand::Rng) {
    const LEVELS: [&str; 4] = ["INFO", "DEBUG", "WARN", "ERROR"];
    let ms = rng.u64(..86_400_000);
    let line = format!(
        "2024-06-01T{:02}:{:02}:{:02}.{:03}Z {} request_id={:08x} {} {} {} took={}ms\n",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000,
        LEVELS[rng.usize(..4)],
        rng.u32(..),
        word(words, rng),
        word(words, rng),
        word(words, rng),
        rng.u32(..5000)
    );
    out.extend_from_slice(line.as_bytes());
}

fn csv_rows(out: &mut Vec<u8>, rng: &mut fastrand::Rng) {
    let row = format!(
        "{},{:.4},{:.2},{},{}\n",
        rng.u32(..1_000_000),
        rng.f64(),
        rng.f64() * 1000.0,
        rng.bool(),
        rng.u16(..100)
    );
    out.extend_from_slice(row.as_bytes());
}

fn random_bytes(out: &mut Vec<u8>, rng: &mut fastrand::Rng) {
    for _ in 0..8192 {
        out.extend_from_slice(&rng.u64(..).to_le_bytes());
    }
}

/// Writes `size` bytes to `path` produced by repeated calls of `fill`.
fn write_with(path: &Path, size: usize, mut fill: impl FnMut(&mut Vec<u8>)) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut out = BufWriter::new(fs::File::create(path)?);
    let mut chunk = Vec::with_capacity(2 * 65536);
    let mut written = 0;
    while written < size {
        chunk.clear();
        while chunk.len() < 65536.min(size - written) {
            fill(&mut chunk);
        }
        chunk.truncate(size - written);
        out.write_all(&chunk)?;
        written += chunk.len();
    }
    out.flush()
}
