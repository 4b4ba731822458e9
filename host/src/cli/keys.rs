//! `host keys create | list | revoke`.

use super::data::DataDir;
use toolhost::ids::TenantId;
use toolhost::keys::{self, Role};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make an API key; prints only the key (shown once, stored hashed).
    Create {
        /// The tenant the key acts for.
        #[arg(long, value_parser = TenantId::parse)]
        tenant: TenantId,
        /// A role (repeat for several): invoke, approve, admin, audit.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<Role>,
        /// A note saying what the key is for.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        data: DataDir,
    },
    /// List keys (ids, tenants, roles; never the secrets).
    List {
        #[arg(long, value_parser = TenantId::existing)]
        tenant: Option<TenantId>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataDir,
    },
    /// Revoke a key by id (takes effect on its next request).
    Revoke {
        id: String,
        #[command(flatten)]
        data: DataDir,
    },
}

pub async fn main(cmd: Command) -> i32 {
    super::exit_code(run(cmd).await)
}

async fn run(cmd: Command) -> toolhost::Result<i32> {
    match cmd {
        Command::Create {
            tenant,
            roles,
            label,
            data,
        } => {
            let storage = data.storage().await?;
            let key = keys::create(storage.as_ref(), &tenant, &roles, label.as_deref()).await?;
            out!("{}", key.key);
            Ok(0)
        }
        Command::List { tenant, json, data } => {
            let storage = data.storage().await?;
            let list = storage.key_list(tenant.as_ref()).await?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                for k in list {
                    out!(
                        "{}  tenant={}  roles={}{}{}",
                        k.id,
                        k.tenant,
                        k.roles.join(","),
                        k.label.map(|l| format!("  label={l}")).unwrap_or_default(),
                        if k.revoked_ms.is_some() {
                            "  REVOKED"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Revoke { id, data } => {
            let storage = data.storage().await?;
            let now = toolhost::clock::now_ms();
            if storage.key_revoke(&id.as_str().into(), now).await? {
                eprintln!("revoked {id}");
                Ok(0)
            } else {
                Err(toolhost::Error::new(
                    toolhost::ErrorKind::NotFound,
                    format!("no active key with id `{id}`"),
                ))
            }
        }
    }
}
