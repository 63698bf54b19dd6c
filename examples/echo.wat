;; Echoes what a guest sees: its CGI environment (one KEY=VALUE per line), its argv (one
;; ARG=value per line), a blank line, then the request body from stdin. Handy for checking
;; routing and headers.
;;
;; Memory map: 0..16 scratch (iovec, counts), 16..48 header text,
;; 4096.. argv/environ pointer arrays, 16384.. strings, 131072.. stdin buffer (64 KiB).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (memory (export "memory") 3)
  (data (i32.const 16) "Content-Type: text/plain\n\n")
  (data (i32.const 48) "ARG=")

  ;; write(ptr, len) to stdout
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; turn NULs into newlines in [ptr, ptr+len)
  (func $nul_to_newline (param $ptr i32) (param $len i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $ptr)))
          (then (i32.store8 (local.get $ptr) (i32.const 10))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next))))

  (func (export "_start")
    (local $size i32) (local $count i32) (local $i i32) (local $p i32) (local $n i32)
    (call $write (i32.const 16) (i32.const 26))
    ;; environment
    (drop (call $environ_sizes_get (i32.const 8) (i32.const 12)))
    (local.set $size (i32.load (i32.const 12)))
    (drop (call $environ_get (i32.const 4096) (i32.const 16384)))
    (call $nul_to_newline (i32.const 16384) (local.get $size))
    (call $write (i32.const 16384) (local.get $size))
    ;; argv, one ARG= line each
    (drop (call $args_sizes_get (i32.const 8) (i32.const 12)))
    (local.set $count (i32.load (i32.const 8)))
    (local.set $size (i32.load (i32.const 12)))
    (drop (call $args_get (i32.const 4096) (i32.const 16384)))
    (call $nul_to_newline (i32.const 16384) (local.get $size))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $p (i32.load (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 2)))))
        ;; each arg runs to its newline
        (local.set $n (i32.const 0))
        (block $eol
          (loop $scan
            (br_if $eol (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $n))) (i32.const 10)))
            (local.set $n (i32.add (local.get $n) (i32.const 1)))
            (br $scan)))
        (call $write (i32.const 48) (i32.const 4))
        (call $write (local.get $p) (i32.add (local.get $n) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $write (i32.const 40) (i32.const 1))
    ;; body: copy stdin to stdout
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.const 131072))
        (i32.store (i32.const 4) (i32.const 65536))
        (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $eof (i32.eqz (i32.load (i32.const 8))))
        (call $write (i32.const 131072) (i32.load (i32.const 8)))
        (br $more)))))
