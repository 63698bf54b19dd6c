;; Reads a little-endian u32 count of milliseconds from stdin (the request body), writes
;; a CGI head and `before`, sleeps that long in `poll_oneoff` (one relative monotonic
;; clock, as `std::thread::sleep` on wasm32-wasip1 asks), then writes `slept` if the call
;; answered with the one clock event it was given, `bad event` if not.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\nbefore\n")
  (data (i32.const 128) "slept\n")
  (data (i32.const 144) "bad event\n")
  (func $write (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $ok i32)
    ;; iovec at 16: 4 bytes at 200
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (call $write (i32.const 64) (i32.const 33))
    ;; subscription at 256: userdata 0x5eed, clock, monotonic, timeout in ns, no flags
    (i64.store (i32.const 256) (i64.const 0x5eed))
    (i32.store8 (i32.const 264) (i32.const 0))
    (i32.store (i32.const 272) (i32.const 1))
    (i64.store (i32.const 280)
      (i64.mul (i64.extend_i32_u (i32.load (i32.const 200))) (i64.const 1000000)))
    (i64.store (i32.const 288) (i64.const 0))
    (i32.store16 (i32.const 296) (i32.const 0))
    ;; event at 320, count at 352
    (local.set $ok
      (i32.and
        (i32.and
          (i32.eqz (call $poll_oneoff (i32.const 256) (i32.const 320) (i32.const 1) (i32.const 352)))
          (i32.eq (i32.load (i32.const 352)) (i32.const 1)))
        (i32.and
          (i64.eq (i64.load (i32.const 320)) (i64.const 0x5eed))
          (i32.and
            (i32.eqz (i32.load16_u (i32.const 328)))
            (i32.eqz (i32.load8_u (i32.const 330)))))))
    (if (local.get $ok)
      (then (call $write (i32.const 128) (i32.const 6)))
      (else (call $write (i32.const 144) (i32.const 10))))))
