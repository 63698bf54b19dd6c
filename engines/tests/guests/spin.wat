;; Reads a little-endian u32 count from stdin (the request body), spins that many times,
;; then answers: a guest that finishes after as many time slices as the test asks for.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\nspun\n")
  (func (export "_start")
    (local $i i32)
    (local $n i32)
    ;; iovec at 16: 4 bytes at 200
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (local.set $n (i32.load (i32.const 200)))
    (block $done
      (loop $count
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $count)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 31))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
