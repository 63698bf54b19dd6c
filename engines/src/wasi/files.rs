//! Read-only directories: the volumes an operator grants a service, as WASI preopens.
//!
//! Every path a guest names is resolved by `cap-primitives` beneath the directory it is
//! relative to (with `openat2(RESOLVE_BENEATH)` where the kernel has it), so `..`,
//! absolute paths and symlinks that would leave a volume are refused with `ENOTCAPABLE`.
//! Nothing here writes: opening to create, truncate, append or write answers `EROFS`.
//! Only regular files and directories open: anything else in a volume (a FIFO, a socket,
//! a device) answers `ENOTSUP`, and is opened `O_NONBLOCK` to find out, because opening a
//! FIFO that has no writer would otherwise block the serving thread in the kernel.
//! Reads are ordinary blocking reads on the serving thread, at most [`MAX_READ`] bytes per
//! call; volumes are meant for local files (templates, static assets) that the page cache
//! holds.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use cap_fs_ext::{
    FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt, OpenOptionsSyncExt as _,
};
use cap_primitives::fs::{Metadata, MetadataExt as _, OpenOptions};

use super::errno_of;
use crate::abi::{errno, iovecs, slice, slice_mut, write_bytes, write_u32, write_u64};
use crate::file_table::{
    DIRECTORY, DirEntry, Handle, REGULAR_FILE, SYMBOLIC_LINK, UNKNOWN, errno_of_io, more_errno::*,
    rights,
};
pub use crate::file_table::{MAX_OPEN, MAX_READ, limit_open_files, open_files_cap};
use crate::host::{GuestIo, HostStop};

/// Entries of one directory a guest can list; the rest are not shown.
pub const MAX_DIR_ENTRIES: usize = 10_000;

/// Longest path a guest may pass, in bytes.
const MAX_PATH: u32 = 4096;

/// `path_open` flags.
const O_CREAT: i32 = 1;
const O_DIRECTORY: i32 = 2;
const O_EXCL: i32 = 4;
const O_TRUNC: i32 = 8;
const FDFLAG_APPEND: i32 = 1;
const LOOKUP_SYMLINK_FOLLOW: i32 = 1;

impl GuestIo {
    /// `fd_prestat_get(fd, out)`: a volume's guest path length.
    pub fn fd_prestat_get(&mut self, mem: &mut [u8], fd: i32, out: i32) -> Result<i32, HostStop> {
        let Some(Handle::Dir {
            preopen: Some(name),
            ..
        }) = self.files.get(fd)
        else {
            return Ok(errno::BADF);
        };
        let mut prestat = [0u8; 8];
        // tag 0: a directory, then its name's length.
        prestat[4..8].copy_from_slice(&(name.len() as u32).to_le_bytes());
        Ok(errno_of(write_bytes(mem, out, &prestat)))
    }

    /// `fd_prestat_dir_name(fd, path, len)`: a volume's guest path.
    pub fn fd_prestat_dir_name(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        path: i32,
        len: i32,
    ) -> Result<i32, HostStop> {
        let Some(Handle::Dir {
            preopen: Some(name),
            ..
        }) = self.files.get(fd)
        else {
            return Ok(errno::BADF);
        };
        if (len as u32 as usize) < name.len() {
            return Ok(NAMETOOLONG);
        }
        Ok(errno_of(write_bytes(mem, path, name.as_bytes())))
    }

