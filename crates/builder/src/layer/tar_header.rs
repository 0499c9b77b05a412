//! Deterministic tar headers: GNU format, uid/gid 0, empty owner names, the given mtime, and
//! GNU long-name records (`././@LongLink`) for names and link targets over 100 bytes.

use tar::{EntryType, Header};

/// Size of a tar block; headers and padded data are multiples of it.
pub const BLOCK: usize = 512;
/// What ends every tar stream: two zero blocks.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Room in the header's name and link name fields.
const NAME_FIELD: usize = 100;

/// The kind of entry a header introduces.
#[derive(Debug, Clone, Copy)]
pub enum HeaderKind<'a> {
    Directory,
    File { size: u64 },
    Symlink { target: &'a str },
}

/// Appends the header block(s) for one entry to `out`. Directory names get a trailing `/`.
pub fn encode(out: &mut Vec<u8>, path: &str, kind: HeaderKind<'_>, mode: u32, mtime: u64) {
    let name = match kind {
        HeaderKind::Directory => format!("{path}/"),
        _ => path.to_owned(),
    };
    if name.len() > NAME_FIELD {
        long_name_record(out, EntryType::GNULongName, &name);
    }
    let mut header = Header::new_gnu();
    copy_truncated(&mut header.as_old_mut().name, &name);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    match kind {
        HeaderKind::Directory => {
            header.set_entry_type(EntryType::Directory);
            header.set_size(0);
        }
        HeaderKind::File { size } => {
            header.set_entry_type(EntryType::Regular);
            header.set_size(size);
        }
        HeaderKind::Symlink { target } => {
            if target.len() > NAME_FIELD {
                long_name_record(out, EntryType::GNULongLink, target);
            }
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            copy_truncated(&mut header.as_old_mut().linkname, target);
        }
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
}

/// Zero bytes that pad `size` bytes of data to a whole block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// A GNU `L` (long name) or `K` (long link target) record: a header then the NUL-terminated
/// value, padded to a block.
fn long_name_record(out: &mut Vec<u8>, kind: EntryType, value: &str) {
    let mut header = Header::new_gnu();
    copy_truncated(&mut header.as_old_mut().name, "././@LongLink");
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(value.len() as u64 + 1);
    header.set_entry_type(kind);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    out.resize(out.len() + padding(value.len() as u64 + 1), 0);
}

fn copy_truncated(field: &mut [u8], value: &str) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value.as_bytes()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Vec<(String, Option<String>, u32, u64)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    String::from_utf8(e.path_bytes().into_owned()).expect("utf8"),
                    e.link_name_bytes()
                        .map(|l| String::from_utf8(l.into_owned()).expect("utf8")),
                    h.mode().expect("mode"),
                    h.mtime().expect("mtime"),
                )
            })
            .collect()
    }

    #[test]
    fn names_and_link_targets_over_100_bytes_survive_a_round_trip() {
        let long_dir = format!("{}/{}", "d".repeat(90), "e".repeat(90));
        let long_target = format!("/{}", "t".repeat(150));
        let mut out = Vec::new();
        encode(&mut out, &long_dir, HeaderKind::Directory, 0o755, 7);
        encode(
            &mut out,
            "link",
            HeaderKind::Symlink {
                target: &long_target,
            },
            0o777,
            7,
        );
        out.extend_from_slice(&END_OF_ARCHIVE);
        let entries = parse(&out);
        assert_eq!(entries[0].0, format!("{long_dir}/"));
        assert_eq!(entries[1].1.as_deref(), Some(long_target.as_str()));
        assert_eq!(entries[1].2, 0o777);
        assert_eq!(entries[1].3, 7);
    }

    #[test]
    fn owner_is_root_with_empty_names() {
        let mut out = Vec::new();
        encode(&mut out, "f", HeaderKind::File { size: 0 }, 0o644, 0);
        let header = Header::from_byte_slice(&out[..BLOCK]);
        assert_eq!(header.uid().expect("uid"), 0);
        assert_eq!(header.gid().expect("gid"), 0);
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.groupname_bytes(), Some(&b""[..]));
    }

    #[test]
    fn padding_completes_a_block() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}
