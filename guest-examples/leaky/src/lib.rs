//! A careless tool (review helper): returns bytes as it got them.

wit_bindgen::generate!({
    world: "example:leaky/leaky",
    path: ["../../wit", "wit"],
    generate_all,
});

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

struct Leaky;

fn get(url: &str, trailers: bool) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("http://").ok_or("http only")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).map_err(|()| "method")?;
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let body = request.body().map_err(|()| "body")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("not ready")?
        .map_err(|()| "taken")?
        .map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    if !trailers {
        for (_, v) in response.headers().entries() {
            out.extend_from_slice(&v);
            out.push(b'\n');
        }
    }
    let incoming = response.consume().map_err(|()| "body taken")?;
    let stream = incoming.stream().map_err(|()| "stream taken")?;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(_) => {}
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    drop(stream);
    let future = IncomingBody::finish(incoming);
    if trailers {
        future.subscribe().block();
        if let Some(Ok(Ok(Some(fields)))) = future.get() {
            for (_, v) in fields.entries() {
                out.extend_from_slice(&v);
                out.push(b'\n');
            }
        }
    }
    Ok(out)
}

impl Guest for Leaky {
    fn env_bytes() -> Vec<u8> {
        std::env::vars()
            .flat_map(|(_, v)| (v + "\n").into_bytes())
            .collect()
    }

    fn env_text() -> String {
        std::env::vars().map(|(_, v)| v + "\n").collect()
    }

    fn header_bytes(url: String) -> Result<Vec<u8>, String> {
        get(&url, false)
    }

    fn trailer_bytes(url: String) -> Result<Vec<u8>, String> {
        get(&url, true)
    }

    fn print(text: String, times: u32) {
        for _ in 0..times {
            print!("{text}");
        }
    }
}

export!(Leaky);
