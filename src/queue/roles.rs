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
    /// An existing role holds more than the group gives (and `--adopt` was not given).
    #[error(
        "role {name} exists with more rights than {group}: {}; pass --adopt to keep them, or \
         pick another name",
        extras.join(", ")
    )]
    HoldsMore {
        /// The role.
        name: String,
        /// The group asked for.
        group: &'static str,
        /// What it holds beyond the group.
        extras: Vec<String>,
    },
    /// Postgres refused (no right to create roles, …).
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

/// The SQL of one `text[]`: what existing role `name` holds beyond what `group` gives it:
/// attributes (`SUPERUSER`, `CREATEROLE`, `CREATEDB`, `REPLICATION`, `BYPASSRLS`), memberships
/// of other roles (`pg_read_all_data`, another pdq group, …) and ownership of the database,
/// the `pdq` schema or objects in it. Empty when the role does not exist or holds nothing more.
/// `name` must have passed [`check_name`].
fn extras_sql(name: &str, group: &str) -> String {
    format!(
        "select coalesce(array_agg(extra order by place, extra), '{{}}') from (\n\
         \x20   select 1 as place, attribute as extra from pg_roles r,\n\
         \x20       unnest(array[case when r.rolsuper then 'SUPERUSER' end,\n\
         \x20           case when r.rolcreaterole then 'CREATEROLE' end,\n\
         \x20           case when r.rolcreatedb then 'CREATEDB' end,\n\
         \x20           case when r.rolreplication then 'REPLICATION' end,\n\
         \x20           case when r.rolbypassrls then 'BYPASSRLS' end]) as attribute\n\
         \x20       where r.rolname = '{name}' and attribute is not null\n\
         \x20   union all\n\
         \x20   select 2, 'member of ' || g.rolname from pg_auth_members m\n\
         \x20       join pg_roles g on g.oid = m.roleid join pg_roles r on r.oid = m.member\n\
         \x20       where r.rolname = '{name}' and g.rolname <> '{group}'\n\
         \x20   union all\n\
         \x20   select 3, 'owner of database ' || d.datname from pg_database d\n\
         \x20       join pg_roles r on r.oid = d.datdba\n\
         \x20       where r.rolname = '{name}' and d.datname = current_database()\n\
         \x20   union all\n\
         \x20   select 4, 'owner of schema pdq' from pg_namespace n join pg_roles r on r.oid = n.nspowner\n\
         \x20       where r.rolname = '{name}' and n.nspname = 'pdq'\n\
         \x20   union all\n\
         \x20   select 5, 'owner of ' || count(*) || ' tables, views or sequences in schema pdq'\n\
         \x20       from pg_class c join pg_namespace n on n.oid = c.relnamespace\n\
         \x20       join pg_roles r on r.oid = c.relowner\n\
         \x20       where r.rolname = '{name}' and n.nspname = 'pdq' having count(*) > 0\n\
         \x20   union all\n\
         \x20   select 6, 'owner of ' || count(*) || ' functions in schema pdq'\n\
         \x20       from pg_proc p join pg_namespace n on n.oid = p.pronamespace\n\
         \x20       join pg_roles r on r.oid = p.proowner\n\
         \x20       where r.rolname = '{name}' and n.nspname = 'pdq' having count(*) > 0\n\
         ) extras"
    )
}

/// The SQL that creates (or, when it already exists, checks) login role `name` and makes it a
/// member of `group`. An existing role that holds anything beyond what the group gives (see
/// [`existing_extras`]: a superuser, a member of another role such as `pg_read_all_data` or
/// another pdq group, the owner of pdq's schema or objects) is refused, unless `adopt`: then
/// it keeps what it holds. An existing `NOLOGIN` role is made a login. Passwords are left to
/// the operator (`ALTER ROLE … PASSWORD`, or psql's `\password`).
pub fn create_login_sql(name: &str, group: Group, adopt: bool) -> Result<String, RoleError> {
    check_name(name)?;
    let group = group.role();
    let refusal = match adopt {
        true => String::new(),
        false => format!(
            "\x20   select ({extras}) into extras;\n\
             \x20   if cardinality(extras) > 0 then\n\
             \x20       raise exception 'role {name} exists with more rights than {group}: %; pass --adopt to keep them, or pick another name',\n\
             \x20           array_to_string(extras, ', ');\n\
             \x20   end if;\n",
            extras = extras_sql(name, group).replace('\n', "\n        ")
        ),
    };
    Ok(format!(
        "do $$\n\
         declare\n\
         \x20   extras text[];\n\
         begin\n\
         \x20   if not exists (select 1 from pg_roles where rolname = '{name}') then\n\
         \x20       create role {name} login nosuperuser nocreatedb nocreaterole noreplication nobypassrls;\n\
         \x20       return;\n\
         \x20   end if;\n\
         {refusal}\
         \x20   alter role {name} login;\n\
         end\n\
         $$;\n\
         grant {group} to {name};\n"
    ))
}

/// What existing role `name` holds beyond `group`'s rights (empty when it does not exist or
/// holds nothing more); see [`create_login_sql`].
pub async fn existing_extras<'e>(
    db: impl sqlx::PgExecutor<'e>,
    name: &str,
    group: Group,
) -> Result<Vec<String>, RoleError> {
    check_name(name)?;
    Ok(sqlx::query_scalar(&extras_sql(name, group.role()))
        .persistent(false)
        .fetch_one(db)
        .await?)
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

/// What one role of [`create_login_roles`] kept: (name, group, what it holds beyond the
/// group; empty for a new role or one that held nothing more).
pub type Adopted = (String, Group, Vec<String>);

/// Runs the statements of [`create_login_sql`] for every `(name, group)` in one transaction,
/// after checking that the groups exist. Without `adopt`, an existing role that holds more
/// than its group gives is refused ([`RoleError::HoldsMore`]) and nothing is applied; with it,
/// the roles keep what they hold, and the answer says what.
pub async fn create_login_roles(
    pool: &PgPool,
    roles: &[(String, Group)],
    adopt: bool,
) -> Result<Vec<Adopted>, RoleError> {
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
    let mut kept = Vec::new();
    for (name, group) in roles {
        // Asked role by role, after the previous ones were applied: a name given for two
        // groups holds the first when the second is checked.
        let extras = existing_extras(&mut *tx, name, *group).await?;
        if !extras.is_empty() && !adopt {
            return Err(RoleError::HoldsMore {
                name: name.clone(),
                group: group.role(),
                extras,
            });
        }
        sqlx::raw_sql(&create_login_sql(name, *group, adopt)?)
            .execute(&mut *tx)
            .await?;
        kept.push((name.clone(), *group, extras));
    }
    tx.commit().await?;
    Ok(kept)
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
        let sql = create_login_sql("pdq_run", Group::Worker, false).unwrap();
        assert!(
            sql.contains("create role pdq_run login nosuperuser"),
            "{sql}"
        );
        assert!(sql.contains("grant pdq_worker to pdq_run;"), "{sql}");
        assert!(sql.contains("pass --adopt"), "{sql}");
        assert!(!create_login_sql("pdq_run", Group::Worker, true)
            .unwrap()
            .contains("pass --adopt"));
        assert!(create_login_sql("x'", Group::Operator, false).is_err());
    }
}