    /// `path_open(dirfd, dirflags, path, path_len, oflags, rights_base, rights_inheriting,
    /// fdflags, fd_out)`: opens a file or directory beneath `dirfd`, read-only.
    #[allow(clippy::too_many_arguments)]
    pub fn path_open(
        &mut self,
        mem: &mut [u8],
        dirfd: i32,
        dirflags: i32,
        path: i32,
        path_len: i32,
        oflags: i32,
        rights_base: i64,
        _rights_inheriting: i64,
        fdflags: i32,
        out: i32,
    ) -> Result<i32, HostStop> {
        let (dir, path) = match self.beneath(mem, dirfd, path, path_len) {
            Ok(found) => found,
            Err(e) => return Ok(e),
        };
        let writes = oflags & (O_CREAT | O_EXCL | O_TRUNC) != 0
            || fdflags & FDFLAG_APPEND != 0
            || rights_base as u64 & rights::FD_WRITE != 0;
        if writes {
            return Ok(ROFS);
        }
        let mut options = OpenOptions::new();
        // Non-blocking: a FIFO without a writer (or a device) must not hold the open.
        options
            .read(true)
            .maybe_dir(true)
            .nonblock(true)
            .follow(follow(dirflags));
        let file = match cap_primitives::fs::open(&dir, Path::new(&path), &options) {
            Ok(f) => f,
            Err(e) => return Ok(errno_of_io(&e)),
        };
        // Checked on the open descriptor (fstat), so a swap after a stat cannot slip
        // anything else in.
        let is_dir = match file.metadata() {
            Ok(m) if m.is_dir() => true,
            Ok(m) if m.is_file() => false,
            Ok(_) => return Ok(errno::NOTSUP),
            Err(e) => return Ok(errno_of_io(&e)),
        };
        if oflags & O_DIRECTORY != 0 && !is_dir {
            return Ok(NOTDIR);
        }
        let handle = if is_dir {
            Handle::Dir {
                dir: Arc::new(file),
                preopen: None,
                listing: None,
            }
        } else {
            Handle::File(file)
        };
        let Some(fd) = self.files.insert(handle) else {
            return Ok(MFILE);
        };
        Ok(errno_of(write_u32(mem, out, fd as u32)))
    }

    /// `fd_filestat_get(fd, out)`.
    pub fn fd_filestat_get(&mut self, mem: &mut [u8], fd: i32, out: i32) -> Result<i32, HostStop> {
        let metadata = match self.files.get(fd) {
            Some(Handle::File(file)) => Metadata::from_file(file),
            Some(Handle::Dir { dir, .. }) => Metadata::from_file(dir),
            None if super::is_stdio(fd) => {
                // A character device with nothing else known.
                let mut stat = [0u8; 64];
                stat[16] = 2;
                return Ok(errno_of(write_bytes(mem, out, &stat)));
            }
            None => return Ok(errno::BADF),
        };
        Ok(match metadata {
            Ok(m) => write_filestat(mem, out, &m),
            Err(e) => errno_of_io(&e),
        })
    }

    /// `path_filestat_get(dirfd, flags, path, path_len, out)`.
    pub fn path_filestat_get(
        &mut self,
        mem: &mut [u8],
        dirfd: i32,
        flags: i32,
        path: i32,
        path_len: i32,
        out: i32,
    ) -> Result<i32, HostStop> {
        let (dir, path) = match self.beneath(mem, dirfd, path, path_len) {
            Ok(found) => found,
            Err(e) => return Ok(e),
        };
        Ok(
            match cap_primitives::fs::stat(&dir, Path::new(&path), follow(flags)) {
                Ok(m) => write_filestat(mem, out, &m),
                Err(e) => errno_of_io(&e),
            },
        )
    }

