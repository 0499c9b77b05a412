//! The compression pipeline: the tar stream is cut into fixed 1 MiB blocks that worker threads
//! compress independently, each into a complete gzip member or zstd frame. Concatenated
//! members (RFC 1952) and frames (RFC 8878) decode as one stream, so the blob is valid for
//! every reader, and the output is the same whatever the number of threads.
//!
//! Memory stays bounded: a fixed pool of block buffers circulates producer → workers →
//! writer → producer, so at most `slots` blocks exist at any time.
//!
//! ```text
//! producer (tar, diffID hash) ──work──▶ workers (compress) ──done──▶ writer (order, digest, file)
//!        ▲                                                                 │
//!        └──────────────────────────── free buffers ◀─────────────────────┘
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libdeflater::{CompressionLvl, Compressor};

use super::{Compression, LayerError};
use crate::oci::{Digest, Sha256};

/// Uncompressed bytes per block: large enough that the lost cross-block dictionary costs
/// well under 1% of ratio, small enough to keep both cores busy on small layers.
pub const BLOCK_SIZE: usize = 1 << 20;

/// More workers than this buy little and would grow the buffer pool past the memory budget
/// (each worker keeps two 1 MiB blocks and their compressed copies in flight).
const MAX_WORKERS: usize = 16;

/// What the pipeline measured and produced.
#[derive(Debug, Default)]
pub struct Output {
    pub diff_id: Option<Digest>,
    pub digest: Option<Digest>,
    pub uncompressed: u64,
    pub compressed: u64,
    pub read: Duration,
    pub hash: Duration,
    pub compress: Duration,
    pub stalled: Duration,
}

/// Bytes per segment of the compressed copy handed to a [`Tee`]'s receiver.
pub const SEGMENT_SIZE: usize = 1 << 20;

/// A copy of the compressed blob, in segments of at least [`SEGMENT_SIZE`] bytes (the last one
/// shorter), for an upload that runs while the layer is written. When the receiver goes away
/// the copy stops; the blob file is written regardless. A full channel makes the writer wait,
/// so memory stays bounded by the channel's capacity.
pub struct Tee {
    sender: Option<tokio::sync::mpsc::Sender<Bytes>>,
    pending: BytesMut,
}

impl Tee {
    pub fn new(sender: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        Self {
            sender: Some(sender),
            pending: BytesMut::new(),
        }
    }

