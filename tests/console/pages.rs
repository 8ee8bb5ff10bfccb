//! Each page against a seeded database, in headless Chromium; requeue, purge and cancel
//! through the UI, checked in the database.

use fantoccini::Locator;

use crate::browser::Browser;
use crate::helpers::TestDb;
use crate::support::{count, seed, serve};

#[tokio::test]
async fn every_page_shows_the_seeded_state() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = serve(&db, false).await;
    let browser = Browser::start().await;

    // Overview: charts first, the pause banner, depth by priority, the worker.
    browser.open(&console.url("/")).await;
    let banner = browser.text("#pause-banner").await;
    assert!(banner.contains("pdq-client"), "{banner}");
    assert!(banner.contains("429 Too Many Requests"), "{banner}");
    assert!(banner.contains("worker-a"), "{banner}");
    let applied = browser.text("#chart-applied figcaption").await;
    assert!(applied.contains("5 jobs in all"), "{applied}");
    let dead = browser.text("#chart-dead").await;
    assert!(dead.contains("conversation_ended"), "{dead}");
    let limits = browser.text("#chart-limits figcaption").await;
    assert!(
        limits.contains("peak 7"),
        "429s from the heartbeat: {limits}"
    );
    let live_due = browser.text("#depth tr[data-priority=live] td.due").await;
    assert_eq!(live_due, "4", "3 live jobs and the tagged one");
    let backfill_due = browser
        .text("#depth tr[data-priority=backfill] td.due")
        .await;
    assert_eq!(backfill_due, "2");
    let workers = browser.text("#workers").await;
    assert!(
        workers.contains("worker-a") && workers.contains("host-1"),
        "{workers}"
    );
    assert!(browser
        .text("#dead-summary .count")
        .await
        .contains("4 waiting"));
    assert!(browser.text(".badge").await.contains("read-only"));
    let first_section = browser
        .client
        .find(Locator::Css("main section, main div.card"))
        .await
        .unwrap()
        .attr("class")
        .await
        .unwrap();
    assert_eq!(
        first_section.as_deref(),
        Some("charts"),
        "charts come first"
    );
    browser.screenshot("overview").await;

    // Jobs: by state, by idempotency key, by conversation, by tag.
    browser.open(&console.url("/jobs?state=pending")).await;
    let rows = browser
        .client
        .find_all(Locator::Css("#jobs tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), seeded.pending.len());
    browser.screenshot("jobs").await;
    browser.open(&console.url("/jobs?key=order-1001")).await;
    let only = browser.text("#jobs tbody tr").await;
    assert!(only.contains(&seeded.keyed.to_string()), "{only}");
    browser
        .open(&console.url(&format!("/jobs?conversation={}", seeded.conversation)))
        .await;
    let rows = browser
        .client
        .find_all(Locator::Css("#jobs tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 9, "5 applied and 4 dead-lettered");
    browser.open(&console.url("/jobs?tag=tag-abc")).await;
    assert!(browser.text("#jobs").await.contains("tag-abc"));

    // A dead-lettered job's story: reason, API error body, correlation id.
    browser
        .open(&console.url(&format!("/jobs/{}", seeded.dead[2])))
        .await;
    assert_eq!(browser.text("dd.reason").await, "not_found");
    assert!(browser.text("#error-body").await.contains("not.found"));
    assert_eq!(browser.text("dd.correlation").await, "corr-2");
    browser.screenshot("job").await;
    // An applied job shows how many jobs shared its PATCH.
    browser
        .open(&console.url(&format!("/jobs/{}", seeded.applied[0])))
        .await;
    assert!(browser.text("dd.coalesced").await.starts_with('2'));

    // Dead letters: the list, a filter by reason, one's detail.
    browser.open(&console.url("/dlq")).await;
    let rows = browser
        .client
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    browser.screenshot("dead-letters").await;
    browser
        .open(&console.url("/dlq?reason=conversation_ended"))
        .await;
    let rows = browser
        .client
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    browser
        .open(&console.url(&format!("/dlq/{}", seeded.dead[3])))
        .await;
    assert_eq!(browser.text("dd.reason").await, "retries_exhausted");
    assert!(browser
        .text("#error-body")
        .await
        .contains("service.unavailable"));
    browser.screenshot("dead-letter").await;

    // Bad input: a clear 400 page.
    browser.open(&console.url("/jobs?id=abc")).await;
    assert!(browser.text("h1").await.contains("400"));
    assert!(browser.text(".message").await.contains("id=\"abc\""));

    browser.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn requeue_and_purge_through_the_ui() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = serve(&db, true).await;
    let browser = Browser::start().await;

    // Requeue the two conversation_ended letters: the confirmation says how many and that
    // `tier` of the first would be dropped (a newer value was applied).
    browser
        .open(&console.url("/dlq?reason=conversation_ended"))
        .await;
    for id in &seeded.dead[..2] {
        browser
            .wait(&format!("input[name=id][value='{id}']"))
            .await
            .click()
            .await
            .unwrap();
    }
    browser.screenshot("dead-letters-select").await;
    browser.click("#requeue").await;
    assert_eq!(
        browser.text("#confirm-title").await,
        "Requeue 2 dead letters?"
    );
    let dropped = browser.text("#dropped").await;
    assert!(
        dropped.contains(&format!("dead letter {}: tier", seeded.superseded)),
        "{dropped}"
    );
    browser.screenshot("requeue-confirm").await;
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from pdq.dead_letters where requeued_at is not null"
        )
        .await,
        0,
        "nothing changes before the confirmation"
    );
    browser.click("#confirm").await;
    assert!(browser
        .text(".result")
        .await
        .contains("Requeued 2 dead letters"));
    let requeued: Vec<i64> = sqlx::query_scalar(
        "select requeued_from from pdq.jobs where requeued_from is not null order by 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(requeued, seeded.dead[..2].to_vec());

    // Purge the not_found letter from its detail page.
    browser
        .open(&console.url(&format!("/dlq/{}", seeded.dead[2])))
        .await;
    browser.click("#purge").await;
    assert_eq!(browser.text("#confirm-title").await, "Purge 1 dead letter?");
    browser.click("#confirm").await;
    assert!(browser
        .text(".result")
        .await
        .contains("Purged 1 dead letter"));
    let left: Vec<i64> = sqlx::query_scalar("select id from pdq.dead_letters order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![seeded.dead[0], seeded.dead[1], seeded.dead[3]],
        "requeued letters stay as history; the purged one is gone"
    );

    browser.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_pending_job_is_cancelled_after_confirmation() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = serve(&db, true).await;
    let browser = Browser::start().await;
    let id = seeded.pending[1];

    browser.open(&console.url(&format!("/jobs/{id}"))).await;
    browser.click("#cancel").await;
    browser.screenshot("cancel-confirm").await;
    assert_eq!(
        count(&db.pool, "select count(*) from pdq.cancelled_jobs").await,
        0,
        "nothing changes before the confirmation"
    );
    browser
        .wait("input[name=note]")
        .await
        .send_keys("customer asked")
        .await
        .unwrap();
    browser.click("#confirm").await;
    assert!(browser
        .text(".result")
        .await
        .contains(&format!("Cancelled job {id}")));
    let (cancelled, note): (i64, Option<String>) =
        sqlx::query_as("select id, note from pdq.cancelled_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((cancelled, note.as_deref()), (id, Some("customer asked")));
    let still: i64 = count(
        &db.pool,
        &format!("select count(*) from pdq.jobs where id = {id}"),
    )
    .await;
    assert_eq!(still, 0);
    browser.open(&console.url(&format!("/jobs/{id}"))).await;
    assert!(browser.text("h1").await.contains("cancelled"));

    browser.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn the_overview_says_live_is_behind_charts_the_oldest_wait_and_dates_old_figures() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    // One live job has been due for ten minutes.
    sqlx::query(
        "update pdq.jobs set run_at = now() - interval '10 minutes'
         where id = (select min(id) from pdq.jobs
                     where priority = 'live' and state = 'pending' and run_at <= now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let console = serve(&db, false).await;
    let overview = || async {
        reqwest::get(console.url("/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let page = overview().await;
    assert!(page.contains("id=\"live-behind\""), "{page}");
    assert!(
        page.contains("Live behind: the oldest due live job has waited 10m"),
        "{page}"
    );
    assert!(
        !page.contains("stale-banner"),
        "fresh figures are not dated"
    );
    // The oldest due wait the heartbeat reported (75 s live), not a pickup latency.
    assert!(page.contains("id=\"chart-oldest\""), "{page}");
    assert!(page.contains("peak 75 s"), "{page}");
    assert!(!page.contains("chart-pickup"));
    // Past the refresh period (5 s here) the served snapshot says how old it is.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let page = overview().await;
    assert!(page.contains("id=\"stale-banner\""), "{page}");
    assert!(page.contains("These figures are "), "{page}");
    assert!(page.contains("old (as of "), "{page}");
    assert!(page.contains("they are being read again"), "{page}");
    db.drop_database().await;
}
