//! Exports an interface with a resource.

wit_bindgen::generate!({
    world: "example:resource-export/resource-export",
    path: ["../../wit", "wit"],
    generate_all,
});

use exports::example::resource_export::counters::{self, Counter, GuestCounter};
use std::cell::Cell;

struct Component;

struct MyCounter(Cell<u32>);

impl GuestCounter for MyCounter {
    fn new(start: u32) -> Self {
        MyCounter(Cell::new(start))
    }
    fn next(&self) -> u32 {
        let v = self.0.get();
        self.0.set(v + 1);
        v
    }
}

impl counters::Guest for Component {
    type Counter = MyCounter;
    fn make(start: u32) -> Counter {
        Counter::new(MyCounter::new(start))
    }
}

export!(Component);
