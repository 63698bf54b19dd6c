;; Opens the path given as the request body beneath fd 3 (the first volume), following
;; symlinks, and answers one byte of errno (0 on success) then the file's first 8 KiB.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $errno i32)
    (local $n i32)
    ;; The path: stdin into 1024..1536.
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 512))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    ;; path_open(3, follow, path, len, no oflags, FD_READ|FD_SEEK, 0, 0, &fd)
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 1) (i32.const 1024) (i32.load (i32.const 24))
        (i32.const 0) (i64.const 6) (i64.const 0) (i32.const 0) (i32.const 2000)))
    (i32.store8 (i32.const 4095) (local.get $errno))
    (if (i32.eqz (local.get $errno))
      (then
        (i32.store (i32.const 16) (i32.const 4096))
        (i32.store (i32.const 20) (i32.const 8192))
        (drop (call $fd_read (i32.load (i32.const 2000)) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $n (i32.load (i32.const 24)))
        (drop (call $fd_close (i32.load (i32.const 2000))))))
    (call $write (i32.const 64) (i32.const 26))
    (call $write (i32.const 4095) (i32.add (i32.const 1) (local.get $n)))))
