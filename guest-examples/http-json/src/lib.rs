//! An HTTP JSON client tool, over `wasi:http/outgoing-handler`.

wit_bindgen::generate!({
    world: "example:http-json/http-json",
    path: ["../../wit", "wit"],
    generate_all,
});

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

struct HttpJson;

/// `scheme://authority/path?query` split into its parts.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("not an absolute URL: {url:?}"))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((scheme, authority, path))
}

fn send(method: Method, url: &str, body: Option<&str>) -> Result<Response, String> {
    send_with(method, url, body, None)
}

fn send_with(method: Method, url: &str, body: Option<&str>, extra: Option<(&str, &str)>) -> Result<Response, String> {
    let (scheme, authority, path) = split_url(url)?;
    let headers = Fields::new();
    if let Some((name, value)) = extra {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| format!("{e:?}"))?;
    }
    headers
        .append("accept", b"application/json")
        .map_err(|e| format!("{e:?}"))?;
    if body.is_some() {
        headers
            .append("content-type", b"application/json")
            .map_err(|e| format!("{e:?}"))?;
    }
    let request = OutgoingRequest::new(headers);
    request.set_method(&method).map_err(|()| "bad method")?;
    request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad authority {authority:?}"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("bad path {path:?}"))?;
    let outgoing_body = request.body().map_err(|()| "request body taken")?;
    if let Some(body) = body {
        let stream = outgoing_body.write().map_err(|()| "body stream taken")?;
        for chunk in body.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the request body: {e:?}"))?;
        }
    }
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(outgoing_body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("response not ready")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let incoming = response.consume().map_err(|()| "body taken")?;
    let stream = incoming.stream().map_err(|()| "body stream taken")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading the response: {}", e.to_debug_string()));
            }
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(incoming);
    Ok(Response {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

impl Guest for HttpJson {
    fn get_json(url: String) -> Result<Response, String> {
        send(Method::Get, &url, None)
    }

    fn get_with_header(url: String, name: String, value: String) -> Result<Response, String> {
        send_with(Method::Get, &url, None, Some((&name, &value)))
    }

    fn get_many(urls: Vec<String>) -> Vec<Result<u16, String>> {
        urls.iter()
            .map(|u| send(Method::Get, u, None).map(|r| r.status))
            .collect()
    }

    fn post_json(url: String, body: String) -> Result<Response, String> {
        send(Method::Post, &url, Some(&body))
    }
}

export!(HttpJson);
