//! `host policy check | set | show`.

use super::data::DataDir;
use std::path::PathBuf;
use toolhost::policy::Policy;
use toolhost::{Error, ErrorKind};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a policy file; print its problems with file:line:column.
    Check { file: PathBuf },
    /// Check a policy file and store it as the data dir's policy; a running
    /// `host serve` on the data dir puts it in force within seconds.
    Set {
        file: PathBuf,
        #[command(flatten)]
        data: DataDir,
    },
    /// Print the data dir's policy in force.
    Show {
        #[command(flatten)]
        data: DataDir,
    },
}

pub async fn main(cmd: Command) -> i32 {
    super::exit_code(run(cmd).await.map(|()| 0))
}

async fn run(cmd: Command) -> toolhost::Result<()> {
    match cmd {
        Command::Check { file } => {
            let p = Policy::load(&file)?;
            eprintln!("{}: ok", p.name());
            Ok(())
        }
        Command::Set { file, data } => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidPolicy,
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "policy".into());
            Policy::parse(&name, &text)?;
            let storage = data.storage().await?;
            let version = storage
                .policy_put(&name, &text, toolhost::clock::now_ms())
                .await?;
            eprintln!("stored {name} as policy version {version}");
            Ok(())
        }
        Command::Show { data } => {
            let storage = data.storage().await?;
            match storage.policy_current().await? {
                Some(p) => {
                    eprintln!("# version {} ({})", p.version, p.name);
                    super::out_str(&p.text);
                    Ok(())
                }
                None => Err(Error::new(ErrorKind::NotFound, "no policy is stored")),
            }
        }
    }
}
