//! The small WASI preview-1 implementation both engines share: exactly what a WAGI guest
//! needs, and a clean error for everything else.
//!
//! Each function works on the guest's linear memory as a byte slice and on [`GuestIo`];
//! the engines only adapt calling conventions. A guest gets stdin (the request body),
//! stdout (captured, capped), stderr (captured for the log, truncated), its argv and
//! environment, clocks, sleeps ([`poll`]) and random bytes, and read-only access to the
//! volumes its service was granted ([`files`]); with none, no file can be named. Sockets
//! and every other call answer `EBADF`, `ENOTCAPABLE` or `ENOSYS`.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use crate::abi::{ValKind, errno};
use crate::abi::{iovecs, slice, slice_mut, write_bytes, write_u32, write_u64};
pub use crate::host::{GuestIo, HostStop, STDERR_CAP};

pub mod files;
pub mod poll;

/// The import module name of WASI preview 1.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// How a WASI import is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provided {
    /// By a real implementation in [`GuestIo`].
    Implemented,
    /// By a stub that returns this errno (the import must return one `i32`).
    Stub(i32),
}

/// Calls `$m!(name(arg: type, ...))` for each implemented WASI function that returns an
/// errno and never suspends the guest; `proc_exit`, and `poll_oneoff`, which may put the
/// guest to sleep, are registered by each engine on its own. Each engine registers these
/// with one macro, so the list of host functions exists once.
macro_rules! for_each_function {
    ($m:ident) => {
        $m!(args_get(argv: i32, buf: i32));
        $m!(args_sizes_get(argc: i32, size: i32));
        $m!(environ_get(environ: i32, buf: i32));
        $m!(environ_sizes_get(count: i32, size: i32));
        $m!(clock_res_get(id: i32, out: i32));
        $m!(clock_time_get(id: i32, precision: i64, out: i32));
        $m!(fd_close(fd: i32));
        $m!(fd_fdstat_get(fd: i32, out: i32));
        $m!(fd_filestat_get(fd: i32, out: i32));
        $m!(fd_prestat_get(fd: i32, out: i32));
        $m!(fd_prestat_dir_name(fd: i32, path: i32, len: i32));
        $m!(fd_pread(fd: i32, iovs: i32, iovs_len: i32, offset: i64, out: i32));
        $m!(fd_read(fd: i32, iovs: i32, iovs_len: i32, out: i32));
        $m!(fd_readdir(fd: i32, buf: i32, buf_len: i32, cookie: i64, out: i32));
        $m!(fd_seek(fd: i32, offset: i64, whence: i32, out: i32));
        $m!(fd_tell(fd: i32, out: i32));
        $m!(fd_write(fd: i32, iovs: i32, iovs_len: i32, out: i32));
        $m!(path_filestat_get(fd: i32, flags: i32, path: i32, path_len: i32, out: i32));
        $m!(path_open(
            fd: i32,
            dirflags: i32,
            path: i32,
            path_len: i32,
            oflags: i32,
            rights_base: i64,
            rights_inheriting: i64,
            fdflags: i32,
            out: i32
        ));
        $m!(random_get(buf: i32, len: i32));
        $m!(sched_yield());
    };
}
#[allow(unused_imports)]
pub(crate) use for_each_function;

macro_rules! kind {
    (i32) => {
        ValKind::I32
    };
    (i64) => {
        ValKind::I64
    };
}

/// The `(params, results)` of an implemented WASI function.
pub fn signature(name: &str) -> Option<(&'static [ValKind], &'static [ValKind])> {
    match name {
        "proc_exit" => return Some((&[ValKind::I32], &[])),
        "poll_oneoff" => return Some((&[ValKind::I32; 4], &[ValKind::I32])),
        _ => {}
    }
    macro_rules! check {
        ($f:ident($($a:ident: $t:ident),*)) => {
            if name == stringify!($f) {
                return Some((&[$(kind!($t)),*], &[ValKind::I32]));
            }
        };
    }
    for_each_function!(check);
    None
}

/// How the WASI import `name` is provided: for real, or by a stub with a fitting errno.
pub fn provided(name: &str) -> Provided {
    if signature(name).is_some() {
        Provided::Implemented
    } else if name.starts_with("fd_") {
        Provided::Stub(errno::BADF)
    } else if name.starts_with("path_") || name.starts_with("sock_") {
        Provided::Stub(errno::NOTCAPABLE)
    } else {
        Provided::Stub(errno::NOSYS)
    }
}

