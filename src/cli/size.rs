//! Byte counts for people: decimal units for what is stored (as registries and `docker images`
//! show sizes), binary units for what is transferred (as progress lines usually show it).

/// Bytes as B, kB, MB or GB.
pub fn decimal(bytes: u64) -> String {
    scaled(bytes, 1000, ["kB", "MB", "GB"])
}

/// Bytes as B, KiB, MiB or GiB.
pub fn binary(bytes: u64) -> String {
    scaled(bytes, 1024, ["KiB", "MiB", "GiB"])
}

/// `bytes` in the largest of `units` (each `base` times the one before) that leaves at least 1.
fn scaled(bytes: u64, base: u64, units: [&str; 3]) -> String {
    if bytes < base {
        return format!("{bytes} B");
    }
    let base = base as f64;
    let mut size = bytes as f64 / base;
    let mut unit = units[0];
    for next in &units[1..] {
        // What would print as `1000.0 kB` (or `1024.0 KiB`) is one unit up.
        if size < base - 0.05 {
            break;
        }
        size /= base;
        unit = next;
    }
    format!("{size:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_sizes_are_decimal_and_transferred_sizes_binary() {
        assert_eq!(decimal(512), "512 B");
        assert_eq!(decimal(2_345_678), "2.3 MB");
        assert_eq!(decimal(999_999), "1.0 MB", "not 1000.0 kB");
        assert_eq!(binary(1000), "1000 B");
        assert_eq!(binary(12 << 20), "12.0 MiB");
        assert_eq!(binary(5 << 30), "5.0 GiB");
        assert_eq!(binary((1 << 20) - 1), "1.0 MiB", "not 1024.0 KiB");
    }
}
