//! The guest ABI at its lowest level, shared by every host-function module: the value
//! kinds of import signatures, WASI errno values, and bounds-checked access to the guest's
//! linear memory. A leaf: it imports nothing from this crate.

/// Value types that appear in WASI preview-1 signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValKind {
    /// `i32`
    I32,
    /// `i64`
    I64,
}

/// WASI errno values used by the host functions.
pub mod errno {
    /// No error.
    pub const SUCCESS: i32 = 0;
    /// Bad file descriptor.
    pub const BADF: i32 = 8;
    /// Bad address: a pointer outside linear memory.
    pub const FAULT: i32 = 21;
    /// Invalid argument.
    pub const INVAL: i32 = 28;
    /// I/O error.
    pub const IO: i32 = 29;
    /// Function not implemented.
    pub const NOSYS: i32 = 52;
    /// Not supported.
    pub const NOTSUP: i32 = 58;
    /// Invalid seek (stdio is a stream).
    pub const SPIPE: i32 = 70;
    /// Capability insufficient: what file and socket calls get.
    pub const NOTCAPABLE: i32 = 76;
}

/// Most iovecs one read or write may pass, as POSIX `IOV_MAX`.
const MAX_IOVS: u32 = 1024;

pub(crate) fn slice(mem: &[u8], ptr: i32, len: u32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    mem.get(start..start.checked_add(len as usize)?)
}

pub(crate) fn slice_mut(mem: &mut [u8], ptr: i32, len: u32) -> Option<&mut [u8]> {
    let start = ptr as u32 as usize;
    mem.get_mut(start..start.checked_add(len as usize)?)
}

/// Copies `value` into guest memory at `ptr`; `None` if it does not fit.
pub(crate) fn write_bytes(mem: &mut [u8], ptr: i32, value: &[u8]) -> Option<()> {
    slice_mut(mem, ptr, value.len() as u32)?.copy_from_slice(value);
    Some(())
}

pub(crate) fn write_u32(mem: &mut [u8], ptr: i32, value: u32) -> Option<()> {
    write_bytes(mem, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(mem: &mut [u8], ptr: i32, value: u64) -> Option<()> {
    write_bytes(mem, ptr, &value.to_le_bytes())
}

/// The `(ptr, len)` pairs of an iovec array, or `None` if it is out of bounds or too long.
pub(crate) fn iovecs(mem: &[u8], iovs: i32, count: i32) -> Option<Vec<(u32, u32)>> {
    let count = u32::try_from(count).ok().filter(|c| *c <= MAX_IOVS)?;
    let raw = slice(mem, iovs, count * 8)?;
    Some(
        raw.chunks_exact(8)
            .map(|c| {
                let ptr = u32::from_le_bytes(c[..4].try_into().expect("4 bytes"));
                let len = u32::from_le_bytes(c[4..].try_into().expect("4 bytes"));
                (ptr, len)
            })
            .collect(),
    )
}