/// Checks a function import from [`MODULE`] against what is provided. `None` in a type
/// list stands for a value type WASI never uses.
pub fn check_import(
    name: &str,
    params: &[Option<ValKind>],
    results: &[Option<ValKind>],
) -> Result<Provided, String> {
    let provided = provided(name);
    let fits = match (provided, signature(name)) {
        (Provided::Implemented, Some((p, r))) => {
            params.iter().copied().eq(p.iter().copied().map(Some))
                && results.iter().copied().eq(r.iter().copied().map(Some))
        }
        // A stub answers any arguments with an errno, so it only needs the errno result.
        _ => results == [Some(ValKind::I32)],
    };
    if fits {
        Ok(provided)
    } else {
        Err(format!(
            "{MODULE}::{name} has a signature WASI preview 1 does not define"
        ))
    }
}

impl GuestIo {
    /// `args_sizes_get(argc_out, buf_size_out)`.
    pub fn args_sizes_get(
        &mut self,
        mem: &mut [u8],
        argc: i32,
        size: i32,
    ) -> Result<i32, HostStop> {
        Ok(sizes(mem, argc, size, self.argc, self.args.len()))
    }

    /// `args_get(argv_out, buf_out)`.
    pub fn args_get(&mut self, mem: &mut [u8], argv: i32, buf: i32) -> Result<i32, HostStop> {
        Ok(strings(mem, argv, buf, &self.args))
    }

    /// `environ_sizes_get(count_out, buf_size_out)`.
    pub fn environ_sizes_get(
        &mut self,
        mem: &mut [u8],
        count: i32,
        size: i32,
    ) -> Result<i32, HostStop> {
        Ok(sizes(mem, count, size, self.envc, self.env.len()))
    }

    /// `environ_get(environ_out, buf_out)`.
    pub fn environ_get(&mut self, mem: &mut [u8], environ: i32, buf: i32) -> Result<i32, HostStop> {
        Ok(strings(mem, environ, buf, &self.env))
    }

    /// `clock_res_get(id, resolution_out)`: nanosecond resolution for every clock.
    pub fn clock_res_get(&mut self, mem: &mut [u8], id: i32, out: i32) -> Result<i32, HostStop> {
        if !(0..=3).contains(&id) {
            return Ok(errno::INVAL);
        }
        Ok(errno_of(write_u64(mem, out, 1)))
    }

    /// `clock_time_get(id, precision, time_out)`. The CPU-time clocks read the monotonic
    /// clock: the guest is the only thing its instance runs.
    pub fn clock_time_get(
        &mut self,
        mem: &mut [u8],
        id: i32,
        _precision: i64,
        out: i32,
    ) -> Result<i32, HostStop> {
        let nanos = match id {
            0 => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            1..=3 => monotonic_base().elapsed().as_nanos() as u64,
            _ => return Ok(errno::INVAL),
        };
        Ok(errno_of(write_u64(mem, out, nanos)))
    }

    /// `fd_close(fd)`: stdio may be closed (a no-op); so may volumes and opened files.
    pub fn fd_close(&mut self, _mem: &mut [u8], fd: i32) -> Result<i32, HostStop> {
        Ok(if is_stdio(fd) || self.files.close(fd) {
            errno::SUCCESS
        } else {
            errno::BADF
        })
    }

    /// `fd_fdstat_get(fd, stat_out)`: stdio are character devices.
    pub fn fd_fdstat_get(&mut self, mem: &mut [u8], fd: i32, out: i32) -> Result<i32, HostStop> {
        if !is_stdio(fd) {
            return Ok(match self.files.fdstat(fd) {
                Some(stat) => errno_of(write_bytes(mem, out, &stat)),
                None => errno::BADF,
            });
        }
        // struct fdstat { u8 filetype; u16 flags; u64 rights_base; u64 rights_inheriting }
        const CHARACTER_DEVICE: u8 = 2;
        const RIGHT_FD_READ: u64 = 1 << 1;
        const RIGHT_FD_WRITE: u64 = 1 << 6;
        let rights = if fd == 0 {
            RIGHT_FD_READ
        } else {
            RIGHT_FD_WRITE
        };
        let mut stat = [0u8; 24];
        stat[0] = CHARACTER_DEVICE;
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        Ok(errno_of(write_bytes(mem, out, &stat)))
    }

    /// `fd_seek(fd, offset, whence, new_offset_out)`: stdio is not seekable; files are.
    pub fn fd_seek(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        offset: i64,
        whence: i32,
        out: i32,
    ) -> Result<i32, HostStop> {
        if is_stdio(fd) {
            return Ok(errno::SPIPE);
        }
        Ok(match self.files.seek(fd, offset, whence) {
            Ok(at) => errno_of(write_u64(mem, out, at)),
            Err(e) => e,
        })
    }