    /// `fd_readdir(fd, buf, buf_len, cookie, bufused_out)`: entries from `cookie` on, the
    /// last one cut off when the buffer is full (the guest then asks again from it).
    pub fn fd_readdir(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        buf: i32,
        buf_len: i32,
        cookie: i64,
        out: i32,
    ) -> Result<i32, HostStop> {
        let Some(handle) = self.files.get(fd) else {
            return Ok(errno::BADF);
        };
        let Handle::Dir { dir, listing, .. } = handle else {
            return Ok(NOTDIR);
        };
        if listing.is_none() || cookie == 0 {
            match list(dir) {
                Ok(entries) => *listing = Some(entries),
                Err(e) => return Ok(errno_of_io(&e)),
            }
        }
        let entries = listing.as_ref().expect("listed above");
        let Some(dst) = slice_mut(mem, buf, buf_len as u32) else {
            return Ok(errno::FAULT);
        };
        let mut used = 0usize;
        let start = usize::try_from(cookie).unwrap_or(usize::MAX);
        for (i, entry) in entries.iter().enumerate().skip(start) {
            let mut head = [0u8; 24];
            head[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            head[16..20].copy_from_slice(&(entry.name.len() as u32).to_le_bytes());
            head[20] = entry.kind;
            for part in [&head[..], &entry.name] {
                let n = part.len().min(dst.len() - used);
                dst[used..used + n].copy_from_slice(&part[..n]);
                used += n;
            }
            if used == dst.len() {
                break;
            }
        }
        self.moved += used;
        Ok(errno_of(write_u32(mem, out, used as u32)))
    }

    /// `fd_tell(fd, offset_out)`.
    pub fn fd_tell(&mut self, mem: &mut [u8], fd: i32, out: i32) -> Result<i32, HostStop> {
        if super::is_stdio(fd) {
            return Ok(errno::SPIPE);
        }
        Ok(match self.files.seek(fd, 0, 1) {
            Ok(at) => errno_of(write_u64(mem, out, at)),
            Err(e) => e,
        })
    }

    /// `fd_pread(fd, iovs, iovs_len, offset, nread_out)`: reads at `offset` without moving.
    pub fn fd_pread(
        &mut self,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        iovs_len: i32,
        offset: i64,
        out: i32,
    ) -> Result<i32, HostStop> {
        let file = match self.files.get(fd) {
            Some(Handle::File(file)) => file,
            Some(Handle::Dir { .. }) => return Ok(ISDIR),
            None if super::is_stdio(fd) => return Ok(errno::SPIPE),
            None => return Ok(errno::BADF),
        };
        let Ok(mut at) = u64::try_from(offset) else {
            return Ok(errno::INVAL);
        };
        let Some(list) = iovecs(mem, iovs, iovs_len) else {
            return Ok(errno::FAULT);
        };
        let mut total = 0usize;
        for (ptr, len) in list {
            let Some(dst) = slice_mut(mem, ptr as i32, len) else {
                return Ok(errno::FAULT);
            };
            let want = dst.len().min(MAX_READ - total);
            let n = match file.read_at(&mut dst[..want], at) {
                Ok(n) => n,
                Err(e) => return Ok(errno_of_io(&e)),
            };
            total += n;
            self.moved += n;
            at = at.saturating_add(n as u64);
            if n < len as usize || total == MAX_READ {
                break;
            }
        }
        Ok(errno_of(write_u32(mem, out, total as u32)))
    }

    /// The directory `fd` names and the path from guest memory, to resolve beneath it.
    fn beneath(
        &mut self,
        mem: &[u8],
        fd: i32,
        path: i32,
        path_len: i32,
    ) -> Result<(Arc<File>, String), i32> {
        let dir = match self.files.get(fd) {
            Some(Handle::Dir { dir, .. }) => dir.clone(),
            Some(Handle::File(_)) => return Err(NOTDIR),
            None => return Err(errno::BADF),
        };
        Ok((dir, guest_path(mem, path, path_len)?))
    }
}

fn follow(flags: i32) -> FollowSymlinks {
    if flags & LOOKUP_SYMLINK_FOLLOW != 0 {
        FollowSymlinks::Yes
    } else {
        FollowSymlinks::No
    }
}

/// A path from guest memory: UTF-8, not empty, at most [`MAX_PATH`] bytes.
fn guest_path(mem: &[u8], ptr: i32, len: i32) -> Result<String, i32> {
    let len = len as u32;
    if len > MAX_PATH {
        return Err(NAMETOOLONG);
    }
    let bytes = slice(mem, ptr, len).ok_or(errno::FAULT)?;
    let path = std::str::from_utf8(bytes).map_err(|_| ILSEQ)?;
    if path.is_empty() {
        return Err(NOENT);
    }
    Ok(path.to_owned())
}

/// A directory's entries, at most [`MAX_DIR_ENTRIES`].
fn list(dir: &File) -> std::io::Result<Vec<DirEntry>> {
    let mut entries = Vec::new();
    for entry in cap_primitives::fs::read_base_dir(dir)?.take(MAX_DIR_ENTRIES) {
        let entry = entry?;
        let kind = match entry.file_type() {
            Ok(t) if t.is_dir() => DIRECTORY,
            Ok(t) if t.is_file() => REGULAR_FILE,
            Ok(t) if t.is_symlink() => SYMBOLIC_LINK,
            _ => UNKNOWN,
        };
        entries.push(DirEntry {
            name: entry.file_name().into_encoded_bytes(),
            kind,
        });
    }
    Ok(entries)
}

fn write_filestat(mem: &mut [u8], out: i32, m: &Metadata) -> i32 {
    let nanos = |t: std::io::Result<cap_primitives::time::SystemTime>| {
        t.ok()
            .and_then(|t| t.into_std().duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let kind = if m.is_dir() {
        DIRECTORY
    } else if m.is_file() {
        REGULAR_FILE
    } else if m.is_symlink() {
        SYMBOLIC_LINK
    } else {
        UNKNOWN
    };
    let mut stat = [0u8; 64];
    stat[0..8].copy_from_slice(&m.dev().to_le_bytes());
    stat[8..16].copy_from_slice(&m.ino().to_le_bytes());
    stat[16] = kind;
    stat[24..32].copy_from_slice(&m.nlink().to_le_bytes());
    stat[32..40].copy_from_slice(&m.len().to_le_bytes());
    stat[40..48].copy_from_slice(&nanos(m.accessed()).to_le_bytes());
    stat[48..56].copy_from_slice(&nanos(m.modified()).to_le_bytes());
    stat[56..64].copy_from_slice(&nanos(m.created()).to_le_bytes());
    errno_of(write_bytes(mem, out, &stat))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{Grants, Volume};
    use bytes::Bytes;

    /// A volume's directory, removed when dropped.
    type Dir = tempfile::TempDir;

    fn volume(name: &str) -> (Dir, GuestIo) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("frenezulo-files-{name}-"))
            .tempdir()
            .unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), "0123456789").unwrap();
        std::fs::write(root.join("sub/b.txt"), "b").unwrap();
        let mut io = GuestIo::new(Bytes::new(), 64, 0);
        let grants = Grants {
            volumes: vec![Volume {
                guest_path: "/data".to_owned(),
                dir: Arc::new(File::open(root).unwrap()),
            }],
            ..Grants::default()
        };
        io.grant(&Arc::new(frenezulo_core::GuestSetup {
            host: grants.into_host(),
            ..Default::default()
        }));
        (dir, io)
    }

    /// Puts `path` in memory at 512 and opens it beneath fd 3 with `oflags` and `rights`.
    fn open(
        io: &mut GuestIo,
        mem: &mut [u8],
        path: &str,
        oflags: i32,
        rights: i64,
    ) -> Result<i32, i32> {
        mem[512..512 + path.len()].copy_from_slice(path.as_bytes());
        match io
            .path_open(mem, 3, 1, 512, path.len() as i32, oflags, rights, 0, 0, 0)
            .unwrap()
        {
            0 => Ok(i32::from_le_bytes(mem[0..4].try_into().unwrap())),
            e => Err(e),
        }
    }

    #[test]
    fn a_volume_is_a_preopen_with_its_guest_path() {
        let (_d, mut io) = volume("prestat");
        let mut mem = vec![0u8; 1024];
        assert_eq!(io.fd_prestat_get(&mut mem, 3, 0), Ok(0));
        assert_eq!(mem[0], 0, "a directory");
        assert_eq!(u32::from_le_bytes(mem[4..8].try_into().unwrap()), 5);
        assert_eq!(io.fd_prestat_dir_name(&mut mem, 3, 100, 4), Ok(NAMETOOLONG));
        assert_eq!(io.fd_prestat_dir_name(&mut mem, 3, 100, 5), Ok(0));
        assert_eq!(&mem[100..105], b"/data");
        assert_eq!(io.fd_prestat_get(&mut mem, 4, 0), Ok(errno::BADF));
    }

    #[test]
    fn files_read_seek_and_stat() {
        let (_d, mut io) = volume("read");
        let mut mem = vec![0u8; 1024];
        let fd = open(&mut io, &mut mem, "a.txt", 0, rights::FD_READ as i64).unwrap();
        assert_eq!(fd, 4);
        assert_eq!(io.fd_seek(&mut mem, fd, 4, 0, 8), Ok(0));
        mem[16..20].copy_from_slice(&200u32.to_le_bytes());
        mem[20..24].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(io.fd_read(&mut mem, fd, 16, 1, 24), Ok(0));
        assert_eq!(&mem[200..203], b"456");
        assert_eq!(io.fd_pread(&mut mem, fd, 16, 1, 8, 24), Ok(0));
        assert_eq!(u32::from_le_bytes(mem[24..28].try_into().unwrap()), 2);
        assert_eq!(&mem[200..202], b"89");
        assert_eq!(io.fd_tell(&mut mem, fd, 32), Ok(0));
        assert_eq!(u64::from_le_bytes(mem[32..40].try_into().unwrap()), 7);
        assert_eq!(io.fd_filestat_get(&mut mem, fd, 300), Ok(0));
        assert_eq!(mem[316], REGULAR_FILE);
        assert_eq!(u64::from_le_bytes(mem[332..340].try_into().unwrap()), 10);
        mem[512..517].copy_from_slice(b"sub/b");
        assert_eq!(io.path_filestat_get(&mut mem, 3, 1, 512, 3, 300), Ok(0));
        assert_eq!(mem[316], DIRECTORY);
        assert_eq!(io.fd_close(&mut mem, fd), Ok(0));
        assert_eq!(io.fd_close(&mut mem, fd), Ok(errno::BADF));
    }

    #[test]
    fn nothing_can_be_written() {
        let (_d, mut io) = volume("write");
        let mut mem = vec![0u8; 1024];
        let read = rights::FD_READ as i64;
        assert_eq!(open(&mut io, &mut mem, "new.txt", O_CREAT, read), Err(ROFS));
        assert_eq!(open(&mut io, &mut mem, "a.txt", O_TRUNC, read), Err(ROFS));
        let write = rights::FD_WRITE as i64;
        assert_eq!(open(&mut io, &mut mem, "a.txt", 0, write), Err(ROFS));
        let fd = open(&mut io, &mut mem, "a.txt", 0, read).unwrap();
        assert_eq!(io.fd_write(&mut mem, fd, 0, 0, 0), Ok(errno::BADF));
        assert_eq!(
            open(&mut io, &mut mem, "a.txt", O_DIRECTORY, read),
            Err(NOTDIR)
        );
    }

    #[test]
    fn directories_list_in_pieces() {
        let (_d, mut io) = volume("list");
        let mut mem = vec![0u8; 1024];
        let mut names = Vec::new();
        let mut cookie = 0i64;
        // A buffer too small for two entries makes the guest come back for the rest.
        loop {
            assert_eq!(io.fd_readdir(&mut mem, 3, 600, 40, cookie, 0), Ok(0));
            let used = u32::from_le_bytes(mem[0..4].try_into().unwrap()) as usize;
            if used < 24 {
                break;
            }
            let next = u64::from_le_bytes(mem[600..608].try_into().unwrap());
            let len = u32::from_le_bytes(mem[616..620].try_into().unwrap()) as usize;
            names.push(String::from_utf8(mem[624..624 + len].to_vec()).unwrap());
            cookie = next as i64;
        }
        names.sort();
        assert_eq!(names, ["a.txt", "sub"]);
        let fd = open(&mut io, &mut mem, "a.txt", 0, 2).unwrap();
        assert_eq!(io.fd_readdir(&mut mem, fd, 600, 40, 0, 0), Ok(NOTDIR));
    }

    /// Makes a FIFO at `path` with the `mkfifo` tool (no libc binding in this crate).
    fn mkfifo(path: &std::path::Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo {}", path.display());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (dir, io) = volume("fifo");
        mkfifo(&dir.path().join("pipe"));
        let (done, result) = std::sync::mpsc::channel();
        // On a thread of its own: a regression blocks in the kernel, and must fail the
        // test rather than hang it.
        std::thread::spawn(move || {
            let mut io = io;
            let mut mem = vec![0u8; 1024];
            let opened = open(&mut io, &mut mem, "pipe", 0, rights::FD_READ as i64);
            let dir_flag = open(&mut io, &mut mem, "pipe", O_DIRECTORY, 0);
            let _ = done.send((opened, dir_flag));
        });
        let (opened, dir_flag) = result
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("path_open on a FIFO blocked");
        assert_eq!(opened, Err(errno::NOTSUP));
        assert_eq!(dir_flag, Err(errno::NOTSUP));
        drop(dir);
    }

    #[test]
    fn one_read_is_capped() {
        let (d, mut io) = volume("cap");
        std::fs::write(d.path().join("big"), vec![7u8; 3 * MAX_READ]).unwrap();
        let mut mem = vec![0u8; 4 * MAX_READ];
        let fd = open(&mut io, &mut mem, "big", 0, rights::FD_READ as i64).unwrap();
        // Two iovecs asking for 2 * MAX_READ + 1 bytes in all.
        let at = 1024u32;
        for (i, (ptr, len)) in [
            (at, MAX_READ as u32 + 1),
            (at + 2 * MAX_READ as u32, MAX_READ as u32),
        ]
        .into_iter()
        .enumerate()
        {
            mem[16 + 8 * i..20 + 8 * i].copy_from_slice(&ptr.to_le_bytes());
            mem[20 + 8 * i..24 + 8 * i].copy_from_slice(&len.to_le_bytes());
        }
        assert_eq!(io.fd_read(&mut mem, fd, 16, 2, 40), Ok(0));
        assert_eq!(
            u32::from_le_bytes(mem[40..44].try_into().unwrap()) as usize,
            MAX_READ
        );
        assert_eq!(mem[1024 + MAX_READ], 0, "nothing past the cap");
        assert_eq!(io.fd_pread(&mut mem, fd, 16, 2, 0, 40), Ok(0));
        assert_eq!(
            u32::from_le_bytes(mem[40..44].try_into().unwrap()) as usize,
            MAX_READ
        );
        assert_eq!(io.fd_tell(&mut mem, fd, 48), Ok(0));
        assert_eq!(
            u64::from_le_bytes(mem[48..56].try_into().unwrap()),
            MAX_READ as u64
        );
    }

    #[test]
    fn open_files_are_bounded() {
        let (_d, mut io) = volume("bounded");
        let mut mem = vec![0u8; 1024];
        for _ in 0..MAX_OPEN {
            open(&mut io, &mut mem, "a.txt", 0, 2).unwrap();
        }
        assert_eq!(open(&mut io, &mut mem, "a.txt", 0, 2), Err(MFILE));
        assert_eq!(io.fd_close(&mut mem, 10), Ok(0));
        assert_eq!(
            open(&mut io, &mut mem, "a.txt", 0, 2),
            Ok(10),
            "a closed slot is reused"
        );
    }
}
