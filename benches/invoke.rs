//! Latency of one invocation of a trivial function (`text-tools` `hello`)
//! through Toolhost's full path, against a bare wasmtime instantiate-and-call
//! of the same component, with the same engine settings, in the same run.
//!
//! Run: `cargo bench --bench invoke` (see benches/RESULTS.md).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let wasm = common::guest("text-tools");

    // Toolhost: request → gate → sandbox → gate → response.
    let host = common::host();
    let tool = common::tool("text-tools");
    let call = common::call("hello", json!({"name": "bench"}));
    let check = rt.block_on(host.invoke(&tool, &call));
    assert_eq!(check.result, Some(json!("Hello, bench!")));

    // Bare wasmtime: the same engine settings (fuel, epochs, pooling with
    // the same slot reset), instantiate and call.
    let mut pool = PoolingAllocationConfig::default();
    pool.linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut cfg = Config::new();
    cfg.consume_fuel(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&cfg).unwrap();
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    linker
        .instance("toolhost:tool/log@0.1.0")
        .unwrap()
        .func_new("emit", |_, _, _, _| Ok(()))
        .unwrap();
    let component = Component::from_file(&engine, &wasm).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let export = component.get_export_index(None, "hello").unwrap();
    let bare = || async {
        let mut store = Store::new(
            &engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                http: WasiHttpCtx::new(),
            },
        );
        store.set_fuel(1_000_000_000).unwrap();
        store.set_epoch_deadline(1_000_000);
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let func = instance.get_func(&mut store, export).unwrap();
        let mut results = [Val::Bool(false)];
        func.call_async(&mut store, &[Val::String("bench".into())], &mut results)
            .await
            .unwrap();
        results
    };
    assert!(matches!(&rt.block_on(bare())[0], Val::String(s) if s == "Hello, bench!"));

    let mut group = c.benchmark_group("invoke-hello");
    group
        .measurement_time(Duration::from_secs(8))
        .sample_size(200);
    group.bench_function("wasmtime-bare", |b| b.to_async(&rt).iter(bare));
    group.bench_function("toolhost-full-path", |b| {
        b.to_async(&rt).iter(|| host.invoke(&tool, &call))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
