//! Cache sizes of the machine, read once from sysfs (Linux); the kernels size their blocking
//! from them.

use std::sync::OnceLock;

/// Bytes of one core's L2 a channel's data may fill for its two passes to run from L2 (see
/// [`crate::plan::channel_cut`]): half the L2, leaving room for the lines prefetched ahead
/// and for other data; 256 KiB where the L2 cannot be read. The environment variable
/// `BATCHNORM_L2_BUDGET_BYTES`, read once, overrides it.
pub(crate) fn l2_budget_bytes() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| {
        let over = std::env::var("BATCHNORM_L2_BUDGET_BYTES").ok();
        over.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| level_bytes(|level| level == 2).map_or(256 << 10, |b| b / 2))
    })
}

/// The size of the last-level cache, if sysfs tells.
pub(crate) fn last_level_bytes() -> Option<usize> {
    level_bytes(|_| true)
}

/// The largest cache of cpu0 whose level satisfies `wanted`.
fn level_bytes(wanted: impl Fn(u32) -> bool) -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        let level = std::fs::read_to_string(path.join("level")).ok()?;
        if !wanted(level.trim().parse().ok()?) {
            return None;
        }
        parse_size(std::fs::read_to_string(path.join("size")).ok()?.trim())
    })
    .max()
}

/// `"2048K"` -> 2 MiB.
fn parse_size(size: &str) -> Option<usize> {
    let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
    let n: usize = digits.parse().ok()?;
    match unit {
        "K" => Some(n << 10),
        "M" => Some(n << 20),
        "G" => Some(n << 30),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("480M"), Some(480 << 20));
        assert_eq!(parse_size("12"), None);
        assert_eq!(parse_size("K"), None);
    }
}
