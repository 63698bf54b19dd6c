//! The module shape every engine accepts, checked once before compiling, so that a module
//! is accepted or refused the same way whichever engine runs it. (wasmtime's instance pool
//! has fixed per-instance limits that wasmi alone would not enforce.)

use wasmparser::{Parser, Payload, TypeRef};

use crate::{CompileError, EngineConfig};

/// Tables one module may have.
pub const MAX_TABLES: u32 = 4;

/// Elements one table may have, initially or after growing.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Checks the module's memories and tables against what every engine provides.
pub fn check(wasm: &[u8], config: &EngineConfig) -> Result<(), CompileError> {
    let invalid = |e: wasmparser::BinaryReaderError| CompileError::Invalid(e.message().to_owned());
    let mut memories = 0u32;
    let mut tables = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(imports) => {
                for import in imports {
                    match import.map_err(invalid)?.ty {
                        TypeRef::Memory(_) => memories += 1,
                        TypeRef::Table(_) => tables += 1,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(section) => {
                for memory in section {
                    let memory = memory.map_err(invalid)?;
                    memories += 1;
                    if memory.memory64 || memory.shared {
                        return Err(CompileError::Invalid(
                            "64-bit and shared memories are not supported".to_owned(),
                        ));
                    }
                    let bytes = memory.initial.saturating_mul(1 << 16);
                    if bytes > config.max_memory_bytes as u64 {
                        return Err(CompileError::Invalid(format!(
                            "initial memory of {bytes} bytes is over the server's limit of {}",
                            config.max_memory_bytes
                        )));
                    }
                }
            }
            Payload::TableSection(section) => {
                for table in section {
                    let table = table.map_err(invalid)?;
                    tables += 1;
                    if table.ty.table64 || table.ty.initial > MAX_TABLE_ELEMENTS as u64 {
                        return Err(CompileError::Invalid(format!(
                            "a table may start with at most {MAX_TABLE_ELEMENTS} elements"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    if memories > 1 {
        return Err(CompileError::Invalid("more than one memory".to_owned()));
    }
    if tables > MAX_TABLES {
        return Err(CompileError::Invalid(format!(
            "more than {MAX_TABLES} tables"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_wat(wat: &str) -> Result<(), CompileError> {
        let config = EngineConfig {
            max_instances: 1,
            max_memory_bytes: 1 << 20,
        };
        check(&wat::parse_str(wat).unwrap(), &config)
    }

    #[test]
    fn shapes_every_engine_runs_are_accepted() {
        assert_eq!(check_wat("(module (memory 16) (table 10 funcref))"), Ok(()));
    }

    #[test]
    fn shapes_some_engine_cannot_run_are_refused() {
        assert!(
            check_wat("(module (memory 17))").is_err(),
            "over the memory limit"
        );
        assert!(
            check_wat("(module (memory 1) (memory 1))").is_err(),
            "two memories"
        );
        assert!(
            check_wat("(module (memory i64 1))").is_err(),
            "64-bit memory"
        );
        assert!(
            check_wat("(module (table 100001 funcref))").is_err(),
            "huge table"
        );
        assert!(check_wat("(module (table 1 funcref) (table 1 funcref) (table 1 funcref) (table 1 funcref) (table 1 funcref))").is_err());
        assert!(
            check(b"\0asm\x01\0\0\0\x05", &EngineConfig::default()).is_err(),
            "truncated"
        );
    }
}
