//! The scratch-database helper: a database is gone once its guard is, a panic included.

use std::time::Duration;

use pdq::db::ScratchDatabase;
use sqlx::{Connection, PgConnection};

async fn exists(name: &str) -> bool {
    let options = pdq::db::connect_options(&pdq::db::admin_url()).unwrap();
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let found: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    let _ = admin.close().await;
    found
}

#[tokio::test]
async fn a_scratch_database_is_dropped_when_the_thread_holding_it_panics() {
    let (names, name) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let db = ScratchDatabase::create(&pdq::db::admin_url(), "pdq_test_", 2)
                .await
                .unwrap();
            let current: String = sqlx::query_scalar("select current_database()")
                .fetch_one(db.pool())
                .await
                .unwrap();
            names.send(current).unwrap();
            panic!("a test fails while it holds its database");
        })
    });
    let joined = tokio::task::spawn_blocking(move || holder.join())
        .await
        .unwrap();
    assert!(joined.is_err(), "the holding thread panicked");
    let name = name.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(name.starts_with("pdq_test_"), "{name}");
    assert!(!exists(&name).await, "{name} is left behind");
}

#[tokio::test]
async fn a_kept_scratch_database_survives_its_guard_and_drop_now_removes_it() {
    let mut kept = ScratchDatabase::create(&pdq::db::admin_url(), "pdq_test_", 1)
        .await
        .unwrap();
    let name = kept.name().to_owned();
    assert!(exists(&name).await);
    let url = kept.url();
    assert!(
        url.contains(&format!("/{name}")),
        "the URL names the database"
    );
    kept.keep();
    drop(kept);
    assert!(exists(&name).await, "a kept database stays");
    let mut admin =
        PgConnection::connect_with(&pdq::db::connect_options(&pdq::db::admin_url()).unwrap())
            .await
            .unwrap();
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&mut admin)
        .await
        .unwrap();

    let scratch = ScratchDatabase::create(&pdq::db::admin_url(), "pdq_test_", 1)
        .await
        .unwrap();
    let name = scratch.name().to_owned();
    scratch.drop_now().await;
    assert!(!exists(&name).await, "drop_now drops it");
}
