;; Reads a little-endian u32 count from stdin (the request body), writes a CGI head and
;; 64 KiB of `a` at once, spins that many times, then writes `end` and returns: a guest
;; whose response is due to go out in pieces (the head and the first bytes before it
;; ends), for the tests of WAGI streaming.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "Content-Type: text/plain\n\n")
  (data (i32.const 96) "end\n")
  (func $write (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $i i32)
    (local $n i32)
    ;; iovec at 16: 4 bytes at 200
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (local.set $n (i32.load (i32.const 200)))
    (memory.fill (i32.const 65536) (i32.const 97) (i32.const 65536))
    (call $write (i32.const 64) (i32.const 26))
    (call $write (i32.const 65536) (i32.const 65536))
    (block $done
      (loop $count
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $count)))
    (call $write (i32.const 96) (i32.const 4))))
