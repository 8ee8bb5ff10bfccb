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
    /// Lock the database down: revoke CONNECT from PUBLIC and grant it to pdq's groups, so a
    /// login holding no pdq role (nor a grant of its own) cannot connect, listen or notify.
    #[arg(long)]
    pub lock_down: bool,
    /// Run the SQL against --database-url instead of printing it.
    #[arg(long)]
    pub apply: bool,
    /// Accept an existing role that holds more than its group gives (a superuser, a member of
    /// another role, an owner of pdq's schema or objects): it keeps that, and the report says
    /// what. Without it such a role is refused and nothing is applied.
    #[arg(long)]
    pub adopt: bool,
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
    if wanted.is_empty() && !args.lock_down {
        return Err(Failed::error(
            Exit::Usage,
            "name at least one role: --worker NAME, --operator NAME or --producer NAME \
             (or --lock-down)",
        ));
    }
    if !args.apply {
        println!("-- Login roles for pdq (run as the database owner, after `pdq migrate`).");
        for (name, group) in &wanted {
            println!("-- {name}: the rights of {} only.", group.role());
            print!(
                "{}",
                roles::create_login_sql(name, *group, args.adopt).map_err(exit)?
            );
        }
        if !wanted.is_empty() {
            println!("-- Then give each a password: ALTER ROLE <name> PASSWORD '…'; (psql: \\password <name>)");
        }
        if args.lock_down {
            println!("-- Lock the database down: only pdq's groups (and the owner) may connect.");
            print!("{}", roles::lock_down_sql());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pool = db.pool().await?;
    let kept = match wanted.is_empty() {
        true => Vec::new(),
        false => roles::create_login_roles(&pool, &wanted, args.adopt)
            .await
            .map_err(exit)?,
    };
    for (name, group, extras) in &kept {
        match extras.is_empty() {
            true => println!("{name}: login role, member of {}", group.role()),
            false => println!(
                "{name}: login role, member of {}; adopted, and keeps: {}",
                group.role(),
                extras.join(", ")
            ),
        }
    }
    if args.lock_down {
        roles::lock_down(&pool).await.map_err(exit)?;
        println!(
            "database locked down: CONNECT revoked from PUBLIC, granted to pdq_producer, \
             pdq_operator and pdq_worker"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code each role error means.
fn exit(error: RoleError) -> anyhow::Error {
    let code = match &error {
        RoleError::InvalidName(_) | RoleError::Reserved(_) => Exit::Usage,
        RoleError::MissingGroup(_) => Exit::Schema,
        RoleError::HoldsMore { .. } => Exit::Refused,
        RoleError::Database(_) => return anyhow::Error::new(error),
    };
    Failed::error(code, error.to_string())
}
