//! The WASI file table of one instance: the volumes its service was granted, as preopened
//! directories from fd 3 on, and the files and directories the guest opened beneath them
//! (at most [`MAX_OPEN`] beyond the volumes). The WASI functions that use it are in
//! [`crate::wasi::files`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use crate::grants::Volume;

use crate::abi::{errno, iovecs, slice_mut};

/// Files and directories one guest may have open at once, beyond its volumes, at most;
/// the server may lower it for the whole process with [`limit_open_files`].
pub const MAX_OPEN: usize = 64;

/// The cap in force for guests started from now on: [`MAX_OPEN`] unless lowered.
static OPEN_CAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(MAX_OPEN);

/// Lowers the number of files one guest may open (beyond its volumes) for every guest
/// started afterwards, so that all guests running at once fit the process's descriptor
/// limit. Values above [`MAX_OPEN`] are taken as [`MAX_OPEN`].
pub fn limit_open_files(cap: usize) {
    OPEN_CAP.store(cap.min(MAX_OPEN), std::sync::atomic::Ordering::Relaxed);
}

/// Files one guest started now may open beyond its volumes.
pub fn open_files_cap() -> usize {
    OPEN_CAP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Most bytes one `fd_read` or `fd_pread` reads, whatever length the guest asks for (up to
/// 4 GiB): a short read is allowed, and one call then costs the serving thread little.
pub const MAX_READ: usize = 64 * 1024;

/// The first descriptor after stdio: volumes are 3, 4, ... in the order configured.
pub(crate) const FIRST_FD: i32 = 3;

/// WASI errno values only the file table and the WASI file functions use.
pub(crate) mod more_errno {
    pub const ISDIR: i32 = 31;
    pub const LOOP: i32 = 32;
    pub const MFILE: i32 = 33;
    pub const NAMETOOLONG: i32 = 37;
    pub const NOENT: i32 = 44;
    pub const NOTDIR: i32 = 54;
    pub const ACCES: i32 = 2;
    pub const PERM: i32 = 63;
    pub const ILSEQ: i32 = 25;
    pub const ROFS: i32 = 69;
}
pub(crate) use more_errno::*;

/// WASI file types.
pub(crate) const DIRECTORY: u8 = 3;
pub(crate) const REGULAR_FILE: u8 = 4;
pub(crate) const SYMBOLIC_LINK: u8 = 7;
pub(crate) const UNKNOWN: u8 = 0;

/// WASI rights bits this host grants.
pub(crate) mod rights {
    pub const FD_READ: u64 = 1 << 1;
    pub const FD_SEEK: u64 = 1 << 2;
    pub const FD_TELL: u64 = 1 << 5;
    pub const FD_WRITE: u64 = 1 << 6;
    pub const FD_ADVISE: u64 = 1 << 7;
    pub const PATH_OPEN: u64 = 1 << 13;
    pub const FD_READDIR: u64 = 1 << 14;
    pub const PATH_READLINK: u64 = 1 << 15;
    pub const PATH_FILESTAT_GET: u64 = 1 << 18;
    pub const FD_FILESTAT_GET: u64 = 1 << 21;
    pub const POLL_FD_READWRITE: u64 = 1 << 27;
    pub const FILE: u64 =
        FD_READ | FD_SEEK | FD_TELL | FD_ADVISE | FD_FILESTAT_GET | POLL_FD_READWRITE;
    pub const DIR: u64 =
        PATH_OPEN | FD_READDIR | PATH_READLINK | PATH_FILESTAT_GET | FD_FILESTAT_GET;
}

/// The guest's open descriptors from [`FIRST_FD`] on.
#[derive(Debug, Default)]
pub(crate) struct Files {
    handles: Vec<Option<Handle>>,
    volumes: usize,
    /// Files it may open beyond its volumes (none without volumes: it has nowhere to
    /// open them from).
    max_open: usize,
}

#[derive(Debug)]
pub(crate) enum Handle {
    Dir {
        dir: Arc<File>,
        /// The guest path, for a volume.
        preopen: Option<String>,
        /// Its entries, read on the first `fd_readdir`.
        listing: Option<Vec<DirEntry>>,
    },
    File(File),
}

#[derive(Debug)]
pub(crate) struct DirEntry {
    pub(crate) name: Vec<u8>,
    pub(crate) kind: u8,
}

impl Files {
    /// A guest's descriptors: its volumes, nothing open.
    pub(crate) fn new(volumes: &[Volume]) -> Self {
        Self::with_cap(volumes, open_files_cap())
    }

    /// As [`Files::new`], with at most `max_open` files open beyond the volumes.
    fn with_cap(volumes: &[Volume], max_open: usize) -> Self {
        Files {
            max_open,
            handles: volumes
                .iter()
                .map(|v| {
                    Some(Handle::Dir {
                        dir: v.dir.clone(),
                        preopen: Some(v.guest_path.clone()),
                        listing: None,
                    })
                })
                .collect(),
            volumes: volumes.len(),
        }
    }

    pub(crate) fn get(&mut self, fd: i32) -> Option<&mut Handle> {
        let i = usize::try_from(fd.checked_sub(FIRST_FD)?).ok()?;
        self.handles.get_mut(i)?.as_mut()
    }

    pub(crate) fn insert(&mut self, handle: Handle) -> Option<i32> {
        let open = self.handles.iter().filter(|h| h.is_some()).count();
        if open >= self.volumes + self.max_open {
            return None;
        }
        let i = match self.handles.iter().position(Option::is_none) {
            Some(i) => {
                self.handles[i] = Some(handle);
                i
            }
            None => {
                self.handles.push(Some(handle));
                self.handles.len() - 1
            }
        };
        Some(FIRST_FD + i as i32)
    }

    /// Closes `fd`; false if it was not open.
    pub(crate) fn close(&mut self, fd: i32) -> bool {
        let Some(i) = fd
            .checked_sub(FIRST_FD)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        self.handles.get_mut(i).and_then(Option::take).is_some()
    }

    /// `fd_fdstat_get` of a descriptor past stdio.
    pub(crate) fn fdstat(&mut self, fd: i32) -> Option<[u8; 24]> {
        let (kind, base, inheriting) = match self.get(fd)? {
            Handle::Dir { .. } => (DIRECTORY, rights::DIR, rights::DIR | rights::FILE),
            Handle::File(_) => (REGULAR_FILE, rights::FILE, 0),
        };
        let mut stat = [0u8; 24];
        stat[0] = kind;
        stat[8..16].copy_from_slice(&base.to_le_bytes());
        stat[16..24].copy_from_slice(&inheriting.to_le_bytes());
        Some(stat)
    }

    /// `fd_read` of a descriptor past stdio.
    pub(crate) fn read(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        count: i32,
    ) -> Result<u32, i32> {
        let Some(handle) = self.get(fd) else {
            return Err(errno::BADF);
        };
        let Handle::File(file) = handle else {
            return Err(ISDIR);
        };
        let list = iovecs(mem, iovs, count).ok_or(errno::FAULT)?;
        let mut total = 0usize;
        for (ptr, len) in list {
            let dst = slice_mut(mem, ptr as i32, len).ok_or(errno::FAULT)?;
            let want = dst.len().min(MAX_READ - total);
            let n = file.read(&mut dst[..want]).map_err(|e| errno_of_io(&e))?;
            total += n;
            if n < len as usize || total == MAX_READ {
                break;
            }
        }
        Ok(total as u32)
    }

    /// `fd_seek` of a descriptor past stdio.
    pub(crate) fn seek(&mut self, fd: i32, offset: i64, whence: i32) -> Result<u64, i32> {
        let Some(handle) = self.get(fd) else {
            return Err(errno::BADF);
        };
        let Handle::File(file) = handle else {
            return Err(errno::BADF);
        };
        let to = match whence {
            0 => SeekFrom::Start(u64::try_from(offset).map_err(|_| errno::INVAL)?),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => return Err(errno::INVAL),
        };
        file.seek(to).map_err(|e| errno_of_io(&e))
    }
}

/// The errno a guest sees for a host I/O error. A path that would leave its volume is
/// `ENOTCAPABLE`, whichever way cap-primitives noticed it.
pub(crate) fn errno_of_io(e: &std::io::Error) -> i32 {
    match e.raw_os_error() {
        Some(libc_errno::ENOENT) => NOENT,
        Some(libc_errno::ENOTDIR) => NOTDIR,
        Some(libc_errno::EISDIR) => ISDIR,
        Some(libc_errno::ELOOP) => LOOP,
        Some(libc_errno::EACCES) => ACCES,
        Some(libc_errno::EPERM) => PERM,
        Some(libc_errno::ENAMETOOLONG) => NAMETOOLONG,
        Some(libc_errno::EXDEV) => errno::NOTCAPABLE,
        Some(_) => errno::IO,
        None => match e.kind() {
            std::io::ErrorKind::PermissionDenied => errno::NOTCAPABLE,
            std::io::ErrorKind::NotFound => NOENT,
            _ => errno::IO,
        },
    }
}

/// Linux errno values (the same on every Linux architecture Rust supports).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ELOOP: i32 = 40;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_cap_bounds_open_files() {
        let mut files = Files::with_cap(&[], 2);
        let file = || Handle::File(File::open("/dev/null").unwrap());
        assert_eq!(files.insert(file()), Some(FIRST_FD));
        assert_eq!(files.insert(file()), Some(FIRST_FD + 1));
        assert_eq!(files.insert(file()), None, "the third is refused");
        files.handles[0] = None;
        assert_eq!(
            files.insert(file()),
            Some(FIRST_FD),
            "a closed slot is reused"
        );
    }
}
