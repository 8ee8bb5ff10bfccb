//! `pdq roles`: login roles with only the rights of pdq's groups. Prints the SQL by default
//! (review it, run it with psql), or applies it with `--apply` (as the database owner).

use std::process::ExitCode;

use clap::Args;
use pdq::queue::roles::{self, Group, RoleError};

use super::Database;
use crate::exit::{Exit, Failed};

/// The login roles to create.
#[derive(Debug, Args)]
pub struct RolesArgs {
    /// A login role for `pdq run` (member of pdq_worker), e.g. pdq_worker_login.
    #[arg(long, value_name = "NAME")]
    pub worker: Vec<String>,
    /// A login role for operators (member of pdq_operator: status, dlq, jobs, budget).
    #[arg(long, value_name = "NAME")]
    pub operator: Vec<String>,
    /// A login role for producers (member of pdq_producer: enqueue only).
    #[arg(long, value_name = "NAME")]
    pub producer: Vec<String>,
    /// Run the SQL against --database-url instead of printing it.
    #[arg(long)]
    pub apply: bool,
}

impl RolesArgs {
    fn wanted(&self) -> Vec<(String, Group)> {
        let named = |names: &[String], group| {
            names
                .iter()
                .map(move |name| (name.clone(), group))
                .collect::<Vec<_>>()
        };
        [
            named(&self.worker, Group::Worker),
            named(&self.operator, Group::Operator),
            named(&self.producer, Group::Producer),
        ]
        .concat()
    }
}

/// Prints or applies the statements.
pub async fn run(db: &Database, args: RolesArgs) -> anyhow::Result<ExitCode> {
    let wanted = args.wanted();
    if wanted.is_empty() {
        return Err(Failed::error(
            Exit::Usage,
            "name at least one role: --worker NAME, --operator NAME or --producer NAME",
        ));
    }
    if !args.apply {
        println!("-- Login roles for pdq (run as the database owner, after `pdq migrate`).");
        for (name, group) in &wanted {
            println!("-- {name}: the rights of {} only.", group.role());
            print!("{}", roles::create_login_sql(name, *group).map_err(exit)?);
        }
        println!("-- Then give each a password: ALTER ROLE <name> PASSWORD '…'; (psql: \\password <name>)");
        return Ok(ExitCode::SUCCESS);
    }
    let pool = db.pool().await?;
    roles::create_login_roles(&pool, &wanted)
        .await
        .map_err(exit)?;
    for (name, group) in &wanted {
        println!("{name}: login role, member of {}", group.role());
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code each role error means.
fn exit(error: RoleError) -> anyhow::Error {
    let code = match &error {
        RoleError::InvalidName(_) | RoleError::Reserved(_) => Exit::Usage,
        RoleError::MissingGroup(_) => Exit::Schema,
        RoleError::Database(_) => return anyhow::Error::new(error),
    };
    Failed::error(code, error.to_string())
}