    fn copy(&mut self, bytes: &[u8]) {
        if self.sender.is_none() {
            return;
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= SEGMENT_SIZE {
            self.send();
        }
    }

    fn finish(mut self) {
        if !self.pending.is_empty() {
            self.send();
        }
    }

    /// Runs on the writer thread, never inside the async runtime: `blocking_send` may wait.
    fn send(&mut self) {
        let segment = self.pending.split().freeze();
        if let Some(sender) = &self.sender
            && sender.blocking_send(segment).is_err()
        {
            self.sender = None;
            self.pending = BytesMut::new();
        }
    }
}

/// Runs `produce` into a [`Sink`] that only hashes: the diffID and size of the tar stream,
/// with no compression and nothing written, in one block buffer on this thread.
pub fn hash_only<F>(produce: F) -> Result<Output, LayerError>
where
    F: FnOnce(&mut Sink) -> Result<(), LayerError>,
{
    let (free_tx, free_rx) = channel();
    let _ = free_tx.send(Slot::new());
    let mut sink = Sink::new(free_rx, None);
    sink.recycle = Some(free_tx);
    produce(&mut sink)?;
    sink.flush()?;
    Ok(sink.into_output())
}

/// Runs `produce` (which writes the tar stream into a [`Sink`]) with `workers` compression
/// threads, writing the compressed blob to `out` (and a copy to `tee`, if any).
pub fn run<F>(
    compression: Compression,
    workers: usize,
    out: &mut File,
    tee: Option<Tee>,
    produce: F,
) -> Result<Output, LayerError>
where
    F: FnOnce(&mut Sink) -> Result<(), LayerError>,
{
    let workers = workers.clamp(1, MAX_WORKERS);
    let slots = workers * 2 + 2;
    let (free_tx, free_rx) = channel();
    for _ in 0..slots {
        let _ = free_tx.send(Slot::new());
    }
    let (work_tx, work_rx) = channel::<Slot>();
    let (done_tx, done_rx) = channel::<Result<Slot, LayerError>>();
    let work_rx = Mutex::new(work_rx);

    thread::scope(|scope| {
        let compressors: Vec<_> = (0..workers)
            .map(|_| {
                let done_tx = done_tx.clone();
                let work_rx = &work_rx;
                scope.spawn(move || compress_blocks(compression, work_rx, done_tx))
            })
            .collect();
        drop(done_tx);
        let writer = scope.spawn(move || write_blocks(done_rx, free_tx, out, tee));

        let mut sink = Sink::new(free_rx, Some(work_tx));
        let produced = produce(&mut sink).and_then(|()| sink.flush());
        let producer_starved = sink.stopped;
        let mut output = sink.into_output();

        let mut compress = Duration::ZERO;
        for handle in compressors {
            compress += handle.join().unwrap_or_default();
        }
        let written = writer.join().unwrap_or_else(|_| {
            Err(LayerError::Internal(
                "the layer writer thread panicked".into(),
            ))
        });
        let written = match (produced, written) {
            // The producer only stopped because the writer or a worker failed: report that.
            (Err(_), Err(cause)) if producer_starved => return Err(cause),
            (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
            (Ok(()), Ok(written)) => written,
        };
        output.compress = compress;
        output.hash += written.hash;
        output.compressed = written.bytes;
        output.digest = Some(written.digest);
        Ok(output)
    })
}

/// One circulating block buffer.
struct Slot {
    seq: u64,
    data: Box<[u8]>,
    len: usize,
    compressed: Vec<u8>,
}

impl Slot {
    fn new() -> Self {
        Self {
            seq: 0,
            data: vec![0; BLOCK_SIZE].into_boxed_slice(),
            len: 0,
            compressed: Vec::new(),
        }
    }
}

/// Where the producer writes the tar stream; cuts it into blocks and hashes it (the diffID).
pub struct Sink {
    slot: Option<Slot>,
    next_seq: u64,
    free: Receiver<Slot>,
    work: Option<Sender<Slot>>,
    diff: Sha256,
    output: Output,
    /// Set when the rest of the pipeline went away under the producer.
    stopped: bool,
    /// Hashing only: each block goes straight back to the free list.
    recycle: Option<Sender<Slot>>,
}

impl Sink {
    fn new(free: Receiver<Slot>, work: Option<Sender<Slot>>) -> Self {
        Self {
            slot: None,
            next_seq: 0,
            free,
            work,
            recycle: None,
            diff: Sha256::default(),
            output: Output::default(),
            stopped: false,
        }
    }

    /// Appends `bytes` to the stream.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), LayerError> {
        while !bytes.is_empty() {
            let slot = self.current()?;
            let n = bytes.len().min(BLOCK_SIZE - slot.len);
            slot.data[slot.len..slot.len + n].copy_from_slice(&bytes[..n]);
            slot.len += n;
            bytes = &bytes[n..];
            self.dispatch_if_full()?;
        }
        Ok(())
    }

    /// Appends `size` zero bytes.
    pub fn write_zeros(&mut self, size: usize) -> Result<(), LayerError> {
        const ZEROS: [u8; 1024] = [0; 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(ZEROS.len());
            self.write(&ZEROS[..n])?;
            left -= n;
        }
        Ok(())
    }

    /// Reads up to `size` bytes from `reader` straight into the block buffers; returns how
    /// many were read (fewer only at end of file).
    pub fn copy_from(&mut self, reader: &mut impl Read, size: u64) -> std::io::Result<u64> {
        let mut copied = 0;
        while copied < size {
            let slot = self.current().map_err(std::io::Error::other)?;
            let room = (BLOCK_SIZE - slot.len) as u64;
            let end = slot.len + room.min(size - copied) as usize;
            let started = Instant::now();
            let n = reader.read(&mut slot.data[slot.len..end])?;
            self.output.read += started.elapsed();
            if n == 0 {
                break;
            }
            if let Some(slot) = self.slot.as_mut() {
                slot.len += n;
            }
            copied += n as u64;
            self.dispatch_if_full().map_err(std::io::Error::other)?;
        }
        Ok(copied)
    }

    /// Sends the last, partial block.
    fn flush(&mut self) -> Result<(), LayerError> {
        if self.slot.as_ref().is_some_and(|s| s.len > 0) {
            self.dispatch()?;
        }
        self.work = None;
        Ok(())
    }

    fn into_output(mut self) -> Output {
        self.work = None;
        let diff = std::mem::take(&mut self.diff);
        let mut output = std::mem::take(&mut self.output);
        output.diff_id = Some(diff.finish());
        output
    }

    fn current(&mut self) -> Result<&mut Slot, LayerError> {
        if self.slot.is_none() {
            let started = Instant::now();
            let Ok(mut slot) = self.free.recv() else {
                self.stopped = true;
                return Err(stopped());
            };
            self.output.stalled += started.elapsed();
            slot.len = 0;
            slot.seq = self.next_seq;
            self.next_seq += 1;
            self.slot = Some(slot);
        }
        self.slot.as_mut().ok_or_else(stopped)
    }

    fn dispatch_if_full(&mut self) -> Result<(), LayerError> {
        if self.slot.as_ref().is_some_and(|s| s.len == BLOCK_SIZE) {
            self.dispatch()?;
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Result<(), LayerError> {
        let slot = self.slot.take().ok_or_else(stopped)?;
        let started = Instant::now();
        self.diff.update(&slot.data[..slot.len]);
        self.output.hash += started.elapsed();
        self.output.uncompressed += slot.len as u64;
        if let Some(recycle) = &self.recycle {
            return recycle.send(slot).map_err(|_| stopped());
        }
        let work = self.work.as_ref().ok_or_else(stopped)?;
        if work.send(slot).is_err() {
            self.stopped = true;
            return Err(stopped());
        }
        Ok(())
    }
}

fn stopped() -> LayerError {
    LayerError::Internal("the compression pipeline stopped".into())
}

/// A worker: compresses blocks until the producer is done; returns its busy time.
fn compress_blocks(
    compression: Compression,
    work: &Mutex<Receiver<Slot>>,
    done: Sender<Result<Slot, LayerError>>,
) -> Duration {
    let guard = PanicReport(&done);
    let mut codec = match Codec::new(compression) {
        Ok(codec) => codec,
        Err(e) => {
            let _ = done.send(Err(e));
            return Duration::ZERO;
        }
    };
    let mut busy = Duration::ZERO;
    loop {
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => break,
        };
        let Ok(mut slot) = next else { break };
        let started = Instant::now();
        let result = codec
            .compress(&slot.data[..slot.len], &mut slot.compressed)
            .map(|()| slot);
        busy += started.elapsed();
        if done.send(result).is_err() {
            break;
        }
    }
    drop(guard);
    busy
}

/// Tells the writer when a worker dies by panic, so nobody waits for its block forever.
struct PanicReport<'a>(&'a Sender<Result<Slot, LayerError>>);

impl Drop for PanicReport<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = self.0.send(Err(LayerError::Internal(
                "a compression thread panicked".into(),
            )));
        }
    }
}

