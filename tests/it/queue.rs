//! The queue against a real Postgres: the SQL contract, claims, leases, order, DLQ.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pdq::queue::lease::{ClaimOptions, DeadLetterRecord, Success};
use pdq::queue::{
    self, ApiRefusal, DeadLetterFilter, DeadReason, Fence, Locators, NewJob, Priority,
};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestDb;

fn job_for(conversation: Uuid, participant: Uuid, attributes: serde_json::Value) -> NewJob {
    NewJob {
        locators: Locators::ids(conversation, participant),
        attributes,
        ..NewJob::default()
    }
}

fn distinct_jobs(n: usize, priority: Priority) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob {
            priority: Some(priority),
            ..job_for(
                Uuid::new_v4(),
                Uuid::new_v4(),
                json!({ "n": i.to_string() }),
            )
        })
        .collect()
}

fn options(units: u32) -> ClaimOptions {
    ClaimOptions {
        units,
        ..ClaimOptions::default()
    }
}

fn success(unit: &queue::Unit) -> Success {
    Success {
        fence: unit.fence(),
        conversation_id: unit.head().locators.conversation_id,
        participant_id: unit.head().locators.participant_id,
        key_versions: unit.key_versions(),
        superseded: Vec::new(),
    }
}

#[tokio::test]
async fn eight_concurrent_claimers_claim_every_job_exactly_once() {
    let db = TestDb::with_connections(12).await;
    queue::enqueue_many(&db.pool, &distinct_jobs(5_000, Priority::Live))
        .await
        .unwrap();

    let claimed = Arc::new(Mutex::new(Vec::new()));
    let mut claimers = Vec::new();
    for worker in 0..8 {
        let pool = db.pool.clone();
        let claimed = claimed.clone();
        claimers.push(tokio::spawn(async move {
            let opts = ClaimOptions {
                units: 50,
                worker_id: format!("w{worker}"),
                ..ClaimOptions::default()
            };
            for _ in 0..1_000 {
                let units = queue::lease::claim(&pool, &opts).await.unwrap();
                if units.is_empty() {
                    break;
                }
                let ids: Vec<i64> = units.iter().flat_map(|u| u.job_ids()).collect();
                claimed.lock().unwrap().extend(ids);
                let done: Vec<Success> = units.iter().map(success).collect();
                let lost = queue::lease::succeed_batch(&pool, &done).await.unwrap();
                assert!(lost.is_empty(), "no lease may be lost: {lost:?}");
            }
        }));
    }
    for claimer in claimers {
        claimer.await.unwrap();
    }

    let claimed = claimed.lock().unwrap().clone();
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 5_000, "every job claimed once, none twice");
    assert_eq!(unique.len(), 5_000);
    assert_eq!(db.count("pdq.jobs").await, 0, "nothing left behind");
    assert_eq!(db.count("pdq.finished_jobs").await, 5_000, "none lost");
    assert_eq!(db.count("pdq.inflight").await, 0);
    db.drop_database().await;
}

