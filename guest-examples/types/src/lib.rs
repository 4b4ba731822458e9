//! Every WIT value type, echoed back: the host's JSON <-> WIT mapping round-trips.

wit_bindgen::generate!({
    world: "example:types/types",
    path: ["../../wit", "wit"],
    generate_all,
});

use exports::example::types::crm;
use exports::example::types::roundtrip::{self, Customer, Everything, Perms, Shape, Tier};

struct Types;

impl Guest for Types {
    fn divide(a: f64, b: f64) -> f64 {
        a / b
    }
}

impl crm::Guest for Types {
    fn divide(a: i32, b: i32) -> Result<i32, String> {
        if b == 0 {
            return Err("division by zero".to_string());
        }
        a.checked_div(b).ok_or_else(|| "overflow".to_string())
    }
}

impl roundtrip::Guest for Types {
    fn echo_bool(v: bool) -> bool { v }
    fn echo_s8(v: i8) -> i8 { v }
    fn echo_u8(v: u8) -> u8 { v }
    fn echo_s16(v: i16) -> i16 { v }
    fn echo_u16(v: u16) -> u16 { v }
    fn echo_s32(v: i32) -> i32 { v }
    fn echo_u32(v: u32) -> u32 { v }
    fn echo_s64(v: i64) -> i64 { v }
    fn echo_u64(v: u64) -> u64 { v }
    fn echo_f32(v: f32) -> f32 { v }
    fn echo_f64(v: f64) -> f64 { v }
    fn echo_char(v: char) -> char { v }
    fn echo_string(v: String) -> String { v }
    fn echo_bytes(v: Vec<u8>) -> Vec<u8> { v }
    fn echo_list(v: Vec<Vec<String>>) -> Vec<Vec<String>> { v }
    fn echo_tuple(v: (u32, String, bool)) -> (u32, String, bool) { v }
    fn echo_shape(v: Shape) -> Shape { v }
    fn echo_tier(v: Tier) -> Tier { v }
    fn echo_perms(v: Perms) -> Perms { v }
    fn echo_option(v: Option<String>) -> Option<String> { v }
    fn echo_nested_option(v: Option<Option<u32>>) -> Option<Option<u32>> { v }
    fn echo_result(v: Result<u32, String>) -> Result<u32, String> { v }
    fn echo_customer(c: Customer) -> Customer { c }
    fn echo_everything(v: Everything) -> Everything { v }
    fn describe(c: Customer, limit: u32, verbose: bool) -> String {
        let mut out = format!("{} ({:?})", c.name, c.tier);
        if verbose {
            let tags: Vec<_> = c.tags.iter().take(limit as usize).cloned().collect();
            out.push_str(&format!(" tags={}", tags.join(",")));
        }
        out
    }
    fn nothing() {}
}

export!(Types);
