//! The module shape every engine accepts, checked once before compiling, so that a module
//! is accepted or refused the same way whichever engine runs it: a WASI command (`_start`
//! and `memory` exported, only WASI functions imported, with their signatures), within the
//! memory and table limits of wasmtime's instance pool, which wasmi alone would not enforce.

use wasmparser::{CompositeInnerType, ExternalKind, Parser, Payload, TypeRef, ValType};

use crate::abi::ValKind;
use crate::wasi;
use crate::{CompileError, EngineConfig};

/// A function signature in the kinds WASI uses (`None` for any other value type).
type Signature = (Vec<Option<ValKind>>, Vec<Option<ValKind>>);

fn kind_of(t: &ValType) -> Option<ValKind> {
    match t {
        ValType::I32 => Some(ValKind::I32),
        ValType::I64 => Some(ValKind::I64),
        _ => None,
    }
}

/// Tables one module may have.
pub const MAX_TABLES: u32 = 4;

/// Elements one table may have, initially or after growing.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Checks the module's imports, exports, memories and tables against what every engine
/// provides.
pub fn check(wasm: &[u8], config: &EngineConfig) -> Result<(), CompileError> {
    let invalid = |e: wasmparser::BinaryReaderError| CompileError::Invalid(e.message().to_owned());
    let bad_index = || CompileError::Invalid("type or function index out of range".to_owned());
    // Signature of each type index (`None` for non-function types), and the type index of
    // each function index, imports first.
    let mut types: Vec<Option<Signature>> = Vec::new();
    let mut funcs: Vec<u32> = Vec::new();
    let signature = |types: &[Option<Signature>], t: u32| types.get(t as usize).cloned().flatten();
    let mut memories = 0u32;
    let mut tables = 0u32;
    let (mut has_start, mut has_memory) = (false, false);
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(section) => {
                for group in section {
                    for sub in group.map_err(invalid)?.into_types() {
                        types.push(match &sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some((
                                f.params().iter().map(kind_of).collect(),
                                f.results().iter().map(kind_of).collect(),
                            )),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(imports) => {
                for import in imports {
                    let import = import.map_err(invalid)?;
                    let unsupported = || CompileError::UnsupportedImport {
                        module: import.module.to_owned(),
                        name: import.name.to_owned(),
                    };
                    let TypeRef::Func(t) = import.ty else {
                        return Err(unsupported());
                    };
                    let (params, results) = signature(&types, t).ok_or_else(bad_index)?;
                    match import.module {
                        wasi::MODULE => wasi::check_import(import.name, &params, &results)
                            .map(drop)
                            .map_err(CompileError::ImportSignature)?,
                        crate::outbound::MODULE => {
                            crate::outbound::check_import(import.name, &params, &results)
                                .map_err(CompileError::ImportSignature)?
                        }
                        _ => return Err(unsupported()),
                    }
                    funcs.push(t);
                }
            }
            Payload::FunctionSection(section) => {
                for t in section {
                    funcs.push(t.map_err(invalid)?);
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.map_err(invalid)?;
                    match (export.name, export.kind) {
                        ("_start", ExternalKind::Func) => {
                            let t = *funcs.get(export.index as usize).ok_or_else(bad_index)?;
                            let (params, results) = signature(&types, t).ok_or_else(bad_index)?;
                            has_start = params.is_empty() && results.is_empty();
                        }
                        ("memory", ExternalKind::Memory) => has_memory = true,
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
    if !has_start {
        return Err(CompileError::MissingStart);
    }
    if !has_memory {
        return Err(CompileError::MissingMemory);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a module made of `items` plus a `_start` export.
    fn check_wat(items: &str) -> Result<(), CompileError> {
        let config = EngineConfig {
            max_instances: 1,
            max_memory_bytes: 1 << 20,
        };
        let wat = format!("(module {items} (func (export \"_start\")))");
        check(&wat::parse_str(wat).unwrap(), &config)
    }

    #[test]
    fn shapes_every_engine_runs_are_accepted() {
        assert_eq!(
            check_wat(r#"(memory (export "memory") 16) (table 10 funcref)"#),
            Ok(())
        );
    }

    #[test]
    fn shapes_some_engine_cannot_run_are_refused() {
        let refused = |items: &str| matches!(check_wat(items), Err(CompileError::Invalid(_)));
        assert!(
            refused(r#"(memory (export "memory") 17)"#),
            "over the memory limit"
        );
        assert!(
            refused(r#"(memory (export "memory") 1) (memory 1)"#),
            "two memories"
        );
        assert!(
            refused(r#"(memory (export "memory") i64 1)"#),
            "64-bit memory"
        );
        assert!(
            refused(r#"(memory (export "memory") 1) (table 100001 funcref)"#),
            "huge table"
        );
        let five_tables = "(table 1 funcref) ".repeat(5);
        assert!(refused(&format!(
            r#"(memory (export "memory") 1) {five_tables}"#
        )));
        assert!(
            matches!(
                check(b"\0asm\x01\0\0\0\x05", &EngineConfig::default()),
                Err(CompileError::Invalid(_))
            ),
            "truncated"
        );
    }

    #[test]
    fn only_wasi_commands_are_accepted() {
        let memory = r#"(memory (export "memory") 1)"#;
        assert_eq!(check_wat("(memory 1)"), Err(CompileError::MissingMemory));
        let no_start = wat::parse_str(format!("(module {memory})")).unwrap();
        assert_eq!(
            check(&no_start, &EngineConfig::default()),
            Err(CompileError::MissingStart)
        );
        assert!(matches!(
            check_wat(&format!(r#"(import "env" "f" (func)) {memory}"#)),
            Err(CompileError::UnsupportedImport { .. })
        ));
        assert!(matches!(
            check_wat(r#"(import "wasi_snapshot_preview1" "memory" (memory 1))"#),
            Err(CompileError::UnsupportedImport { .. })
        ));
        assert!(matches!(
            check_wat(&format!(
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32))) {memory}"#
            )),
            Err(CompileError::ImportSignature(_))
        ));
        assert_eq!(
            check_wat(&format!(
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) {memory}"#
            )),
            Ok(())
        );
    }
}