#[tokio::test]
async fn expired_lease_is_claimed_by_another_worker_and_the_late_finish_is_refused() {
    let db = TestDb::new().await;
    let (c, p) = (Uuid::new_v4(), Uuid::new_v4());
    queue::enqueue(&db.pool, &job_for(c, p, json!({"k": "v"})))
        .await
        .unwrap();
    let short = ClaimOptions {
        lease: Duration::from_millis(100),
        worker_id: "slow".into(),
        ..options(10)
    };
    let first = queue::lease::claim(&db.pool, &short).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(queue::lease::claim(&db.pool, &options(10))
        .await
        .unwrap()
        .is_empty());

    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        queue::lease::rescue_expired_leases(&db.pool).await.unwrap(),
        1
    );
    let second = queue::lease::claim(&db.pool, &options(10)).await.unwrap();
    assert_eq!(second.len(), 1, "another worker takes the unit over");
    assert_eq!(
        second[0].head().attempts,
        2,
        "the dead worker's attempt stays counted"
    );

    let lost = queue::lease::succeed_batch(&db.pool, &[success(&first[0])])
        .await
        .unwrap();
    assert_eq!(lost, vec![first[0].lease], "the late finish is refused");
    let late_retry = queue::lease::retry(
        &db.pool,
        &first[0].fence(),
        Duration::ZERO,
        &json!({}),
        true,
    )
    .await;
    assert!(matches!(late_retry, Err(queue::Error::LeaseLost)));
    let record = DeadLetterRecord::new(DeadReason::NotFound, "late");
    let late_dead =
        queue::lease::dead_letter(&db.pool, &first[0].fence(), None, &record, true).await;
    assert!(matches!(late_dead, Err(queue::Error::LeaseLost)));
    assert_eq!(db.count("pdq.dead_letters").await, 0);

    let lost = queue::lease::succeed_batch(&db.pool, &[success(&second[0])])
        .await
        .unwrap();
    assert!(lost.is_empty(), "the current owner finishes normally");
    assert_eq!(db.count("pdq.finished_jobs").await, 1);
    db.drop_database().await;
}

/// Enqueues one job and claims it under a lease of `lease`.
async fn one_claimed_unit(db: &TestDb, lease: Duration) -> queue::Unit {
    queue::enqueue(
        &db.pool,
        &job_for(Uuid::new_v4(), Uuid::new_v4(), json!({"k": "v"})),
    )
    .await
    .unwrap();
    let options = ClaimOptions {
        lease,
        ..options(1)
    };
    queue::lease::claim(&db.pool, &options)
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test]
async fn units_are_recovered_when_a_crash_emptied_the_unlogged_lease_table() {
    let db = TestDb::new().await;
    let unit = one_claimed_unit(&db, Duration::from_millis(300)).await;
    // What crash recovery does to an unlogged table.
    sqlx::query("truncate pdq.inflight")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        queue::lease::rescue_expired_leases(&db.pool).await.unwrap(),
        0,
        "the claim-time lease still runs"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        queue::lease::rescue_expired_leases(&db.pool).await.unwrap(),
        1
    );
    let again = queue::lease::claim(&db.pool, &options(1)).await.unwrap();
    assert_eq!(again[0].job_ids(), unit.job_ids());
    db.drop_database().await;
}

#[tokio::test]
async fn a_finish_touches_only_the_jobs_its_fence_names() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        queue::enqueue(
            &db.pool,
            &job_for(Uuid::new_v4(), Uuid::new_v4(), json!({"k": "v"})),
        )
        .await
        .unwrap();
    }
    let units = queue::lease::claim(&db.pool, &options(10)).await.unwrap();
    assert_eq!(units.len(), 2);
    let (a, b) = (&units[0], &units[1]);

    let foreign_jobs = Fence {
        lease: a.lease,
        job_ids: b.job_ids(),
    };
    let refused =
        queue::lease::retry(&db.pool, &foreign_jobs, Duration::ZERO, &json!({}), true).await;
    assert!(matches!(refused, Err(queue::Error::LeaseLost)));
    let wrong_lease = Success {
        fence: Fence {
            lease: Uuid::new_v4(),
            job_ids: a.job_ids(),
        },
        ..success(a)
    };
    let lost = queue::lease::succeed_batch(&db.pool, std::slice::from_ref(&wrong_lease))
        .await
        .unwrap();
    assert_eq!(lost, vec![wrong_lease.fence.lease]);
    assert_eq!(db.count("pdq.finished_jobs").await, 0);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from pdq.jobs where state = 'running'")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        2,
        "both units still run under their own leases"
    );

    let lost = queue::lease::succeed_batch(&db.pool, &[success(a), success(b)])
        .await
        .unwrap();
    assert!(lost.is_empty());
    assert_eq!(db.count("pdq.finished_jobs").await, 2);
    db.drop_database().await;
}

