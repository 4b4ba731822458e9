//! Hostile guests: every function attacks a limit or a capability.

wit_bindgen::generate!({
    world: "example:hostile/hostile",
    path: ["../../wit", "wit"],
    generate_all,
});

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

struct Hostile;

fn deep(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + deep(black_box(n - 1)) }
}

impl Guest for Hostile {
    fn spin() {
        let mut x = 0u64;
        loop {
            x = black_box(x.wrapping_add(1));
        }
    }

    fn alloc_forever() -> u64 {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(vec![1u8; 1 << 20]);
            black_box(&blocks);
        }
    }

    fn recurse(depth: u64) -> u64 {
        deep(depth)
    }

    fn huge_output(bytes: u64) -> String {
        "x".repeat(bytes as usize)
    }

    fn flood_stdout(bytes: u64) -> u64 {
        let chunk = [b'A'; 4096];
        let mut out = std::io::stdout().lock();
        let mut written = 0u64;
        while written < bytes {
            let n = (bytes - written).min(chunk.len() as u64) as usize;
            out.write_all(&chunk[..n]).unwrap();
            written += n as u64;
        }
        out.flush().unwrap();
        eprintln!("flooded {written} bytes");
        written
    }

    fn sleep_forever() {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }

    fn panic(message: String) {
        panic!("{message}");
    }

    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    }

    fn write_file(path: String, contents: String) -> Result<(), String> {
        std::fs::write(&path, contents).map_err(|e| e.to_string())
    }

    fn read_env() -> Vec<(String, String)> {
        std::env::vars().collect()
    }

    fn tcp_connect(addr: String) -> Result<String, String> {
        match std::net::TcpStream::connect(addr.as_str()) {
            Ok(s) => Ok(format!("connected to {:?}", s.peer_addr())),
            Err(e) => Err(e.to_string()),
        }
    }

    fn bump() -> u32 {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        COUNTER.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn hoard_pollables(n: u64) -> u64 {
        for _ in 0..n {
            std::mem::forget(wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000));
        }
        n
    }

    fn echo(s: String) -> String {
        s
    }
}

export!(Hostile);
