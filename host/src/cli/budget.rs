//! `host budget tokens | show`.

use super::data::{DataDir, governed};
use std::path::PathBuf;
use toolhost::gate::CallContext;
use toolhost::ids::TenantId;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Report model tokens a task used (the orchestrator's side of the
    /// budget). Exit 1 when the task is now over a token limit.
    Tokens {
        #[command(flatten)]
        data: DataDir,
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long)]
        task: String,
        #[arg(long, value_parser = TenantId::parse)]
        tenant: Option<TenantId>,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = 0)]
        input: u32,
        #[arg(long, default_value_t = 0)]
        output: u32,
    },
    /// Print the ledger lines of a task, workflow or tenant.
    Show {
        #[command(flatten)]
        data: DataDir,
        /// `task:<tenant>/<task>`, `workflow:<tenant>/<workflow>` or
        /// `tenant:<tenant>` (tenant `_` when none was given).
        scope: String,
    },
}

pub async fn main(cmd: Command) -> i32 {
    let result = async {
        match cmd {
            Command::Tokens {
                data,
                policy,
                task,
                tenant,
                workflow,
                input,
                output,
            } => {
                let gate = governed(&data, &policy, None).await?;
                let ctx = CallContext {
                    tenant: tenant.unwrap_or_default(),
                    workflow,
                    task_id: Some(task),
                    principal: Some("cli".into()),
                    ..CallContext::default()
                };
                let over = gate
                    .report_tokens(&ctx, i64::from(input), i64::from(output))
                    .await?;
                for e in &over {
                    super::report(e);
                }
                Ok::<_, toolhost::Error>(i32::from(!over.is_empty()))
            }
            Command::Show { data, scope } => {
                let storage = data.storage().await?;
                for u in storage.budget_usage(&scope.as_str().into()).await? {
                    out!("{}", serde_json::to_string(&u).unwrap_or_default());
                }
                Ok(0)
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| {
        super::report(&e);
        1
    })
}