#[tokio::test]
async fn lease_renewal_keeps_a_slow_unit_from_being_rescued() {
    let db = TestDb::new().await;
    let unit = one_claimed_unit(&db, Duration::from_millis(1_000)).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lost =
            queue::lease::renew_leases(&db.pool, &[unit.lease], Duration::from_millis(1_000))
                .await
                .unwrap();
        assert!(lost.is_empty());
        assert_eq!(
            queue::lease::rescue_expired_leases(&db.pool).await.unwrap(),
            0
        );
    }
    assert!(queue::lease::succeed_batch(&db.pool, &[success(&unit)])
        .await
        .unwrap()
        .is_empty());
    db.drop_database().await;
}

#[tokio::test]
async fn a_participants_jobs_never_run_concurrently_and_apply_in_order() {
    let db = TestDb::new().await;
    let (c, p) = (Uuid::new_v4(), Uuid::new_v4());
    for i in 0..2 {
        queue::enqueue(&db.pool, &job_for(c, p, json!({ "step": i.to_string() })))
            .await
            .unwrap();
    }
    let one_at_a_time = ClaimOptions {
        max_coalesce: 1,
        ..options(10)
    };
    let first = queue::lease::claim(&db.pool, &one_at_a_time).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].head().attributes, json!({"step": "0"}));
    assert!(
        queue::lease::claim(&db.pool, &one_at_a_time)
            .await
            .unwrap()
            .is_empty(),
        "the second update waits while the first is in flight"
    );
    queue::lease::succeed_batch(&db.pool, &[success(&first[0])])
        .await
        .unwrap();
    let second = queue::lease::claim(&db.pool, &one_at_a_time).await.unwrap();
    assert_eq!(second[0].head().attributes, json!({"step": "1"}));
    db.drop_database().await;
}

#[tokio::test]
async fn concurrent_claimers_never_hold_two_units_of_one_participant() {
    let db = TestDb::with_connections(8).await;
    let participants: Vec<(Uuid, Uuid)> =
        (0..5).map(|_| (Uuid::new_v4(), Uuid::new_v4())).collect();
    let jobs: Vec<NewJob> = (0..400)
        .map(|i| {
            let (c, p) = participants[i % 5];
            job_for(c, p, json!({ "seq": format!("{i:04}") }))
        })
        .collect();
    queue::enqueue_many(&db.pool, &jobs).await.unwrap();

    let in_flight = Arc::new(Mutex::new(HashSet::new()));
    let applied: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let mut claimers = Vec::new();
    for _ in 0..6 {
        let (pool, in_flight, applied) = (db.pool.clone(), in_flight.clone(), applied.clone());
        claimers.push(tokio::spawn(async move {
            let opts = ClaimOptions {
                max_coalesce: 3,
                ..options(2)
            };
            let mut idle = 0;
            while idle < 20 {
                let units = queue::lease::claim(&pool, &opts).await.unwrap();
                if units.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for unit in &units {
                    let key = unit.head().participant_key.clone();
                    assert!(in_flight.lock().unwrap().insert(key.clone()), "{key} twice");
                    applied
                        .lock()
                        .unwrap()
                        .entry(key)
                        .or_default()
                        .extend(unit.job_ids());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                for unit in &units {
                    in_flight
                        .lock()
                        .unwrap()
                        .remove(&unit.head().participant_key);
                }
                let done: Vec<Success> = units.iter().map(success).collect();
                let lost = queue::lease::succeed_batch(&pool, &done).await.unwrap();
                assert!(lost.is_empty(), "leases lost: {lost:?}");
            }
        }));
    }
    for claimer in claimers {
        claimer.await.unwrap();
    }
    let applied = applied.lock().unwrap().clone();
    assert_eq!(applied.values().map(Vec::len).sum::<usize>(), 400);
    let distinct: HashSet<i64> = applied.values().flatten().copied().collect();
    assert_eq!(distinct.len(), 400, "no job was claimed twice");
    assert_eq!(db.count("pdq.jobs").await, 0, "every unit was finished");
    assert_eq!(db.count("pdq.finished_jobs").await, 400);
    for ids in applied.values() {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "insertion order per participant"
        );
    }
    db.drop_database().await;
}

