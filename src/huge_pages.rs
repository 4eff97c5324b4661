//! Moves the server's machine code onto 2 MiB pages at start-up.
//!
//! At light load (a few calls a second) each offer runs through code that
//! the idle gaps between calls have pushed out of the CPU's caches and
//! TLBs. The path from a gateway frame to an offer touches hundreds of
//! distinct 4 KiB pages of code, and on a VM every TLB miss is a two-level
//! page walk. With the code on 2 MiB pages a handful of TLB entries cover
//! it; the light-load offer latency's ratio to a bare round trip dropped
//! by 9-17% in seven paired runs (docs/benchmarks.md, "2026-12-05,
//! mid-morning"). The heap is on 2 MiB pages already (mimalloc asks for
//! them).
//!
//! Linux maps an executable's code from the page cache in 4 KiB pages
//! unless the kernel was built with `CONFIG_READ_ONLY_THP_FOR_FS`, which
//! most are not; anonymous memory can use transparent huge pages. So the
//! whole 2 MiB pages inside the code segment are copied to anonymous
//! memory advised `MADV_HUGEPAGE`, made read-and-execute, and moved over
//! the original with one `mremap`: the code keeps its addresses, so
//! function pointers, backtraces and symbols are unchanged. Profilers that
//! read `/proc/<pid>/maps` (`perf`) see that range as anonymous and cannot
//! name its functions: set `server.huge_code_pages = false` to profile.
//!
//! Done once, before the runtime starts any thread. (Another thread would
//! be safe too: the copy is byte for byte, and a thread that executes in
//! the range while `mremap` swaps it faults and waits for the swap.)

/// The size of a transparent huge page on x86-64 Linux.
pub const HUGE_PAGE: usize = 2 << 20;

/// What [`move_code`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Start of the range moved (a multiple of [`HUGE_PAGE`]).
    pub start: usize,
    /// Bytes of code moved (a multiple of [`HUGE_PAGE`]).
    pub bytes: usize,
    /// Of those, bytes the kernel backs with huge pages now
    /// (`AnonHugePages`); less than `bytes` if it had no free 2 MiB pages.
    pub huge_bytes: usize,
}

/// Why the code stays where it is. The server runs the same either way.
#[derive(Debug, thiserror::Error)]
pub enum NotMoved {
    #[error("only done on x86-64 Linux")]
    Unsupported,
    #[error("transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled is [never])")]
    HugePagesOff,
    #[error("the code segment holds no whole 2 MiB page")]
    TooSmall,
    #[error("cannot find the code segment in /proc/self/maps")]
    NotFound,
    #[error("cannot read {path}: {source}")]
    Read { path: &'static str, source: std::io::Error },
    #[error("{call} failed: {source}")]
    Call { call: &'static str, source: std::io::Error },
}

/// The `start..end` of the mapping in `maps` (the text of
/// `/proc/self/maps`) that contains `addr`, if it is executable and
/// private.
pub fn code_mapping(maps: &str, addr: usize) -> Option<(usize, usize)> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let executable = perms.as_bytes().get(2) == Some(&b'x') && perms.as_bytes().get(3) == Some(&b'p');
        (executable && (start..end).contains(&addr)).then_some((start, end))
    })
}

/// The whole huge pages inside `start..end`.
pub fn huge_range(start: usize, end: usize) -> Option<(usize, usize)> {
    let first = start.checked_next_multiple_of(HUGE_PAGE)?;
    let last = end - end % HUGE_PAGE;
    (last > first).then_some((first, last))
}

/// `AnonHugePages` of the mapping that starts at `start`, in bytes, from
/// the text of `/proc/self/smaps`.
pub fn anon_huge_bytes(smaps: &str, start: usize) -> Option<usize> {
    let head = format!("{start:x}-");
    smaps
        .lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| l.split_whitespace().next().is_some_and(|f| f.ends_with(':')))
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kib| kib * 1024)
}

fn read(path: &'static str) -> Result<String, NotMoved> {
    std::fs::read_to_string(path).map_err(|source| NotMoved::Read { path, source })
}

