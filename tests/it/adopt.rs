//! `pdq roles --apply` refuses an existing role that holds more than the chosen group gives
//! (a superuser, a member of another role, the owner of pdq's schema), unless `--adopt`, and
//! then says exactly what the role keeps.

use std::process::{Command, Output};

use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestDb;

fn roles(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .arg("roles")
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn name(what: &str) -> String {
    format!("pdq_t_{what}_{}", Uuid::new_v4().simple())
}

async fn run(pool: &PgPool, statement: &str) {
    sqlx::query(statement).execute(pool).await.unwrap();
}

/// (can log in, member of `group`).
async fn state(pool: &PgPool, role: &str, group: &str) -> (bool, bool) {
    sqlx::query_as(
        "select r.rolcanlogin, exists (select 1 from pg_auth_members m
             where m.member = r.oid and m.roleid = g.oid)
         from pg_roles r, pg_roles g where r.rolname = $1 and g.rolname = $2",
    )
    .bind(role)
    .bind(group)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Refused with exit 3, the message naming what the role holds and `--adopt`; nothing applied.
async fn assert_refused(db: &TestDb, flag: &str, role: &str, group: &str, holds: &str) {
    let before = state(&db.pool, role, group).await;
    let out = roles(db, &["--apply", flag, role]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{flag} {role}: {out:?}");
    assert!(stderr.contains(holds), "{holds:?} in {stderr}");
    assert!(stderr.contains("--adopt"), "{stderr}");
    assert!(
        stderr.contains(&format!("more rights than {group}")),
        "{stderr}"
    );
    assert_eq!(
        state(&db.pool, role, group).await,
        before,
        "nothing applied"
    );
    assert!(!state(&db.pool, role, group).await.1);
}

async fn drop_roles(db: TestDb, names: &[&str]) {
    let server = db.server.clone();
    db.drop_database().await;
    let admin = pdq::db::connect(pdq::db::connect_options(&server).unwrap(), 1)
        .await
        .unwrap();
    for name in names {
        sqlx::query(&format!("drop role if exists {name}"))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

#[tokio::test]
async fn roles_refuses_roles_that_hold_more_than_their_group_unless_adopted() {
    let db = TestDb::new().await;
    let reader = name("reader");
    let twice = name("twice");
    let owner = name("owner");
    let root = name("root");
    run(
        &db.pool,
        &format!("create role {reader} nologin in role pg_read_all_data"),
    )
    .await;
    run(
        &db.pool,
        &format!("create role {twice} login in role pdq_worker"),
    )
    .await;
    run(&db.pool, &format!("create role {owner} login")).await;
    run(&db.pool, &format!("alter schema pdq owner to {owner}")).await;
    run(&db.pool, &format!("create role {root} login superuser")).await;

    // A NOLOGIN group reading every table must not become an operator's login.
    assert_refused(
        &db,
        "--operator",
        &reader,
        "pdq_operator",
        "member of pg_read_all_data",
    )
    .await;
    assert!(
        !state(&db.pool, &reader, "pdq_operator").await.0,
        "still NOLOGIN"
    );
    // An operator login already in another pdq group.
    assert_refused(
        &db,
        "--operator",
        &twice,
        "pdq_operator",
        "member of pdq_worker",
    )
    .await;
    // The schema's owner as a producer login.
    assert_refused(
        &db,
        "--producer",
        &owner,
        "pdq_producer",
        "owner of schema pdq",
    )
    .await;
    // A superuser.
    assert_refused(&db, "--worker", &root, "pdq_worker", "SUPERUSER").await;

    // The same name for two groups in one run: the second is refused, and neither applied.
    let new = name("new");
    let out = roles(&db, &["--apply", "--worker", &new, "--operator", &new]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stderr).contains("member of pdq_worker"),
        "{out:?}"
    );
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(&new)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!exists, "one transaction: nothing applied");

    // The printed SQL refuses the same role when run by hand.
    let printed = roles(&db, &["--operator", &reader]);
    assert!(printed.status.success(), "{printed:?}");
    let by_hand = sqlx::raw_sql(&text(&printed.stdout))
        .execute(&db.pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(by_hand.contains("member of pg_read_all_data"), "{by_hand}");

    // With --adopt the role is taken as it is, and the report says what it keeps.
    let out = roles(&db, &["--apply", "--adopt", "--operator", &reader]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{reader}: login role, member of pdq_operator; adopted, and keeps: member of pg_read_all_data")
    );
    assert_eq!(state(&db.pool, &reader, "pdq_operator").await, (true, true));
    let out = roles(&db, &["--apply", "--adopt", "--producer", &owner]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "{owner}: login role, member of pdq_producer; adopted, and keeps: owner of schema pdq"
        )
    );

    // A role that holds nothing more is applied as before, and says nothing of adopting.
    let plain = name("plain");
    let out = roles(&db, &["--apply", "--worker", &plain]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{plain}: login role, member of pdq_worker")
    );
    let again = roles(&db, &["--apply", "--worker", &plain]);
    assert!(again.status.success(), "idempotent: {again:?}");

    drop_roles(db, &[&reader, &twice, &owner, &root, &plain, &new]).await;
}