#[tokio::test]
async fn five_queued_updates_to_one_participant_coalesce_with_the_last_value_winning() {
    let db = TestDb::new().await;
    let (c, p) = (Uuid::new_v4(), Uuid::new_v4());
    for i in 1..=5 {
        let mut attributes = json!({ "status": format!("step-{i}") });
        if i == 2 {
            attributes["tier"] = json!("gold");
        }
        queue::enqueue(&db.pool, &job_for(c, p, attributes))
            .await
            .unwrap();
    }
    queue::enqueue(&db.pool, &job_for(c, Uuid::new_v4(), json!({"other": "x"})))
        .await
        .unwrap();

    let units = queue::lease::claim(&db.pool, &options(10)).await.unwrap();
    assert_eq!(units.len(), 2, "one unit per participant");
    let unit = units
        .iter()
        .find(|u| u.head().locators.participant_id == Some(p))
        .unwrap();
    assert_eq!(unit.jobs.len(), 5);
    assert_eq!(
        serde_json::Value::Object(unit.merged_attributes()),
        json!({"status": "step-5", "tier": "gold"})
    );
    let lost =
        queue::lease::succeed_batch(&db.pool, &units.iter().map(success).collect::<Vec<_>>())
            .await
            .unwrap();
    assert!(lost.is_empty());
    assert_eq!(
        db.count("pdq.finished_jobs").await,
        6,
        "completing the unit finishes all five"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_live_job_behind_ten_thousand_backfill_jobs_is_claimed_next() {
    let db = TestDb::new().await;
    queue::enqueue_many(&db.pool, &distinct_jobs(10_000, Priority::Backfill))
        .await
        .unwrap();
    let live = queue::enqueue(
        &db.pool,
        &job_for(Uuid::new_v4(), Uuid::new_v4(), json!({"vip": "yes"})),
    )
    .await
    .unwrap()
    .unwrap();
    let next = queue::lease::claim(&db.pool, &options(1)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].head().id, live);
    assert_eq!(next[0].head().priority, Priority::Live);
    db.drop_database().await;
}

#[tokio::test]
async fn every_bad_row_rule_refuses_the_insert_with_its_named_constraint() {
    let db = TestDb::new().await;
    let conv = "'6f1c2d3e-0000-4000-8000-000000000001'";
    let big = "x".repeat(520_000);
    let cases: Vec<(&str, String, &str)> = vec![
        ("array", format!("(conversation_id, attributes) values ({conv}, '[\"a\"]')"), "attributes_must_be_a_json_object"),
        ("string", format!("(conversation_id, attributes) values ({conv}, '\"a\"')"), "attributes_must_be_a_json_object"),
        ("empty object", format!("(conversation_id, attributes) values ({conv}, '{{}}')"), "attributes_must_not_be_empty"),
        ("number value", format!("(conversation_id, attributes) values ({conv}, '{{\"a\": 1}}')"), "attribute_values_must_be_strings"),
        ("boolean value", format!("(conversation_id, attributes) values ({conv}, '{{\"a\": true}}')"), "attribute_values_must_be_strings"),
        ("null value", format!("(conversation_id, attributes) values ({conv}, '{{\"a\": null}}')"), "attribute_values_must_be_strings"),
        ("object value", format!("(conversation_id, attributes) values ({conv}, '{{\"a\": {{}}}}')"), "attribute_values_must_be_strings"),
        ("empty key", format!("(conversation_id, attributes) values ({conv}, '{{\"\": \"v\"}}')"), "attribute_keys_must_not_be_empty"),
        ("blank key", format!("(conversation_id, attributes) values ({conv}, '{{\"  \": \"v\"}}')"), "attribute_keys_must_not_be_empty"),
        ("oversize", format!("(conversation_id, attributes) values ({conv}, jsonb_build_object('a', '{big}'))"), "attributes_must_fit_the_512000_byte_request_limit"),
        ("neither locator", "(attributes) values ('{\"a\": \"b\"}')".to_owned(), "exactly_one_of_conversation_id_or_external_tag"),
        ("both locators", format!("(conversation_id, external_tag, attributes) values ({conv}, 'T', '{{\"a\": \"b\"}}')"), "exactly_one_of_conversation_id_or_external_tag"),
        ("empty tag", "(external_tag, attributes) values ('', '{\"a\": \"b\"}')".to_owned(), "external_tag_must_not_be_empty"),
        ("two participant locators", format!("(conversation_id, participant_id, participant_purpose, attributes) values ({conv}, {conv}, 'customer', '{{\"a\": \"b\"}}')"), "at_most_one_participant_locator"),
        ("blank purpose", format!("(conversation_id, participant_purpose, attributes) values ({conv}, ' ', '{{\"a\": \"b\"}}')"), "participant_locator_must_not_be_empty"),
        ("unknown priority", format!("(conversation_id, priority, attributes) values ({conv}, 'urgent', '{{\"a\": \"b\"}}')"), "priority_must_be_live_or_backfill"),
        ("protected key", format!("(conversation_id, attributes) values ({conv}, '{{\"context.firstName\": \"Eve\"}}')"), "attribute_keys_must_not_use_a_protected_prefix"),
        ("dialer key", format!("(conversation_id, attributes) values ({conv}, '{{\"dialerContactId\": \"1\"}}')"), "attribute_keys_must_not_use_a_protected_prefix"),
        ("zero attempts", format!("(conversation_id, max_attempts, attributes) values ({conv}, 0, '{{\"a\": \"b\"}}')"), "max_attempts_must_be_positive"),
    ];
    for (name, values, constraint) in &cases {
        let error = sqlx::query(&format!("insert into pdq.jobs {values}"))
            .execute(&db.pool)
            .await
            .expect_err(name);
        let refused = error.as_database_error().and_then(|e| e.constraint());
        assert_eq!(refused, Some(*constraint), "{name}: {error}");
        assert_ne!(
            queue::constraint_meaning(constraint),
            queue::constraint_meaning("unknown"),
            "{constraint} has a meaning for producers"
        );
    }
    // A refused row in a multi-row statement refuses the whole statement and changes nothing.
    let mixed = format!(
        "insert into pdq.jobs (conversation_id, attributes) values ({conv}, '{{\"ok\": \"yes\"}}'), ({conv}, '{{\"bad\": 2}}')"
    );
    assert!(sqlx::query(&mixed).execute(&db.pool).await.is_err());
    assert_eq!(
        db.count("pdq.jobs").await,
        0,
        "a refused row changes nothing"
    );
    // The library maps the refusal to a readable error.
    let bad = NewJob {
        locators: Locators::conversation(Uuid::new_v4()),
        attributes: json!({"a": 1}),
        ..NewJob::default()
    };
    let error = queue::enqueue(&db.pool, &bad).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("attribute_values_must_be_strings"),
        "{error}"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn the_same_idempotency_key_twice_yields_one_job_even_after_it_finished() {
    let db = TestDb::new().await;
    let insert = "insert into pdq.jobs (conversation_id, attributes, idempotency_key)
                  values ('6f1c2d3e-0000-4000-8000-000000000001', '{\"a\": \"b\"}', 'order-42')
                  on conflict (idempotency_key) do nothing";
    sqlx::query(insert).execute(&db.pool).await.unwrap();
    sqlx::query(insert).execute(&db.pool).await.unwrap();
    assert_eq!(db.count("pdq.jobs").await, 1);
    let keyed = NewJob {
        idempotency_key: Some("order-42".into()),
        ..job_for(Uuid::new_v4(), Uuid::new_v4(), json!({"a": "b"}))
    };
    let existing = queue::enqueue(&db.pool, &keyed).await.unwrap();
    assert!(
        existing.is_some(),
        "pdq.enqueue returns the pending job's id"
    );
    assert_eq!(db.count("pdq.jobs").await, 1);

    let unit = queue::lease::claim(&db.pool, &options(1))
        .await
        .unwrap()
        .remove(0);
    queue::lease::succeed_batch(&db.pool, &[success(&unit)])
        .await
        .unwrap();
    sqlx::query(insert).execute(&db.pool).await.unwrap();
    assert_eq!(queue::enqueue(&db.pool, &keyed).await.unwrap(), None);
    assert_eq!(
        db.count("pdq.jobs").await,
        0,
        "an applied key stays applied"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn dead_letter_then_requeue_makes_the_job_claimable_again_with_history_kept() {
    let db = TestDb::new().await;
    let (c, p) = (Uuid::new_v4(), Uuid::new_v4());
    queue::enqueue(&db.pool, &job_for(c, p, json!({"k": "v"})))
        .await
        .unwrap();
    let unit = queue::lease::claim(&db.pool, &options(1))
        .await
        .unwrap()
        .remove(0);
    let record = DeadLetterRecord {
        api: ApiRefusal {
            http_status: Some(404),
            error_code: Some("not.found".into()),
            error_message: Some("The requested resource was not found.".into()),
            context_id: Some("ctx-1".into()),
            correlation_id: Some("ctx-1".into()),
            error_body: Some(json!({"code": "not.found", "status": 404})),
        },
        ..DeadLetterRecord::new(DeadReason::NotFound, "participant not found")
    };
    assert_eq!(
        queue::lease::dead_letter(&db.pool, &unit.fence(), None, &record, true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(db.count("pdq.inflight").await, 0);

    let dead = queue::dlq::list(&db.pool, &DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "not_found");
    assert_eq!(dead[0].api.http_status, Some(404));
    assert_eq!(dead[0].api.error_code.as_deref(), Some("not.found"));
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].locators, Locators::ids(c, p));
    let shown = serde_json::to_value(&dead[0]).unwrap();
    assert_eq!(
        (shown["conversation_id"].as_str(), shown["reason"].as_str()),
        (Some(c.to_string().as_str()), Some("not_found")),
        "`pdq dlq show` and `dlq list --json` keep the contract's column names at the top level"
    );

    let filter = DeadLetterFilter {
        reason: Some(DeadReason::NotFound),
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        queue::dlq::requeue(&db.pool, &filter, false).await.unwrap(),
        1
    );
    assert_eq!(
        queue::dlq::requeue(&db.pool, &filter, false).await.unwrap(),
        0,
        "requeued once"
    );
    let again = queue::lease::claim(&db.pool, &options(1)).await.unwrap();
    assert_eq!(again.len(), 1, "claimable again");
    assert_eq!(again[0].head().attributes, json!({"k": "v"}));
    assert_eq!(
        again[0].head().attempts,
        1,
        "a requeued job starts with fresh attempts"
    );

    let history = queue::dlq::show(&db.pool, dead[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(history.requeued_at.is_some());
    assert_eq!(history.requeue_count, 1);
    assert!(queue::dlq::list(&db.pool, &DeadLetterFilter::default())
        .await
        .unwrap()
        .is_empty());
    let all = DeadLetterFilter {
        include_requeued: true,
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        queue::dlq::list(&db.pool, &all).await.unwrap().len(),
        1,
        "history kept"
    );
    assert_eq!(queue::dlq::purge(&db.pool, &all).await.unwrap(), 1);
    db.drop_database().await;
}

#[tokio::test]
async fn a_retried_unit_waits_for_its_run_at_and_a_snooze_spends_no_attempt() {
    let db = TestDb::new().await;
    queue::enqueue(
        &db.pool,
        &job_for(Uuid::new_v4(), Uuid::new_v4(), json!({"k": "v"})),
    )
    .await
    .unwrap();
    let unit = queue::lease::claim(&db.pool, &options(1))
        .await
        .unwrap()
        .remove(0);
    queue::lease::retry(
        &db.pool,
        &unit.fence(),
        Duration::from_millis(300),
        &json!({"status": 429}),
        false,
    )
    .await
    .unwrap();
    assert!(
        queue::lease::claim(&db.pool, &options(1))
            .await
            .unwrap()
            .is_empty(),
        "not before run_at"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = queue::lease::claim(&db.pool, &options(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        again.head().attempts,
        1,
        "the rate-limit wait gave its attempt back"
    );
    queue::lease::release(&db.pool, &again.fence())
        .await
        .unwrap();
    let third = queue::lease::claim(&db.pool, &options(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        third.head().attempts,
        1,
        "a released unit spends no attempt"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn status_reports_depth_age_and_dead_letters() {
    let db = TestDb::new().await;
    queue::enqueue_many(&db.pool, &distinct_jobs(3, Priority::Backfill))
        .await
        .unwrap();
    queue::enqueue_many(&db.pool, &distinct_jobs(2, Priority::Live))
        .await
        .unwrap();
    let unit = queue::lease::claim(&db.pool, &options(1))
        .await
        .unwrap()
        .remove(0);
    let record = DeadLetterRecord::new(DeadReason::ConversationEnded, "ended");
    queue::lease::dead_letter(&db.pool, &unit.fence(), None, &record, true)
        .await
        .unwrap();

    let status = queue::status(&db.pool).await.unwrap();
    let depth: HashMap<(String, String), i64> = status
        .depth
        .iter()
        .map(|r| ((r.state.clone(), r.priority.clone()), r.jobs))
        .collect();
    assert_eq!(depth[&("pending".into(), "backfill".into())], 3);
    assert_eq!(depth[&("pending".into(), "live".into())], 1);
    assert!(status.oldest_pending_age_secs.unwrap() >= 0.0);
    assert_eq!(status.dead_letters[0].reason, "conversation_ended");
    assert_eq!(status.dead_letters[0].jobs, 1);
    db.drop_database().await;
}

#[tokio::test]
async fn pruning_removes_only_archived_jobs_past_retention() {
    let db = TestDb::new().await;
    queue::enqueue_many(&db.pool, &distinct_jobs(4, Priority::Live))
        .await
        .unwrap();
    let units = queue::lease::claim(&db.pool, &options(4)).await.unwrap();
    queue::lease::succeed_batch(&db.pool, &units.iter().map(success).collect::<Vec<_>>())
        .await
        .unwrap();
    sqlx::query("update pdq.finished_jobs set finished_at = now() - interval '2 days' where id in (select id from pdq.finished_jobs order by id limit 3)")
        .execute(&db.pool)
        .await
        .unwrap();
    let pruned = queue::prune(
        &db.pool,
        queue::Retained::FinishedJobs,
        Duration::from_secs(86_400),
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 3);
    assert_eq!(db.count("pdq.finished_jobs").await, 1);
    db.drop_database().await;
}

#[tokio::test]
async fn a_job_scheduled_for_later_does_not_block_a_due_job_behind_it() {
    let db = TestDb::new().await;
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    let tomorrow = NewJob {
        run_at: Some(chrono::Utc::now() + chrono::Duration::days(1)),
        ..job_for(cid, pid, json!({"reminder": "tomorrow"}))
    };
    queue::enqueue(&db.pool, &tomorrow).await.unwrap();
    let live = queue::enqueue(&db.pool, &job_for(cid, pid, json!({"status": "now"})))
        .await
        .unwrap()
        .unwrap();
    let units = queue::lease::claim(&db.pool, &options(10)).await.unwrap();
    assert_eq!(units.len(), 1, "the due job is claimed at once");
    assert_eq!(units[0].job_ids(), vec![live]);
    db.drop_database().await;
}

#[tokio::test]
async fn a_job_waiting_for_its_retry_still_blocks_the_jobs_behind_it() {
    let db = TestDb::new().await;
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    queue::enqueue(&db.pool, &job_for(cid, pid, json!({"v": "1"})))
        .await
        .unwrap();
    let first = queue::lease::claim(&db.pool, &options(10))
        .await
        .unwrap()
        .remove(0);
    queue::lease::retry(
        &db.pool,
        &first.fence(),
        Duration::from_secs(3_600),
        &json!({}),
        true,
    )
    .await
    .unwrap();
    queue::enqueue(&db.pool, &job_for(cid, pid, json!({"v": "2"})))
        .await
        .unwrap();
    assert!(
        queue::lease::claim(&db.pool, &options(10))
            .await
            .unwrap()
            .is_empty(),
        "order holds: the newer job waits for the retry"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_row_the_worker_cannot_read_is_dead_lettered_as_malformed_and_the_rest_is_claimed() {
    let db = TestDb::new().await;
    let good = queue::enqueue(
        &db.pool,
        &job_for(Uuid::new_v4(), Uuid::new_v4(), json!({"k": "v"})),
    )
    .await
    .unwrap()
    .unwrap();
    // A finite deadline past the year the worker's clock type can hold, written before the
    // rule that refuses it existed.
    sqlx::query("alter table pdq.jobs drop constraint expires_at_must_be_before_the_year_10000")
        .execute(&db.pool)
        .await
        .unwrap();
    let bad: i64 = sqlx::query_scalar(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, expires_at)
         values (gen_random_uuid(), gen_random_uuid(), '{\"k\": \"v\"}', '290000-01-01')
         returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let units = queue::lease::claim(&db.pool, &options(10)).await.unwrap();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].job_ids(), vec![good]);
    let (reason, detail): (String, String) =
        sqlx::query_as("select reason, detail from pdq.dead_letters where id = $1")
            .bind(bad)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(reason, "malformed_row");
    assert!(detail.contains("expires_at"), "{detail}");
    assert!(
        detail.contains("290000"),
        "the unreadable value is kept: {detail}"
    );
    // Its story can be read (`pdq jobs show`, the console): the time is stored as the last
    // readable one.
    let records = queue::jobs::records(&db.pool, bad)
        .await
        .expect("the dead letter's record can be read");
    assert_eq!(records.len(), 1);
    let expires_at = records[0].expires_at.expect("a deadline");
    assert_eq!(expires_at.format("%Y").to_string(), "9999");
    assert_eq!(
        db.count("pdq.inflight").await,
        1,
        "only the good unit holds a lease"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn finishing_ten_thousand_units_in_bounded_statements_archives_each_once() {
    let db = TestDb::new().await;
    queue::enqueue_many(&db.pool, &distinct_jobs(10_000, Priority::Backfill))
        .await
        .unwrap();
    let mut units = Vec::new();
    while units.len() < 10_000 {
        let claimed = queue::lease::claim(&db.pool, &options(2_000))
            .await
            .unwrap();
        assert!(!claimed.is_empty());
        units.extend(claimed);
    }
    let done: Vec<Success> = units.iter().map(success).collect();
    for chunk in done.chunks(256) {
        assert!(queue::lease::succeed_batch(&db.pool, chunk)
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(db.count("pdq.jobs").await, 0);
    assert_eq!(db.count("pdq.finished_jobs").await, 10_000);
    assert_eq!(db.count("pdq.applied_keys").await, 10_000);
    assert_eq!(db.count("pdq.inflight").await, 0);
    db.drop_database().await;
}
