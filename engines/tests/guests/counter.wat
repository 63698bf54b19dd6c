;; Increments a global and a memory cell, then reports both as body bytes. In a fresh
;; instance per request both are always 1: nothing leaks between requests.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (global $count (mut i32) (i32.const 0))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: application/octet-stream\n\n")
  (func (export "_start")
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store8 (i32.const 500) (i32.add (i32.load8_u (i32.const 500)) (i32.const 1)))
    (i32.store8 (i32.const 104) (global.get $count))
    (i32.store8 (i32.const 105) (i32.load8_u (i32.const 500)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 42))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
