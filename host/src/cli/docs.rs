//! `host docs embed`: put a tool's WIT doc comments into its component.

use std::path::PathBuf;
use toolhost::tool::docs::{WitSource, with_package_docs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Embed the doc comments of the tool's WIT source into the component as
    /// a `package-docs` custom section, after checking that they match.
    Embed {
        /// The component to document.
        component: PathBuf,
        /// The tool's WIT source directory.
        #[arg(long, value_name = "DIR")]
        wit: PathBuf,
        /// Where to write the documented component (default: in place).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub fn main(cmd: Command) -> i32 {
    let Command::Embed {
        component,
        wit,
        output,
    } = cmd;
    let result = (|| {
        let runtime = super::runtime()?;
        // Loading with --wit checks the component against its WIT.
        runtime.load_file(
            &component,
            &toolhost::LoadOptions {
                wit: Some(wit.clone()),
                docs: None,
            },
        )?;
        let bytes = std::fs::read(&component).map_err(|e| {
            toolhost::Error::invalid_component(format!("cannot read {}: {e}", component.display()))
        })?;
        let docs = WitSource::parse(&wit)?.package_docs()?;
        let out = with_package_docs(&bytes, &docs)?;
        let target = output.unwrap_or(component);
        std::fs::write(&target, out).map_err(|e| {
            toolhost::Error::internal(format!("cannot write {}: {e}", target.display()))
        })?;
        Ok::<_, toolhost::Error>(target)
    })();
    match result {
        Ok(target) => {
            eprintln!("embedded docs into {}", target.display());
            0
        }
        Err(e) => {
            super::report(&e);
            1
        }
    }
}
