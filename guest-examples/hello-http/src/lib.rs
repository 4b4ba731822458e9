//! A hello `wasi:http/proxy` component: the peer `wasmtime serve` runs in
//! `benches/serve.sh`, doing what `text-tools`' `hello` does (format a
//! greeting, answer JSON). Not a Toolhost tool: tools export functions.

wit_bindgen::generate!({
    world: "wasi:http/proxy@0.2.12",
    path: ["../../wit"],
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let body = format!("{{\"result\":\"Hello, {}!\"}}", "world");
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"application/json".to_vec(),
        )])
        .expect("valid header");
        let response = OutgoingResponse::new(headers);
        let outgoing = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().expect("stream");
        stream
            .blocking_write_and_flush(body.as_bytes())
            .expect("write");
        drop(stream);
        OutgoingBody::finish(outgoing, None).expect("finish");
    }
}

export!(Hello);