/// Moves this program's code onto huge pages; see the module comment.
pub fn move_code() -> Result<Moved, NotMoved> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(NotMoved::Unsupported);
    }
    if read("/sys/kernel/mm/transparent_hugepage/enabled")?.contains("[never]") {
        return Err(NotMoved::HugePagesOff);
    }
    let here = move_code as fn() -> Result<Moved, NotMoved> as usize;
    let (start, end) = code_mapping(&read("/proc/self/maps")?, here).ok_or(NotMoved::NotFound)?;
    let (first, last) = huge_range(start, end).ok_or(NotMoved::TooSmall)?;
    sys::move_range(first, last - first)?;
    let huge_bytes = anon_huge_bytes(&read("/proc/self/smaps")?, first).unwrap_or(0);
    Ok(Moved { start: first, bytes: last - first, huge_bytes })
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod sys {
    use super::{HUGE_PAGE, NotMoved};

    fn failed(call: &'static str) -> NotMoved {
        NotMoved::Call { call, source: std::io::Error::last_os_error() }
    }

    /// Replaces `len` bytes of code at `at` (both multiples of
    /// [`HUGE_PAGE`], inside this process's executable mapping) with a
    /// copy on huge pages. On failure the original mapping is untouched.
    pub fn move_range(at: usize, len: usize) -> Result<(), NotMoved> {
        // SAFETY: a fresh anonymous mapping that nothing else refers to;
        // every failure below unmaps it before returning.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(failed("mmap"));
        }
        // Only a 2 MiB-aligned range can hold 2 MiB pages (and keep them
        // when moved to `at`): trim the reservation to one.
        let raw = raw as usize;
        let copy = raw.next_multiple_of(HUGE_PAGE);
        let tail = raw + len + HUGE_PAGE - (copy + len);
        // SAFETY: both pieces lie inside the reservation above and outside
        // `copy..copy + len`.
        unsafe {
            if copy > raw {
                libc::munmap(raw as *mut libc::c_void, copy - raw);
            }
            if tail > 0 {
                libc::munmap((copy + len) as *mut libc::c_void, tail);
            }
        }
        let dst = copy as *mut libc::c_void;
        // SAFETY: `dst..dst + len` is the trimmed anonymous mapping, and
        // `at..at + len` is mapped readable (the caller found it in
        // /proc/self/maps) and does not overlap it. The copy is made
        // executable only once complete, and `mremap` swaps it in whole.
        unsafe {
            let undo = |call| {
                let e = failed(call);
                libc::munmap(dst, len);
                Err(e)
            };
            if libc::madvise(dst, len, libc::MADV_HUGEPAGE) != 0 {
                return undo("madvise");
            }
            std::ptr::copy_nonoverlapping(at as *const u8, copy as *mut u8, len);
            if libc::mprotect(dst, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                return undo("mprotect");
            }
            let moved = libc::mremap(dst, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, at as *mut libc::c_void);
            if moved == libc::MAP_FAILED {
                return undo("mremap");
            }
        }
        Ok(())
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod sys {
    use super::NotMoved;

    pub fn move_range(_at: usize, _len: usize) -> Result<(), NotMoved> {
        Err(NotMoved::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0185000 r--p 00000000 fe:01 1234 /usr/bin/ringline
55d0c0185000-55d0c08ad000 r-xp 00185000 fe:01 1234 /usr/bin/ringline
55d0c08ad000-55d0c08cd000 rw-p 008ad000 fe:01 1234 /usr/bin/ringline
7f0000000000-7f0000200000 r-xs 00000000 00:00 0 /dev/zero
";

    #[test]
    fn the_code_mapping_is_the_executable_private_one_holding_the_address() {
        assert_eq!(code_mapping(MAPS, 0x55d0c0200000), Some((0x55d0c0185000, 0x55d0c08ad000)));
        // Readable but not executable; executable but shared; unmapped.
        assert_eq!(code_mapping(MAPS, 0x55d0c0000100), None);
        assert_eq!(code_mapping(MAPS, 0x7f0000000100), None);
        assert_eq!(code_mapping(MAPS, 0x1000), None);
        assert_eq!(code_mapping("garbage\n\n1-2\n", 1), None);
    }

    #[test]
    fn only_whole_huge_pages_are_moved() {
        assert_eq!(huge_range(0x55d0c0185000, 0x55d0c08ad000), Some((0x55d0c0200000, 0x55d0c0800000)));
        assert_eq!(huge_range(0x200000, 0x400000), Some((0x200000, 0x400000)));
        assert_eq!(huge_range(0x201000, 0x5ff000), None);
        assert_eq!(huge_range(0x1000, 0x3000), None);
        assert_eq!(huge_range(usize::MAX - 10, usize::MAX), None);
    }

    #[test]
    fn huge_bytes_are_read_from_the_mappings_own_lines() {
        let smaps = "\
200000-400000 r-xp 00000000 00:00 0
Size:               2048 kB
AnonHugePages:         0 kB
600000-a00000 r-xp 00000000 00:00 0
Size:               4096 kB
Rss:                4096 kB
AnonHugePages:      4096 kB
VmFlags: rd ex mr mw me hg
a00000-b00000 rw-p 00000000 00:00 0
AnonHugePages:      1024 kB
";
        assert_eq!(anon_huge_bytes(smaps, 0x600000), Some(4 << 20));
        assert_eq!(anon_huge_bytes(smaps, 0x200000), Some(0));
        assert_eq!(anon_huge_bytes(smaps, 0x800000), None);
    }
}
