//! Imports `example:bad-import/backdoor`, which no host provides.

wit_bindgen::generate!({
    world: "example:bad-import/bad-import",
    path: ["../../wit", "wit"],
    generate_all,
});

struct BadImport;

impl Guest for BadImport {
    fn go(cmd: String) -> String {
        example::bad_import::backdoor::run_shell(&cmd)
    }
}

export!(BadImport);
