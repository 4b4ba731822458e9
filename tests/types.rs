//! Every WIT value type round-trips through JSON, values match the published
//! JSON Schemas, and bad arguments get errors that name their JSON path.

mod common;

use common::{call, host, tool};
use serde_json::{Value, json};
use toolhost::{ErrorKind, schema};

async fn echo(function: &str, v: Value) -> Value {
    echo_arg(function, "v", v).await
}

async fn echo_arg(function: &str, param: &str, v: Value) -> Value {
    let types = tool("types");
    let args = json!({ param: v });
    let out = host().invoke(&types, &call(function, args.clone())).await;
    assert!(out.ok, "{function}({v}): {:?}", out.error);
    let result = out.result.unwrap();
    // The argument and the result both validate against the published schemas.
    let (f, _) = types.function(function).unwrap();
    let params = schema::parameters(f);
    assert!(
        jsonschema::is_valid(&params, &args),
        "{function}: argument {v} does not match its schema {params}"
    );
    let result_schema = schema::result(f);
    assert!(
        jsonschema::is_valid(&result_schema, &result),
        "{function}: result {result} does not match its schema {result_schema}"
    );
    result
}

async fn roundtrip(function: &str, v: Value) {
    assert_eq!(echo(function, v.clone()).await, v, "{function}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scalars_round_trip_at_their_limits() {
    roundtrip("echo-bool", json!(true)).await;
    roundtrip("echo-bool", json!(false)).await;
    for (f, min, max) in [
        ("echo-s8", json!(i8::MIN), json!(i8::MAX)),
        ("echo-u8", json!(0), json!(u8::MAX)),
        ("echo-s16", json!(i16::MIN), json!(i16::MAX)),
        ("echo-u16", json!(0), json!(u16::MAX)),
        ("echo-s32", json!(i32::MIN), json!(i32::MAX)),
        ("echo-u32", json!(0), json!(u32::MAX)),
        ("echo-s64", json!(i64::MIN), json!(i64::MAX)),
        ("echo-u64", json!(0), json!(u64::MAX)),
    ] {
        roundtrip(f, min).await;
        roundtrip(f, max).await;
    }
    roundtrip("echo-f64", json!(1.5e300)).await;
    roundtrip("echo-f64", json!(-0.1)).await;
    roundtrip("echo-f32", json!(0.5)).await;
    roundtrip("echo-f64", json!("NaN")).await;
    roundtrip("echo-f64", json!("Infinity")).await;
    roundtrip("echo-f32", json!("-Infinity")).await;
    roundtrip("echo-char", json!("é")).await;
    roundtrip("echo-char", json!("🦀")).await;
    roundtrip("echo-string", json!("")).await;
    roundtrip("echo-string", json!("multi\nline \"quoted\" ✓")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compound_types_round_trip() {
    roundtrip("echo-bytes", json!("AAECA/8=")).await;
    // An array of bytes is also accepted on input (outside the schema); output is base64.
    let out = host()
        .invoke(
            &tool("types"),
            &call("echo-bytes", json!({"v": [0, 1, 2, 3, 255]})),
        )
        .await;
    assert_eq!(out.result, Some(json!("AAECA/8=")));
    roundtrip("echo-list", json!([["a", "b"], [], ["c"]])).await;
    roundtrip("echo-tuple", json!([7, "seven", true])).await;
    roundtrip("echo-shape", json!({"circle": 2.5})).await;
    roundtrip("echo-shape", json!({"rect": [1.0, 2.0]})).await;
    roundtrip("echo-shape", json!("point")).await;
    // `{"point": null}` is accepted too (outside the schema).
    let out = host()
        .invoke(
            &tool("types"),
            &call("echo-shape", json!({"v": {"point": null}})),
        )
        .await;
    assert_eq!(out.result, Some(json!("point")));
    roundtrip("echo-tier", json!("enterprise")).await;
    roundtrip("echo-perms", json!(["read", "admin"])).await;
    roundtrip("echo-perms", json!([])).await;
    roundtrip("echo-option", json!(null)).await;
    roundtrip("echo-option", json!("here")).await;
    roundtrip("echo-nested-option", json!(null)).await;
    roundtrip("echo-nested-option", json!({"some": null})).await;
    roundtrip("echo-nested-option", json!({"some": 5})).await;
    roundtrip("echo-result", json!({"ok": 1})).await;
    roundtrip("echo-result", json!({"err": "nope"})).await;
    let ada = json!({"name": "Ada", "tier": "pro", "tags": ["vip"], "nickname": null});
    assert_eq!(echo_arg("echo-customer", "c", ada.clone()).await, ada);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_of_every_type_round_trips() {
    let everything = json!({
        "b": true, "v-s8": -8, "v-u8": 8, "v-s16": -16, "v-u16": 16, "v-s32": -32, "v-u32": 32,
        "v-s64": -64, "v-u64": 18446744073709551615u64, "v-f32": 3.25, "v-f64": 6.5,
        "c": "z", "s": "str", "bytes": "aGVsbG8=", "nums": [1, -2, 3],
        "pair": [1, "one"], "shape": {"rect": [3.0, 4.0]}, "tier": "free",
        "perms": ["write"], "maybe": 4, "maybe-maybe": {"some": null},
        "outcome": {"err": "bad"}, "unit-outcome": {"ok": null},
        "customer": {"name": "Bo", "tier": "enterprise", "tags": [], "nickname": "b"}
    });
    roundtrip("echo-everything", everything).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_fields_and_params_may_be_omitted_and_snake_case_is_accepted() {
    let out = echo_arg(
        "echo-customer",
        "c",
        json!({"name": "Ann", "tier": "free", "tags": []}),
    )
    .await;
    assert_eq!(out["nickname"], Value::Null);
    let types = tool("types");
    let out = host()
        .invoke(
            &types,
            &call("echo_everything", json!({"v": {
                "b": false, "v_s8": 0, "v_u8": 0, "v_s16": 0, "v_u16": 0, "v_s32": 0, "v_u32": 0,
                "v_s64": 0, "v_u64": 0, "v_f32": 0.0, "v_f64": 0.0, "c": "a", "s": "", "bytes": "",
                "nums": [], "pair": [0, ""], "shape": "point", "tier": "pro", "perms": [],
                "maybe_maybe": null, "outcome": {"ok": 0}, "unit_outcome": {"err": null},
                "customer": {"name": "", "tier": "pro", "tags": []}
            }})),
        )
        .await;
    assert!(out.ok, "{:?}", out.error);
    assert_eq!(out.result.unwrap()["maybe"], Value::Null);
}

async fn bad_args(function: &str, args: Value) -> String {
    let out = host().invoke(&tool("types"), &call(function, args)).await;
    assert_eq!(out.error_kind(), Some(ErrorKind::InvalidArgs), "{out:?}");
    assert_eq!(out.usage.fuel, 0, "invalid arguments never reach the guest");
    out.error.unwrap().message
}

#[tokio::test(flavor = "multi_thread")]
async fn argument_errors_name_the_json_path() {
    let c = json!({"name": "Ann", "tier": "gold", "tags": []});
    let msg = bad_args("describe", json!({"c": c, "limit": 1, "verbose": true})).await;
    assert!(
        msg.starts_with("args.c.tier: expected one of free, pro, enterprise"),
        "{msg}"
    );
    let msg = bad_args("echo-u8", json!({"v": 256})).await;
    assert!(
        msg.starts_with("args.v: 256 is out of range for u8"),
        "{msg}"
    );
    let msg = bad_args("echo-s8", json!({"v": 1.5})).await;
    assert!(msg.starts_with("args.v: expected an integer"), "{msg}");
    // Integers past 2^53 spelled so that they parse as doubles were another
    // integer before rounding: refused, never taken as the rounded value.
    for text in [
        "-9223372036854775809",
        "-9223372036854775808.5",
        "12345678901234567890.0",
        "1e19",
        "9007199254740993.0",
        "9007199254740992.0",
    ] {
        let v: Value = serde_json::from_str(text).unwrap();
        let f = if text.starts_with('-') {
            "echo-s64"
        } else {
            "echo-u64"
        };
        let msg = bad_args(f, json!({ "v": v })).await;
        assert!(
            msg.starts_with("args.v: expected an integer") && msg.contains("2^53"),
            "{text}: {msg}"
        );
    }
    // Below it, a whole number written as a float is that integer.
    assert_eq!(echo("echo-s8", json!(5.0)).await, json!(5));
    assert_eq!(
        echo("echo-s64", json!(-9_007_199_254_740_991.0)).await,
        json!(-9_007_199_254_740_991_i64)
    );
    let msg = bad_args("echo-list", json!({"v": [["a"], ["b", 3]]})).await;
    assert!(msg.starts_with("args.v[1][1]: expected a string"), "{msg}");
    let msg = bad_args("echo-tuple", json!({"v": [1, "x"]})).await;
    assert!(
        msg.starts_with("args.v: expected a tuple of 3 items"),
        "{msg}"
    );
    let msg = bad_args("echo-char", json!({"v": "ab"})).await;
    assert!(
        msg.starts_with("args.v: expected exactly one character"),
        "{msg}"
    );
    let msg = bad_args("echo-shape", json!({"v": {"circle": "big"}})).await;
    assert!(msg.starts_with("args.v.circle: expected a number"), "{msg}");
    let msg = bad_args("echo-shape", json!({"v": "circle"})).await;
    assert!(msg.contains("needs a payload"), "{msg}");
    let msg = bad_args("echo-perms", json!({"v": ["read", "root"]})).await;
    assert!(
        msg.starts_with("args.v[1]: expected one of read, write, admin"),
        "{msg}"
    );
    let msg = bad_args("echo-result", json!({"v": {"maybe": 1}})).await;
    assert!(
        msg.starts_with("args.v: expected key `ok` or `err`"),
        "{msg}"
    );
    let msg = bad_args("echo-bytes", json!({"v": "not base64!"})).await;
    assert!(msg.starts_with("args.v: expected base64"), "{msg}");
    let msg = bad_args(
        "echo-customer",
        json!({"c": {"name": "A", "tier": "pro", "tags": [], "age": 3}}),
    )
    .await;
    assert!(msg.contains("unknown field `age`"), "{msg}");
    let msg = bad_args("echo-customer", json!({"c": {"tier": "pro", "tags": []}})).await;
    assert!(
        msg.starts_with("args.c.name: missing required field"),
        "{msg}"
    );
    let msg = bad_args("echo-u32", json!({})).await;
    assert!(
        msg.starts_with("args.v: missing required argument"),
        "{msg}"
    );
    let msg = bad_args("echo-u32", json!({"v": 1, "w": 2})).await;
    assert!(msg.starts_with("args.w: unknown argument"), "{msg}");
    let msg = bad_args("echo-u32", json!([1])).await;
    assert!(msg.starts_with("args: expected a JSON object"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_are_found_by_every_documented_name() {
    let types = tool("types");
    let host = host();
    let div = |f: &str| call(f, json!({"a": 7, "b": 2}));
    // Top-level `divide` (f64) and `crm/divide` (s32) both exist.
    assert_eq!(
        host.invoke(&types, &div("divide")).await.result,
        Some(json!(3.5))
    );
    assert_eq!(
        host.invoke(&types, &div("crm/divide")).await.result,
        Some(json!({"ok": 3}))
    );
    assert_eq!(
        host.invoke(&types, &div("crm__divide")).await.result,
        Some(json!({"ok": 3}))
    );
    assert_eq!(
        host.invoke(&types, &div("example:types/crm/divide"))
            .await
            .result,
        Some(json!({"ok": 3}))
    );
    let zero = host
        .invoke(&types, &call("crm/divide", json!({"a": 1, "b": 0})))
        .await;
    assert!(zero.ok, "a tool's own error is data");
    assert_eq!(zero.result, Some(json!({"err": "division by zero"})));
    // Bare interface-function names resolve when unambiguous.
    let out = host.invoke(&types, &call("echo_u8", json!({"v": 3}))).await;
    assert_eq!(out.result, Some(json!(3)));
    let out = host.invoke(&types, &call("nothing", json!({}))).await;
    assert!(out.ok);
    assert_eq!(out.result, Some(Value::Null));
    let missing = host
        .invoke(&types, &call("launch-missiles", json!({})))
        .await;
    assert_eq!(missing.error_kind(), Some(ErrorKind::UnknownFunction));
    assert!(
        missing.error.unwrap().message.contains("crm/divide"),
        "lists what exists"
    );
}

#[test]
fn schemas_describe_wit_types_precisely() {
    let types = tool("types");
    let (f, _) = types.function("echo-everything").unwrap();
    let s = schema::parameters(f);
    let v = &s["properties"]["v"];
    assert_eq!(v["type"], "object");
    assert_eq!(v["additionalProperties"], false);
    let p = &v["properties"];
    assert_eq!(
        p["v-u8"],
        json!({"type": "integer", "minimum": 0, "maximum": 255})
    );
    assert_eq!(p["v-s64"]["minimum"], json!(i64::MIN));
    assert_eq!(p["v-u64"]["maximum"], json!(u64::MAX));
    assert_eq!(p["bytes"]["contentEncoding"], "base64");
    assert_eq!(p["tier"]["enum"], json!(["free", "pro", "enterprise"]));
    assert_eq!(p["perms"]["uniqueItems"], true);
    assert_eq!(p["pair"]["prefixItems"].as_array().unwrap().len(), 2);
    let required: Vec<&str> = v["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        required.contains(&"b")
            && !required.contains(&"maybe")
            && !required.contains(&"maybe-maybe")
    );
    // Names LLM APIs accept.
    let re = |n: &str| {
        n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    for f in &types.catalog().functions {
        assert!(re(&schema::api_name(f)), "{}", schema::api_name(f));
    }
}
