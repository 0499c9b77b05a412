//! Builds one layer from a directory and prints what it measured, for `benches/builder.sh`.
//!
//! ```text
//! cargo bench --bench build_layer -- DIR [--out DIR] [--level N] [--zstd N] [--threads N]
//! cargo bench --bench build_layer -- --generate DIR
//! cargo bench --bench build_layer -- --generate-small DIR
//! ```

mod corpus;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use imagebuild::context::{ContextOptions, FileTree};
use imagebuild::layer::{self, Compression, LayerOptions};

struct Args {
    context: PathBuf,
    out: PathBuf,
    generate: Option<&'static corpus::Shape>,
    options: LayerOptions,
}

fn parse_args() -> Result<Args, String> {
    let mut context = None;
    let mut out = PathBuf::from("target/bench/out");
    let mut generate = None;
    let mut options = LayerOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            // Added by `cargo bench` itself.
            "--bench" => {}
            "--generate" => generate = Some(&corpus::FULL),
            "--generate-small" => generate = Some(&corpus::SMALL),
            "--out" => out = PathBuf::from(value("--out")?),
            "--level" => {
                let level = value("--level")?
                    .parse()
                    .map_err(|e| format!("--level: {e}"))?;
                options.compression = Compression::Gzip { level };
            }
            "--zstd" => {
                let level = value("--zstd")?
                    .parse()
                    .map_err(|e| format!("--zstd: {e}"))?;
                options.compression = Compression::Zstd { level };
            }
            "--threads" => {
                options.threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?;
            }
            other if !other.starts_with("--") => context = Some(PathBuf::from(other)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let context = context.ok_or("usage: build_layer [--generate] DIR [options]")?;
    Ok(Args {
        context,
        out,
        generate,
        options,
    })
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(shape) = args.generate {
        corpus::ensure_shape(&args.context, shape)?;
        return Ok(());
    }
    let started = Instant::now();
    let tree = FileTree::from_dir(&args.context, &ContextOptions::default())?;
    let blob = layer::build_layer(&tree, &args.options, &args.out)?;
    let wall = started.elapsed().as_secs_f64();
    let s = &blob.stats;
    println!("wall_seconds={wall:.3}");
    println!("entries={}", s.entries);
    println!("uncompressed_bytes={}", blob.uncompressed_size);
    println!("compressed_bytes={}", blob.descriptor.size);
    println!("digest={}", blob.descriptor.digest);
    println!("diff_id={}", blob.diff_id);
    println!(
        "stages=walk {:.2}s, read {:.2}s, tar {:.2}s, hash {:.2}s, compress {:.2}s (cpu), producer stalled {:.2}s, layer total {:.2}s",
        s.walk.as_secs_f64(),
        s.read.as_secs_f64(),
        s.tar.as_secs_f64(),
        s.hash.as_secs_f64(),
        s.compress.as_secs_f64(),
        s.stalled.as_secs_f64(),
        s.total.as_secs_f64()
    );
    if let Some(file) = blob.file() {
        std::fs::remove_file(file)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().map_err(Into::into).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("build_layer: {e}");
            ExitCode::FAILURE
        }
    }
}