struct Written {
    digest: Digest,
    bytes: u64,
    hash: Duration,
}

/// The writer: puts compressed blocks back in order, hashes and writes them, and returns
/// their buffers to the pool.
fn write_blocks(
    done: Receiver<Result<Slot, LayerError>>,
    free: Sender<Slot>,
    out: &mut File,
    mut tee: Option<Tee>,
) -> Result<Written, LayerError> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut digest = Sha256::default();
    let mut written = 0u64;
    let mut hash = Duration::ZERO;
    for result in done {
        let slot = result?;
        pending.insert(slot.seq, slot);
        while let Some(slot) = pending.remove(&next) {
            let started = Instant::now();
            digest.update(&slot.compressed);
            hash += started.elapsed();
            out.write_all(&slot.compressed)
                .map_err(|source| LayerError::Write { source })?;
            if let Some(tee) = tee.as_mut() {
                tee.copy(&slot.compressed);
            }
            written += slot.compressed.len() as u64;
            next += 1;
            // The producer may have finished; then nobody needs the buffer back.
            let _ = free.send(slot);
        }
    }
    if let Some(tee) = tee {
        tee.finish();
    }
    Ok(Written {
        digest: digest.finish(),
        bytes: written,
        hash,
    })
}

/// A per-thread compressor.
enum Codec {
    Gzip(GzipCodec),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Codec {
    fn new(compression: Compression) -> Result<Self, LayerError> {
        match compression {
            Compression::Gzip { level } => Ok(Self::Gzip(GzipCodec::new(level)?)),
            Compression::Zstd { level } => zstd::bulk::Compressor::new(level)
                .map(|c| Self::Zstd(Box::new(c)))
                .map_err(|e| LayerError::Compress(format!("zstd level {level}: {e}"))),
        }
    }

    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), LayerError> {
        match self {
            Self::Gzip(gzip) => gzip.compress(input, out),
            Self::Zstd(zstd) => {
                out.resize(zstd::zstd_safe::compress_bound(input.len()), 0);
                let n = zstd
                    .compress_to_buffer(input, &mut out[..])
                    .map_err(|e| LayerError::Compress(e.to_string()))?;
                out.truncate(n);
                Ok(())
            }
        }
    }
}

