//! `host inspect`: a tool's functions, descriptions and schemas.

use super::ComponentArgs;
use serde_json::json;
use toolhost::schema;
use toolhost::tool::Tool;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    component: ComponentArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

pub fn main(args: Args) -> i32 {
    let tool = match super::runtime()
        .and_then(|rt| rt.load_file(&args.component.component, &args.component.load_options()))
    {
        Ok(t) => t,
        Err(e) => {
            if matches!(args.format, Format::Json) {
                out!("{}", json!({"ok": false, "error": e}));
            }
            super::report(&e);
            return 1;
        }
    };
    for w in tool.warnings() {
        eprintln!("warning: {w}");
    }
    match args.format {
        Format::Json => out!("{:#}", describe(&tool)),
        Format::Human => print_human(&tool),
    }
    0
}

/// The machine-readable description of a tool.
pub fn describe(tool: &Tool) -> serde_json::Value {
    let catalog = tool.catalog();
    let functions: Vec<serde_json::Value> = catalog
        .functions
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "api_name": schema::api_name(f),
                "interface": f.interface,
                "signature": f.signature(),
                "description": f.docs.as_deref().map(str::trim),
                "parameters": schema::parameters(f),
                "result": schema::result(f),
            })
        })
        .collect();
    json!({
        "ok": true,
        "tool": tool.name(),
        "description": catalog.docs.as_deref().map(str::trim),
        "$schema": schema::DIALECT,
        "functions": functions,
        "openai_tools": catalog.functions.iter().map(schema::openai_tool).collect::<Vec<_>>(),
        "anthropic_tools": catalog.functions.iter().map(schema::anthropic_tool).collect::<Vec<_>>(),
        "mcp_tools": catalog.functions.iter().map(schema::mcp_tool).collect::<Vec<_>>(),
        "imports": catalog.imports,
        "warnings": tool.warnings(),
    })
}

fn print_human(tool: &Tool) {
    let catalog = tool.catalog();
    out!(
        "{} — {} function{}",
        tool.name(),
        catalog.functions.len(),
        if catalog.functions.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    if let Some(d) = &catalog.docs {
        out!("{}", d.trim());
    }
    for f in &catalog.functions {
        out!();
        out!("{}", f.signature());
        match &f.docs {
            Some(d) => {
                for line in d.trim().lines() {
                    out!("    {line}");
                }
            }
            None => {
                out!("    (no description: embed docs with `host docs embed`, or pass --wit)")
            }
        }
        let indent = |v: serde_json::Value| {
            serde_json::to_string_pretty(&v)
                .unwrap_or_default()
                .lines()
                .map(|l| format!("        {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        out!("    parameters:\n{}", indent(schema::parameters(f)));
        out!("    result:\n{}", indent(schema::result(f)));
    }
    if !catalog.imports.is_empty() {
        out!();
        out!("imports: {}", catalog.imports.join(", "));
    }
}
