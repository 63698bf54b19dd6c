;; The module WAGI's own dynamic-routes tests load, in WAT: `_routes` declares `/exact`
;; (run by `on_exact`), `/wildcard/...` (`on_wildcard`) and `/main` (`_start`). Each export
;; answers a description line, then its CGI environment, one KEY=VALUE per line.
;;
;; Memory map: 0..16 scratch (iovec, counts), 64.. text, 4096.. environ pointers,
;; 16384.. environ strings.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "/exact on_exact\n/wildcard/... on_wildcard\n/main _start\n")
  (data (i32.const 256) "Content-Type: text/plain\n\n")
  (data (i32.const 320) "This is the main entry point\n")
  (data (i32.const 384) "This is the .../exact handler\n")
  (data (i32.const 448) "This is the .../wildcard/... handler\n")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; The header, `description` (`len` bytes at `ptr`), then the environment.
  (func $answer (param $ptr i32) (param $len i32)
    (local $size i32) (local $p i32) (local $end i32)
    (call $write (i32.const 256) (i32.const 26))
    (call $write (local.get $ptr) (local.get $len))
    (drop (call $environ_sizes_get (i32.const 8) (i32.const 12)))
    (local.set $size (i32.load (i32.const 12)))
    (drop (call $environ_get (i32.const 4096) (i32.const 16384)))
    ;; NULs between the KEY=VALUE strings become newlines.
    (local.set $p (i32.const 16384))
    (local.set $end (i32.add (i32.const 16384) (local.get $size)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $p)))
          (then (i32.store8 (local.get $p) (i32.const 10))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (call $write (i32.const 16384) (local.get $size)))

  (func (export "_routes") (call $write (i32.const 64) (i32.const 55)))
  (func (export "_start") (call $answer (i32.const 320) (i32.const 29)))
  (func (export "on_exact") (call $answer (i32.const 384) (i32.const 30)))
  (func (export "on_wildcard") (call $answer (i32.const 448) (i32.const 37))))