/// Gzip members with libdeflate; blocks that look incompressible are stored, not searched.
struct GzipCodec {
    main: Compressor,
    probe: Compressor,
    stored: Compressor,
    probe_out: Vec<u8>,
}

/// Bytes per probe window and the number of windows spread over a block.
const PROBE_WINDOW: usize = 16 << 10;
const PROBE_WINDOWS: usize = 4;

impl GzipCodec {
    fn new(level: u32) -> Result<Self, LayerError> {
        let lvl = |l: u32| {
            i32::try_from(l)
                .ok()
                .and_then(|l| CompressionLvl::new(l).ok())
                .ok_or_else(|| LayerError::Compress(format!("gzip level {l} is not in 0..=12")))
        };
        Ok(Self {
            main: Compressor::new(lvl(level)?),
            probe: Compressor::new(lvl(1)?),
            stored: Compressor::new(lvl(0)?),
            probe_out: vec![0; PROBE_WINDOW * 2],
        })
    }

    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), LayerError> {
        let compressor = if self.looks_incompressible(input) {
            &mut self.stored
        } else {
            &mut self.main
        };
        out.resize(compressor.gzip_compress_bound(input.len()), 0);
        let n = compressor
            .gzip_compress(input, out)
            .map_err(|e| LayerError::Compress(format!("{e:?}")))?;
        out.truncate(n);
        Ok(())
    }

    /// Whether a fast deflate of a few windows spread over the block saves under 3% in every
    /// window (already compressed media, archives, random data). The decision depends only on
    /// the bytes, so it is the same on every machine.
    fn looks_incompressible(&mut self, input: &[u8]) -> bool {
        if input.len() < PROBE_WINDOW * PROBE_WINDOWS {
            return false;
        }
        let step = (input.len() - PROBE_WINDOW) / (PROBE_WINDOWS - 1);
        (0..PROBE_WINDOWS).all(|i| {
            let window = &input[i * step..i * step + PROBE_WINDOW];
            match self.probe.deflate_compress(window, &mut self.probe_out) {
                Ok(n) => n * 100 > PROBE_WINDOW * 97,
                Err(_) => true,
            }
        })
    }
}
