//! The IC's instruction costs, so that every figure this engine reports is what a mainnet
//! application subnet would charge for the same wasm.
//!
//! Sources (dfinity/ic, read in December 2026):
//! - per-operator weights: `rs/embedders/src/wasm_utils/instrumentation.rs`,
//!   `instruction_to_cost` (32-bit heap), and the same file's `injections`: every function
//!   starts at 1, bulk memory instructions are charged their size argument at run time on top;
//! - system-call overheads: `rs/embedders/src/wasmtime_embedder/system_api_complexity.rs`,
//!   module `overhead` (500 for most calls) and `overhead_native` (stable memory, which
//!   mainnet runs as wasm-native stable memory);
//! - per-byte charges: `rs/embedders/src/wasmtime_embedder/linker.rs`
//!   (`charge_for_cpu_and_mem`: 1 instruction per byte copied on application subnets;
//!   `BYTE_TRANSMISSION_COST_FACTOR` = 50 per byte for `msg_reply_data_append`, `msg_reject` and
//!   `call_data_append`), `rs/embedders/src/wasm_utils/system_api_replacements.rs` (stable
//!   read/write: overhead + length, plus the dirty-page overhead per newly written 4 KiB page),
//!   `rs/config/src/subnet_config.rs` (`DEFAULT_DIRTY_PAGE_OVERHEAD` = 1,000 on application
//!   subnets).
//!
//! What the engine charges where: operator weights and system-call overheads are static, so
//! the instrumentation adds them to the cost of the straight-line segment that contains them
//! ([`operator_cost`] with [`import_overhead`] for calls to imports); byte counts are known
//! only at run time, so bulk memory instructions charge their length in injected code and the
//! host functions charge [`PER_BYTE`] / [`PER_TRANSMITTED_BYTE`] / [`DIRTY_STABLE_PAGE`].

use wasmparser::Operator;

/// Instructions per byte a system call copies between the heap and the system.
pub const PER_BYTE: u64 = 1;
/// Instructions per byte of a reply, reject message or outgoing call argument (the IC's
/// `BYTE_TRANSMISSION_COST_FACTOR`).
pub const PER_TRANSMITTED_BYTE: u64 = 50;
/// Instructions for each 4 KiB stable-memory page a message writes for the first time
/// (application subnets).
pub const DIRTY_STABLE_PAGE: u64 = 1_000;
/// Every function call starts with this charge (empty functions are not free).
pub const FUNCTION_ENTRY: u64 = 1;

/// Fixed overhead of a call to the imported function `module.name`, on top of the `call`
/// instruction itself. Imports outside `ic0` (none on the IC) cost nothing extra.
pub fn import_overhead(module: &str, name: &str) -> u64 {
    if module != "ic0" {
        return 0;
    }
    match name {
        // Wasm-native stable memory (`overhead_native`): size is a plain `memory.size`.
        "stable_size" | "stable64_size" => 0,
        "stable_read" | "stable64_read" | "stable_write" | "stable64_write" => 20,
        "stable_grow" | "stable64_grow" => 100,
        "debug_print" => 100,
        "performance_counter" => 200,
        "is_controller" => 1_000,
        "call_new" => 1_500,
        "call_perform" => 5_000,
        // Everything else, from `accept_message` to `time` and `trap`.
        _ => 500,
    }
}

