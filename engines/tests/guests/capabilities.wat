;; Tries what a guest must not be able to do and reports each errno as one byte of the
;; body: fd_prestat_get(3), path_open("/etc/passwd") on fd 3, sock_accept(3),
;; fd_read(3), and the error of poll_oneoff's event for reading fd 3. Expected with no
;; volume: 8 (BADF), 8, 76 (NOTCAPABLE), 8, 8.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: application/octet-stream\n\n")
  (data (i32.const 256) "/etc/passwd")
  (func (export "_start")
    (i32.store8 (i32.const 104) (call $fd_prestat_get (i32.const 3) (i32.const 512)))
    (i32.store8 (i32.const 105)
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 256) (i32.const 11) (i32.const 0)
        (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 512)))
    (i32.store8 (i32.const 106) (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 512)))
    (i32.store8 (i32.const 107) (call $fd_read (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 512)))
    ;; one subscription at 384: fd_read (1) of fd 3; its event at 512
    (i32.store8 (i32.const 392) (i32.const 1))
    (i32.store (i32.const 400) (i32.const 3))
    (drop (call $poll_oneoff (i32.const 384) (i32.const 512) (i32.const 1) (i32.const 560)))
    (i32.store8 (i32.const 108) (i32.load16_u (i32.const 520)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 45))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