    /// `fd_read(fd, iovs, iovs_len, nread_out)`: stdin, which is the request body, or a
    /// file opened from a volume.
    pub fn fd_read(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        iovs_len: i32,
        nread: i32,
    ) -> Result<i32, HostStop> {
        if fd > 2 {
            return Ok(match self.files.read(mem, fd, iovs, iovs_len) {
                Ok(n) => {
                    self.moved += n as usize;
                    errno_of(write_u32(mem, nread, n))
                }
                Err(e) => e,
            });
        }
        if fd != 0 {
            return Ok(errno::BADF);
        }
        let Some(list) = iovecs(mem, iovs, iovs_len) else {
            return Ok(errno::FAULT);
        };
        let mut total = 0usize;
        for (ptr, len) in list {
            let rest = &self.stdin[self.stdin_pos..];
            if rest.is_empty() {
                break;
            }
            let Some(dst) = slice_mut(mem, ptr as i32, len) else {
                return Ok(errno::FAULT);
            };
            let n = dst.len().min(rest.len());
            dst[..n].copy_from_slice(&rest[..n]);
            self.stdin_pos += n;
            total += n;
        }
        self.moved += total;
        Ok(errno_of(write_u32(mem, nread, total as u32)))
    }

    /// `fd_write(fd, iovs, iovs_len, nwritten_out)`: stdout is captured up to its cap
    /// (past it the guest is stopped), stderr up to [`STDERR_CAP`] (past it, dropped).
    pub fn fd_write(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        iovs_len: i32,
        nwritten: i32,
    ) -> Result<i32, HostStop> {
        if fd != 1 && fd != 2 {
            return Ok(errno::BADF);
        }
        let Some(list) = iovecs(mem, iovs, iovs_len) else {
            return Ok(errno::FAULT);
        };
        let mut total = 0usize;
        for (ptr, len) in list {
            let Some(src) = slice(mem, ptr as i32, len) else {
                return Ok(errno::FAULT);
            };
            if fd == 1 {
                if self.stdout.len() + src.len() > self.stdout_cap {
                    return Err(HostStop::StdoutFull);
                }
                self.stdout.extend_from_slice(src);
            } else {
                let room = STDERR_CAP - self.stderr.len();
                self.stderr.extend_from_slice(&src[..src.len().min(room)]);
            }
            total += src.len();
            self.moved += src.len();
        }
        Ok(errno_of(write_u32(mem, nwritten, total as u32)))
    }

    /// `proc_exit(code)`: always stops the guest.
    pub fn proc_exit(&mut self, code: i32) -> HostStop {
        HostStop::Exit(code)
    }

    /// `random_get(buf, len)`: bytes from the operating system's CSPRNG.
    pub fn random_get(&mut self, mem: &mut [u8], buf: i32, len: i32) -> Result<i32, HostStop> {
        let Some(dst) = slice_mut(mem, buf, len as u32) else {
            return Ok(errno::FAULT);
        };
        self.moved += dst.len();
        Ok(match getrandom::fill(dst) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::IO,
        })
    }

    /// `sched_yield()`: nothing else runs in this instance, so it returns at once.
    pub fn sched_yield(&mut self, _mem: &mut [u8]) -> Result<i32, HostStop> {
        Ok(errno::SUCCESS)
    }
}

fn is_stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// The process-wide origin of the monotonic clock guests see.
fn monotonic_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn errno_of(written: Option<()>) -> i32 {
    written.map_or(errno::FAULT, |()| errno::SUCCESS)
}

fn sizes(mem: &mut [u8], count_out: i32, size_out: i32, count: u32, size: usize) -> i32 {
    errno_of(write_u32(mem, count_out, count).and_then(|()| write_u32(mem, size_out, size as u32)))
}

