;; Calls the URL given as the request body with GET and a header `x-test: 1`, and answers
;; one byte of wasi_experimental_http error code, then (on success) the status as two
;; little-endian bytes and the first 1 KiB of the response body.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "req"
    (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "body_read" (func $body_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\n")
  (data (i32.const 96) "GET")
  (data (i32.const 112) "x-test:1\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $code i32)
    (local $n i32)
    ;; The URL: stdin into 1024..2000.
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 900))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (local.set $code
      (call $req (i32.const 1024) (i32.load (i32.const 24)) (i32.const 96) (i32.const 3)
        (i32.const 112) (i32.const 9) (i32.const 0) (i32.const 0) (i32.const 2000) (i32.const 2004)))
    (i32.store8 (i32.const 4095) (local.get $code))
    (if (i32.eqz (local.get $code))
      (then
        (i32.store16 (i32.const 4096) (i32.load16_u (i32.const 2000)))
        (drop (call $body_read (i32.load (i32.const 2004)) (i32.const 4098) (i32.const 1024) (i32.const 2008)))
        (local.set $n (i32.add (i32.const 2) (i32.load (i32.const 2008))))
        (drop (call $close (i32.load (i32.const 2004))))))
    (call $write (i32.const 64) (i32.const 26))
    (call $write (i32.const 4095) (i32.add (i32.const 1) (local.get $n)))))