/// Instructions the IC charges for one execution of `op` (32-bit heap), besides the run-time
/// length of bulk memory instructions.
pub fn operator_cost(op: &Operator<'_>) -> u64 {
    use Operator as O;
    match op {
        // Structure only.
        O::Block { .. } | O::Loop { .. } | O::Else | O::End => 0,

        // Integer division and remainder.
        O::I32DivS
        | O::I32DivU
        | O::I32RemS
        | O::I32RemU
        | O::I64DivS
        | O::I64DivU
        | O::I64RemS
        | O::I64RemU => 10,

        // Floating point.
        O::F32Add
        | O::F32Sub
        | O::F32Mul
        | O::F32Ceil
        | O::F32Floor
        | O::F32Trunc
        | O::F32Nearest
        | O::F64Add
        | O::F64Sub
        | O::F64Mul
        | O::F64Ceil
        | O::F64Floor
        | O::F64Trunc
        | O::F64Nearest
        | O::F32Copysign => 2,
        O::F32Div | O::F64Copysign => 3,
        O::F64Div | O::F32Sqrt => 5,
        O::F64Sqrt => 8,
        O::F32Min | O::F32Max | O::F64Min | O::F64Max => 18,
        O::F32Eq
        | O::F32Ne
        | O::F32Lt
        | O::F32Gt
        | O::F32Le
        | O::F32Ge
        | O::F64Eq
        | O::F64Ne
        | O::F64Lt
        | O::F64Gt
        | O::F64Le
        | O::F64Ge => 3,
        O::F32ConvertI32S | O::F64ConvertI64S | O::F32ConvertI64S | O::F64ConvertI32S => 3,
        O::F64ConvertI32U | O::F32ConvertI64U | O::F32ConvertI32U | O::F64ConvertI64U => 16,
        O::I32TruncF32S
        | O::I32TruncF32U
        | O::I32TruncF64S
        | O::I32TruncF64U
        | O::I64TruncF32S
        | O::I64TruncF32U
        | O::I64TruncF64S
        | O::I64TruncF64U
        | O::I32TruncSatF32S
        | O::I32TruncSatF32U
        | O::I32TruncSatF64S
        | O::I32TruncSatF64U
        | O::I64TruncSatF32S
        | O::I64TruncSatF32U
        | O::I64TruncSatF64S
        | O::I64TruncSatF64U => 20,

        // Globals, tables, memory management.
        O::GlobalGet { .. } | O::GlobalSet { .. } => 2,
        O::TableGet { .. } | O::TableSet { .. } | O::RefIsNull => 5,
        O::MemorySize { .. } => 20,
        O::TableSize { .. } => 100,
        O::MemoryFill { .. }
        | O::MemoryCopy { .. }
        | O::MemoryInit { .. }
        | O::TableFill { .. }
        | O::TableCopy { .. }
        | O::TableInit { .. } => 100,
        O::MemoryGrow { .. } | O::TableGrow { .. } | O::DataDrop { .. } | O::ElemDrop { .. } => 300,
        O::RefFunc { .. } => 130,

        // Control.
        O::If { .. } | O::Br { .. } | O::BrIf { .. } | O::BrTable { .. } => 2,
        O::Call { .. } => 5,
        O::CallIndirect { .. } => 10,
        O::ReturnCall { .. } => 3,
        O::ReturnCallIndirect { .. } => 60,

        // SIMD operators weighted above 1.
        O::I8x16Shuffle { .. }
        | O::I8x16Popcnt
        | O::I8x16Shl
        | O::I8x16ShrS
        | O::I32x4ExtAddPairwiseI16x8U
        | O::I64x2ShrS
        | O::I32x4TruncSatF64x2UZero => 3,
        O::I8x16LtU
        | O::I8x16GtU
        | O::I16x8LtU
        | O::I16x8GtU
        | O::I32x4LtU
        | O::I32x4GtU
        | O::I8x16ShrU
        | O::I16x8ExtAddPairwiseI8x16U
        | O::I16x8Shl
        | O::I16x8ShrS
        | O::I16x8ShrU
        | O::I16x8ExtMulHighI8x16S
        | O::I16x8ExtMulHighI8x16U
        | O::I32x4Shl
        | O::I32x4ShrS
        | O::I32x4ShrU
        | O::I32x4Mul
        | O::I32x4ExtMulLowI16x8S
        | O::I32x4ExtMulHighI16x8S
        | O::I32x4ExtMulLowI16x8U
        | O::I32x4ExtMulHighI16x8U
        | O::I64x2Shl
        | O::I64x2ShrU
        | O::F32x4Ceil
        | O::F32x4Floor
        | O::F32x4Trunc
        | O::F32x4Nearest
        | O::F32x4Abs
        | O::F32x4Neg
        | O::F32x4Add
        | O::F32x4Sub
        | O::F32x4Mul
        | O::F64x2Ceil
        | O::F64x2Floor
        | O::F64x2Trunc
        | O::F64x2Nearest
        | O::F64x2Abs
        | O::F64x2Neg
        | O::F64x2Add
        | O::F64x2Sub
        | O::F64x2Mul
        | O::I32x4TruncSatF32x4S
        | O::I32x4TruncSatF64x2SZero => 2,
        O::I64x2Mul
        | O::F32x4Min
        | O::F32x4Max
        | O::F64x2Min
        | O::I32x4TruncSatF32x4U
        | O::F32x4ConvertI32x4U => 4,
        O::F32x4Sqrt | O::F64x2Max => 5,
        O::F32x4Div => 10,
        O::F64x2Div => 12,
        O::F64x2Sqrt => 14,

        // Constants, locals, loads and stores, integer arithmetic and comparisons, conversions
        // between integer widths, `drop`, `select`, `nop`, `return`, `unreachable`, the other
        // SIMD operators: 1.
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ic_weights_of_a_few_operators() {
        // One operator of each weight class, pinned to the IC's table (instrumentation.rs).
        use Operator as O;
        for (op, cost) in [
            (
                O::Block {
                    blockty: wasmparser::BlockType::Empty,
                },
                0,
            ),
            (O::End, 0),
            (O::I32Const { value: 1 }, 1),
            (O::LocalGet { local_index: 0 }, 1),
            (O::I32Add, 1),
            (O::Drop, 1),
            (O::GlobalSet { global_index: 0 }, 2),
            (O::MemorySize { mem: 0 }, 20),
            (O::I64RemU, 10),
            (O::F64Sqrt, 8),
            (O::F32Min, 18),
            (O::F64ConvertI64U, 16),
            (O::I64TruncSatF64S, 20),
            (O::Call { function_index: 0 }, 5),
            (
                O::CallIndirect {
                    type_index: 0,
                    table_index: 0,
                },
                10,
            ),
            (O::MemoryGrow { mem: 0 }, 300),
            (
                O::MemoryCopy {
                    dst_mem: 0,
                    src_mem: 0,
                },
                100,
            ),
            (O::BrIf { relative_depth: 0 }, 2),
            (O::RefFunc { function_index: 0 }, 130),
            (O::I64x2Mul, 4),
        ] {
            assert_eq!(operator_cost(&op), cost, "{op:?}");
        }
    }

    #[test]
    fn system_call_overheads_follow_the_ic_table() {
        assert_eq!(import_overhead("ic0", "msg_arg_data_copy"), 500);
        assert_eq!(import_overhead("ic0", "msg_reply"), 500);
        assert_eq!(import_overhead("ic0", "call_new"), 1_500);
        assert_eq!(import_overhead("ic0", "call_perform"), 5_000);
        assert_eq!(import_overhead("ic0", "stable64_write"), 20);
        assert_eq!(import_overhead("ic0", "stable64_size"), 0);
        assert_eq!(import_overhead("ic0", "performance_counter"), 200);
        assert_eq!(import_overhead("env", "anything"), 0);
    }
}
