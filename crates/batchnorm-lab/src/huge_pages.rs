//! Buffers on transparent huge pages, for `bnlab bench --huge-pages`.
//!
//! A tensor of tens of megabytes on 4 KiB pages spans thousands of pages, and every pass over it
//! walks them all through the TLB. The two-pass kernels (training forward, backward) make more
//! such walks than a copy of the same bytes does, so they pay more for small pages: on the
//! 2-core benchmark machine the 64x64x56x56 channels-last backward took 14% less time on 2 MiB
//! pages on two threads and 28% less on one, `c = a + b` 6% and 16% less (docs/benchmarks.md).
//! Linux backs an anonymous mapping with 2 MiB pages when the mapping is marked with
//! `madvise(MADV_HUGEPAGE)` before its pages are first touched and transparent huge pages are not
//! disabled (`/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`).

use std::io;

/// The size of a transparent huge page on x86-64 and on most aarch64 kernels.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Where the kernel says whether transparent huge pages may be used.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Checks that this machine can back memory with transparent huge pages: Linux, with them not
/// disabled. An error says why not.
///
/// # Errors
/// Another OS, an unreadable setting, or the setting `never`.
pub fn check_available() -> io::Result<()> {
    if !cfg!(target_os = "linux") {
        return Err(not_linux());
    }
    let setting = std::fs::read_to_string(THP_ENABLED)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {THP_ENABLED}: {e}")))?;
    setting_allows(&setting)
}

/// Whether the contents of [`THP_ENABLED`] (the choices, the current one in brackets:
/// `always [madvise] never`) let `madvise` give huge pages: any choice but `never`.
///
/// # Errors
/// The setting `never`, or no choice in brackets.
fn setting_allows(setting: &str) -> io::Result<()> {
    let chosen = setting
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
    match chosen {
        Some("always" | "madvise") => Ok(()),
        Some(_) => Err(io::Error::other(format!(
            "transparent huge pages are disabled on this machine ({THP_ENABLED}: {})",
            setting.trim()
        ))),
        None => Err(io::Error::other(format!(
            "{THP_ENABLED} names no current setting: {:?}",
            setting.trim()
        ))),
    }
}

/// `len` values `value(i)` in a vector whose whole 2 MiB pages were marked for huge pages before
/// anything was written to them (a vector shorter than two huge pages may get none: only the
/// whole pages inside it can be huge).
///
/// # Errors
/// The `madvise` call failed (another OS: [`io::ErrorKind::Unsupported`]).
pub fn vec_on_huge_pages(len: usize, value: impl Fn(usize) -> f32) -> io::Result<Vec<f32>> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let start = v.as_ptr() as usize;
    let inside = whole_pages_inside(start, len * size_of::<f32>());
    if inside > 0 {
        advise_huge(start.next_multiple_of(HUGE_PAGE_BYTES), inside)?;
    }
    v.extend((0..len).map(value));
    Ok(v)
}

/// Bytes of whole huge pages inside a buffer of `bytes` starting at `start`: what
/// [`vec_on_huge_pages`] can put on them.
pub fn whole_pages_inside(start: usize, bytes: usize) -> usize {
    let first = start.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (start + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    end.saturating_sub(first)
}

/// Bytes of this process's memory on transparent huge pages (`AnonHugePages` of
/// `/proc/self/smaps_rollup`): the kernel may fall back to small pages silently (memory too
/// fragmented), so a caller that asked for huge pages can check what it got.
///
/// # Errors
/// The file cannot be read or holds no such line (another OS, an old kernel).
pub fn process_huge_bytes() -> io::Result<usize> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no AnonHugePages line in /proc/self/smaps_rollup"))
}

/// Marks `bytes` from the page-aligned address `at` for transparent huge pages.
#[cfg(target_os = "linux")]
fn advise_huge(at: usize, bytes: usize) -> io::Result<()> {
    // SAFETY: `at..at + bytes` lies inside the capacity of a live vector (the caller's), whose
    // allocation is an anonymous private mapping or heap memory; MADV_HUGEPAGE only changes how
    // the kernel backs it, never its contents, and `at` is aligned to a page as madvise requires.
    let rc = unsafe { libc::madvise(at as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_at: usize, _bytes: usize) -> io::Result<()> {
    Err(not_linux())
}

/// The error of asking for huge pages off Linux.
fn not_linux() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "huge pages are only supported on Linux (transparent huge pages through madvise)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_whatever_the_pages() {
        for len in [0, 1, 1000, HUGE_PAGE_BYTES + 7] {
            match vec_on_huge_pages(len, |i| i as f32 * 0.5) {
                Ok(v) => {
                    assert_eq!(v.len(), len);
                    assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
                }
                // Only where madvise is refused (another OS): an error, never wrong data.
                Err(e) => assert_eq!(
                    (cfg!(target_os = "linux"), e.kind()),
                    (false, io::ErrorKind::Unsupported),
                    "{e}"
                ),
            }
        }
    }

    #[test]
    fn whole_pages_are_those_inside_the_buffer() {
        let h = HUGE_PAGE_BYTES;
        assert_eq!(whole_pages_inside(h, 2 * h), 2 * h);
        assert_eq!(whole_pages_inside(h + 16, 2 * h), h);
        assert_eq!(whole_pages_inside(16, h), 0);
        assert_eq!(whole_pages_inside(h - 16, h + 32), h);
        assert_eq!(whole_pages_inside(0, 0), 0);
    }

    #[test]
    fn availability_follows_the_kernel_setting() {
        for on in [
            "[always] madvise never\n",
            "always [madvise] never",
            "always [madvise] never defer",
        ] {
            assert!(setting_allows(on).is_ok(), "{on}");
        }
        for off in ["always madvise [never]\n", "always madvise never", ""] {
            assert!(setting_allows(off).is_err(), "{off}");
        }
        let e = setting_allows("always madvise [never]").unwrap_err();
        assert!(e.to_string().contains("disabled"), "{e}");
        if !cfg!(target_os = "linux") {
            assert_eq!(
                check_available().unwrap_err().kind(),
                io::ErrorKind::Unsupported
            );
        }
    }
}