/// Writes NUL-terminated `strings` to `buf` and a pointer to each into `ptrs`.
fn strings(mem: &mut [u8], ptrs: i32, buf: i32, strings: &[u8]) -> i32 {
    let Some(dst) = slice_mut(mem, buf, strings.len() as u32) else {
        return errno::FAULT;
    };
    dst.copy_from_slice(strings);
    let mut offset = buf as u32;
    let mut slot = ptrs;
    for s in strings.split_inclusive(|&b| b == 0) {
        if write_u32(mem, slot, offset).is_none() {
            return errno::FAULT;
        }
        offset += s.len() as u32;
        slot = slot.wrapping_add(4);
    }
    errno::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn io() -> GuestIo {
        let mut io = GuestIo::new(Bytes::from_static(b"body bytes"), 8, 0);
        io.push_arg(b"/x");
        io.push_arg(b"a=1");
        io.push_env(b"K", b"v");
        io.begin_env(b"EMPTY");
        io.end_env();
        io
    }

    fn u32_at(mem: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(mem[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn args_and_environment_round_trip() {
        let mut io = io();
        let mut mem = vec![0u8; 256];
        assert_eq!(io.environ_sizes_get(&mut mem, 0, 4), Ok(0));
        assert_eq!((u32_at(&mem, 0), u32_at(&mem, 4)), (2, 11));
        assert_eq!(io.environ_get(&mut mem, 16, 64), Ok(0));
        assert_eq!(u32_at(&mem, 16), 64);
        assert_eq!(u32_at(&mem, 20), 68);
        assert_eq!(&mem[64..75], b"K=v\0EMPTY=\0");
        assert_eq!(io.args_sizes_get(&mut mem, 0, 4), Ok(0));
        assert_eq!((u32_at(&mem, 0), u32_at(&mem, 4)), (2, 7));
    }

    #[test]
    fn out_of_bounds_pointers_are_faults_not_panics() {
        let mut io = io();
        let mut mem = vec![0u8; 16];
        assert_eq!(io.environ_get(&mut mem, 0, 12), Ok(errno::FAULT));
        assert_eq!(io.args_sizes_get(&mut mem, 14, 0), Ok(errno::FAULT));
        assert_eq!(io.fd_write(&mut mem, 1, -8, 1, 0), Ok(errno::FAULT));
        assert_eq!(io.fd_read(&mut mem, 0, 0, i32::MAX, 0), Ok(errno::FAULT));
        assert_eq!(io.random_get(&mut mem, 8, 9), Ok(errno::FAULT));
        assert_eq!(io.clock_time_get(&mut mem, 0, 0, 12), Ok(errno::FAULT));
    }

    #[test]
    fn stdin_is_read_in_pieces_until_empty() {
        let mut io = io();
        let mut mem = vec![0u8; 64];
        // one iovec {ptr: 32, len: 4} at 0
        mem[0..4].copy_from_slice(&32u32.to_le_bytes());
        mem[4..8].copy_from_slice(&4u32.to_le_bytes());
        let mut got = Vec::new();
        loop {
            assert_eq!(io.fd_read(&mut mem, 0, 0, 1, 16), Ok(0));
            let n = u32_at(&mem, 16) as usize;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&mem[32..32 + n]);
        }
        assert_eq!(got, b"body bytes");
        // Reading past the end keeps answering end-of-file, never stale or host data.
        for _ in 0..3 {
            assert_eq!(io.fd_read(&mut mem, 0, 0, 1, 16), Ok(0));
            assert_eq!(u32_at(&mem, 16), 0);
        }
    }

    #[test]
    fn stdout_cap_stops_the_guest_and_stderr_truncates() {
        let mut io = io();
        let mut mem = vec![0u8; 64];
        mem[0..4].copy_from_slice(&32u32.to_le_bytes());
        mem[4..8].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(io.fd_write(&mut mem, 1, 0, 1, 16), Ok(0));
        assert_eq!(
            io.fd_write(&mut mem, 1, 0, 1, 16),
            Err(HostStop::StdoutFull)
        );
        assert_eq!(io.stdout().len(), 5);
        for _ in 0..(STDERR_CAP / 5 + 2) {
            assert_eq!(io.fd_write(&mut mem, 2, 0, 1, 16), Ok(0));
        }
        assert_eq!(io.stderr().len(), STDERR_CAP);
    }

    #[test]
    fn no_files_no_sockets() {
        let mut io = io();
        let mut mem = vec![0u8; 64];
        assert_eq!(io.fd_prestat_get(&mut mem, 3, 0), Ok(errno::BADF));
        assert_eq!(io.fd_write(&mut mem, 3, 0, 0, 0), Ok(errno::BADF));
        assert_eq!(io.fd_read(&mut mem, 1, 0, 0, 0), Ok(errno::BADF));
        assert_eq!(
            io.path_open(&mut mem, 3, 0, 0, 1, 0, 0, 0, 0, 0),
            Ok(errno::BADF)
        );
        assert_eq!(
            provided("path_create_directory"),
            Provided::Stub(errno::NOTCAPABLE)
        );
        assert_eq!(provided("sock_accept"), Provided::Stub(errno::NOTCAPABLE));
        assert_eq!(provided("fd_allocate"), Provided::Stub(errno::BADF));
        assert_eq!(provided("fd_write"), Provided::Implemented);
    }
}
