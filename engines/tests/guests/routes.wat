;; A WAGI module with sub-routes: `_routes` declares `/hello` (exact) and `/files/...`
;; (wildcard); each export answers with its own name, `_start` with "start".
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "/hello hello\n/files/... files\n")
  (data (i32.const 128) "Content-Type: text/plain\n\nstart")
  (data (i32.const 192) "Content-Type: text/plain\n\nhello")
  (data (i32.const 256) "Content-Type: text/plain\n\nfiles")
  (func $say (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_routes") (call $say (i32.const 64) (i32.const 30)))
  (func (export "_start") (call $say (i32.const 128) (i32.const 31)))
  (func (export "hello") (call $say (i32.const 192) (i32.const 31)))
  (func (export "files") (call $say (i32.const 256) (i32.const 31)))
  ;; Not an entrypoint: it takes a parameter.
  (func (export "takes_one") (param i32)))
