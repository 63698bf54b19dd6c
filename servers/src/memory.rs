//! Handing freed heap memory back to the system once a serving thread holds no module.
//!
//! glibc's allocator keeps what a thread freed for that thread's next allocations: after
//! every module is evicted, an idle server would keep its busiest moment's heap (compiled
//! wasmi code, instance memory of the last requests) for good. `malloc_trim` returns the
//! free pages of every arena. It is called only when a thread's last module goes, never on
//! the request path.

/// Returns free heap pages to the system, where the allocator supports it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_back() {
    // SAFETY: `malloc_trim` takes no pointer; it walks the allocator's own free lists under
    // the allocator's locks, like any `malloc` call.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the system, where the allocator supports it.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back() {}
