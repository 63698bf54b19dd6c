;; Spins forever: must be stopped at its deadline (504).
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
