//! Regression tests for attacks found by adversarial testing (issue 10).
mod common;
#[path = "attacks/compile.rs"]
mod compile;
