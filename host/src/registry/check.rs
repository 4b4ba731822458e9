//! A cheap structural check of a component before it is compiled.
//!
//! One linear pass over the binary (wasmparser, no validation) that refuses
//! what no real tool needs and what makes the compiler's time or memory
//! explode: too many core modules or functions, one huge function body,
//! too many locals, too deep nesting, a giant `br_table`. The limits are
//! generous. Measured on a componentize-py component (18 MB, CPython
//! inside) and StarlingMonkey (componentize-js's engine, 10 MB): at most
//! 14 core modules, 20k functions in one module, a 427 KB function, 483
//! locals, nesting 781, a `br_table` of 3,202 targets, locals × nesting
//! 20k. The defaults leave 5 to 50 times that. It is a fast first filter;
//! the compile child's limits (`compile`) are the bound.

use crate::error::{Error, Result};
use wasmparser::{Operator, Parser, Payload};

/// What one component may contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructureLimits {
    /// Core modules, nested ones included.
    pub max_modules: usize,
    /// Functions defined in one core module.
    pub max_functions: u32,
    /// Bytes of one function body.
    pub max_function_bytes: usize,
    /// Locals of one function (parameters excluded).
    pub max_locals: u64,
    /// Blocks, loops and ifs open at once in one function.
    pub max_nesting: usize,
    /// Targets of one `br_table`.
    pub max_br_table: u32,
    /// Locals × nesting depth of one function: a value per local is
    /// merged at every level, and the compiler's work grows with the
    /// product (1,000 locals in 100 nested loops: ~10 KB of wasm, seconds
    /// and hundreds of MB to compile).
    pub max_locals_times_nesting: u64,
}

impl Default for StructureLimits {
    fn default() -> Self {
        StructureLimits {
            max_modules: 1_000,
            max_functions: 200_000,
            max_function_bytes: 2 << 20,
            max_locals: 20_000,
            max_nesting: 2_000,
            max_br_table: 65_536,
            max_locals_times_nesting: 1_000_000,
        }
    }
}

/// Check `bytes` against `limits`; the error names the limit exceeded, and
/// where. Malformed binaries pass (wasmtime's validation names the fault).
pub fn check(bytes: &[u8], limits: &StructureLimits) -> Result<()> {
    let mut modules = 0usize;
    // Per module being read: its index and the functions it defines so far.
    let mut module: Option<(usize, u32)> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::ModuleSection { .. } => {
                modules += 1;
                if modules > limits.max_modules {
                    return Err(refuse(format!(
                        "the component has more than {} core modules (the limit)",
                        limits.max_modules
                    )));
                }
            }
            Payload::CodeSectionStart { count, .. } => {
                let index = modules;
                if count > limits.max_functions {
                    return Err(refuse(format!(
                        "core module {index} defines {count} functions; the limit is {}",
                        limits.max_functions
                    )));
                }
                module = Some((index, 0));
            }
            Payload::CodeSectionEntry(body) => {
                let Some((index, n)) = module.as_mut() else {
                    continue;
                };
                let where_ = format!("function {n} of core module {index}");
                *n += 1;
                check_body(&body, limits, &where_)?;
            }
            Payload::End(_) => module = None,
            _ => {}
        }
    }
    Ok(())
}

fn check_body(
    body: &wasmparser::FunctionBody<'_>,
    limits: &StructureLimits,
    at: &str,
) -> Result<()> {
    let size = body.range().len();
    if size > limits.max_function_bytes {
        return Err(refuse(format!(
            "{at} is {} long; the limit for one function is {}",
            super::compile::bytes_text(size as u64),
            super::compile::bytes_text(limits.max_function_bytes as u64)
        )));
    }
    let Ok(locals) = body.get_locals_reader() else {
        return Ok(());
    };
    let mut count = 0u64;
    for local in locals {
        let Ok((n, _)) = local else {
            return Ok(());
        };
        count += u64::from(n);
        if count > limits.max_locals {
            return Err(refuse(format!(
                "{at} declares more than {} locals (the limit)",
                limits.max_locals
            )));
        }
    }
    let Ok(mut ops) = body.get_operators_reader() else {
        return Ok(());
    };
    let mut nesting = 0usize;
    while !ops.eof() {
        let Ok(op) = ops.read() else {
            return Ok(());
        };
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. } => {
                nesting += 1;
                if nesting > limits.max_nesting {
                    return Err(refuse(format!(
                        "{at} nests blocks more than {} deep (the limit)",
                        limits.max_nesting
                    )));
                }
                let product = count.saturating_mul(nesting as u64);
                if product > limits.max_locals_times_nesting {
                    return Err(refuse(format!(
                        "{at} has {count} locals in blocks nested {nesting} deep ({product} locals × nesting); the limit is {}",
                        limits.max_locals_times_nesting
                    )));
                }
            }
            Operator::End => nesting = nesting.saturating_sub(1),
            Operator::BrTable { targets } if targets.len() > limits.max_br_table => {
                return Err(refuse(format!(
                    "{at} has a br_table with {} targets; the limit is {}",
                    targets.len(),
                    limits.max_br_table
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn refuse(message: String) -> Error {
    Error::invalid_component(format!("{message}: refused before compiling"))
}
