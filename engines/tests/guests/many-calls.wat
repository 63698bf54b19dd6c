;; Calls the URL given as the request body 17 times without closing a response, then closes
;; the first response and calls once more. Answers one byte of wasi_experimental_http error
;; code per call, in order: an instance may hold 16 responses open, so the 17th call is
;; refused (13, TOO_MANY_SESSIONS) and the one after a close succeeds again.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "req"
    (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_experimental_http" "close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\n")
  (data (i32.const 96) "GET")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  ;; One call: its code goes to 3000 + $i, its handle (on success) to 3100 + 4 * $i.
  (func $call (param $i i32)
    (i32.store8 (i32.add (i32.const 3000) (local.get $i))
      (call $req (i32.const 1024) (i32.load (i32.const 24)) (i32.const 96) (i32.const 3)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
        (i32.const 2000) (i32.add (i32.const 3100) (i32.mul (local.get $i) (i32.const 4))))))
  (func (export "_start")
    (local $i i32)
    ;; The URL: stdin into 1024..2000.
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 900))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (block $done (loop $again
      (br_if $done (i32.ge_u (local.get $i) (i32.const 17)))
      (call $call (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $again)))
    (drop (call $close (i32.load (i32.const 3100))))
    (call $call (i32.const 17))
    (call $write (i32.const 64) (i32.const 26))
    (call $write (i32.const 3000) (i32.const 18))))
