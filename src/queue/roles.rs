//! Login roles for people and processes: a role that can log in and holds exactly the rights of
//! one of pdq's NOLOGIN groups (`pdq_worker`, `pdq_operator`, `pdq_producer`, created by the
//! migrations). Used by `pdq roles`.

use sqlx::PgPool;

/// One of pdq's NOLOGIN groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `pdq_worker`: runs `pdq run`.
    Worker,
    /// `pdq_operator`: reads everything, requeues and purges dead letters.
    Operator,
    /// `pdq_producer`: enqueues only.
    Producer,
}

impl Group {
    /// The group role's name.
    pub fn role(self) -> &'static str {
        match self {
            Group::Worker => "pdq_worker",
            Group::Operator => "pdq_operator",
            Group::Producer => "pdq_producer",
        }
    }
}

/// Why a login role cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The name is not a plain lower-case identifier.
    #[error(
        "role name {0:?}: use 1 to 63 lower-case letters, digits or _, starting with a letter or _"
    )]
    InvalidName(String),
    /// The name is one of pdq's group roles, or a reserved one.
    #[error("role name {0:?} is reserved: pick a name of its own for the login role")]
    Reserved(String),
    /// The migrations have not created the group roles (or could not).
    #[error("role {0} does not exist: run `pdq migrate` as the database owner first")]
    MissingGroup(&'static str),
    /// Postgres refused (an existing role with more rights, or no right to create roles).
    #[error("{0}")]
    Database(#[from] sqlx::Error),
}

/// Checks a login role name: plain identifiers only, so the SQL needs no escaping games.
pub fn check_name(name: &str) -> Result<(), RoleError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || name.len() > 63 {
        return Err(RoleError::InvalidName(name.to_owned()));
    }
    let reserved = [
        "pdq_worker",
        "pdq_operator",
        "pdq_producer",
        "postgres",
        "public",
    ];
    if reserved.contains(&name) || name.starts_with("pg_") {
        return Err(RoleError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// The SQL that creates (or, when it already exists, checks) login role `name` and makes it a
/// member of `group`. An existing role that is a superuser or may create roles or databases is
/// refused rather than silently given more rights than the group's. Passwords are left to the
/// operator (`ALTER ROLE … PASSWORD`, or psql's `\password`).
pub fn create_login_sql(name: &str, group: Group) -> Result<String, RoleError> {
    check_name(name)?;
    let group = group.role();
    Ok(format!(
        "do $$\n\
         begin\n\
         \x20   if not exists (select 1 from pg_roles where rolname = '{name}') then\n\
         \x20       create role {name} login nosuperuser nocreatedb nocreaterole noreplication nobypassrls;\n\
         \x20   elsif exists (select 1 from pg_roles where rolname = '{name}'\n\
         \x20           and (rolsuper or rolcreaterole or rolcreatedb or rolreplication or rolbypassrls)) then\n\
         \x20       raise exception 'role {name} exists with more rights than {group}: pick another name';\n\
         \x20   else\n\
         \x20       alter role {name} login;\n\
         \x20   end if;\n\
         end\n\
         $$;\n\
         grant {group} to {name};\n"
    ))
}

/// The SQL that locks the current database down: `CONNECT` revoked from `PUBLIC` and granted
/// to pdq's groups (those that exist), so a login that holds none of them (and is not the
/// owner or a superuser) cannot connect, and so cannot `LISTEN` to or `NOTIFY` pdq's channels.
/// Other applications' roles sharing the database need `GRANT CONNECT` of their own.
pub fn lock_down_sql() -> &'static str {
    "do $$\n\
     declare\n\
     \x20   group_name text;\n\
     begin\n\
     \x20   execute format('revoke connect on database %I from public', current_database());\n\
     \x20   foreach group_name in array array['pdq_producer', 'pdq_operator', 'pdq_worker'] loop\n\
     \x20       if exists (select 1 from pg_roles where rolname = group_name) then\n\
     \x20           execute format('grant connect on database %I to %I', current_database(),\n\
     \x20               group_name);\n\
     \x20       end if;\n\
     \x20   end loop;\n\
     end\n\
     $$;\n"
}

/// pdq's groups that do not exist (the migrating role could not create them, so the
/// migrations granted them nothing). Unnamed statements: `pdq migrate` asks this through a
/// transaction pooler too.
pub async fn missing_groups(pool: &PgPool) -> Result<Vec<&'static str>, RoleError> {
    let mut missing = Vec::new();
    for group in [Group::Producer, Group::Operator, Group::Worker] {
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
                .bind(group.role())
                .persistent(false)
                .fetch_one(pool)
                .await?;
        if !exists {
            missing.push(group.role());
        }
    }
    Ok(missing)
}

/// Runs [`lock_down_sql`].
pub async fn lock_down(pool: &PgPool) -> Result<(), RoleError> {
    sqlx::raw_sql(lock_down_sql()).execute(pool).await?;
    Ok(())
}

/// Runs the statements of [`create_login_sql`] for every `(name, group)` in one transaction,
/// after checking that the groups exist.
pub async fn create_login_roles(pool: &PgPool, roles: &[(String, Group)]) -> Result<(), RoleError> {
    let mut script = String::new();
    for (name, group) in roles {
        script.push_str(&create_login_sql(name, *group)?);
    }
    let mut tx = pool.begin().await?;
    for (_, group) in roles {
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
                .bind(group.role())
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(RoleError::MissingGroup(group.role()));
        }
    }
    sqlx::raw_sql(&script).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers_and_not_the_groups() {
        assert!(check_name("pdq_run_1").is_ok());
        assert!(check_name("_ops").is_ok());
        for bad in [
            "",
            "1abc",
            "Ops",
            "a-b",
            "a;drop role x",
            "x'y",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(check_name(bad), Err(RoleError::InvalidName(_))),
                "{bad}"
            );
        }
        for reserved in ["pdq_worker", "pdq_operator", "postgres", "pg_monitor"] {
            assert!(matches!(check_name(reserved), Err(RoleError::Reserved(_))));
        }
    }

    #[test]
    fn the_script_creates_a_login_member_of_the_group() {
        let sql = create_login_sql("pdq_run", Group::Worker).unwrap();
        assert!(
            sql.contains("create role pdq_run login nosuperuser"),
            "{sql}"
        );
        assert!(sql.contains("grant pdq_worker to pdq_run;"), "{sql}");
        assert!(create_login_sql("x'", Group::Operator).is_err());
    }
}
