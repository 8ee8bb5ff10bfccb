//! Bad input at volume: generated rows with one defect each, every one refused with the
//! constraint that names the defect; nothing partial is written; good rows still go in.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

use crate::helpers::TestDb;
use crate::reliability::{Row, Scenario, Stats};

const SCENARIO: &str = "generated bad rows (proptest), good rows sent between them";

/// One defect and the constraint that must refuse it.
#[derive(Debug, Clone)]
struct BadRow {
    columns: Value,
    constraint: &'static str,
}

fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_]{0,15}"
}

fn good_attributes() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), "[ -~]{0,20}", 1..4)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn bad_row() -> impl Strategy<Value = BadRow> {
    let conversation = json!("6f1c2d3e-0000-4000-8000-000000000001");
    let with = move |attributes: Value, extra: Value, constraint| {
        let mut columns = json!({ "conversation_id": conversation, "attributes": attributes });
        columns
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        BadRow {
            columns,
            constraint,
        }
    };
    let non_string = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1])),
        Just(json!({"a": "b"}))
    ];
    prop_oneof![
        (good_attributes(), key(), non_string).prop_map({
            let with = with.clone();
            move |(mut a, k, v)| {
                a.insert(k, v);
                with(
                    Value::Object(a),
                    json!({}),
                    "attribute_values_must_be_strings",
                )
            }
        }),
        prop_oneof![
            Just(json!([])),
            Just(json!("text")),
            any::<i32>().prop_map(Value::from)
        ]
        .prop_map({
            let with = with.clone();
            move |a| with(a, json!({}), "attributes_must_be_a_json_object")
        }),
        (good_attributes(), " {0,3}").prop_map({
            let with = with.clone();
            move |(mut a, blank)| {
                a.insert(blank, json!("v"));
                with(
                    Value::Object(a),
                    json!({}),
                    "attribute_keys_must_not_be_empty",
                )
            }
        }),
        good_attributes().prop_map({
            let with = with.clone();
            move |a| {
                with(
                    Value::Object(a),
                    json!({"external_tag": "T"}),
                    "exactly_one_of_conversation_id_or_external_tag",
                )
            }
        }),
        (good_attributes(), "[a-z]{3,10}").prop_map({
            let with = with.clone();
            move |(a, p)| {
                with(
                    Value::Object(a),
                    json!({"participant_purpose": p, "participant_name": "N"}),
                    "at_most_one_participant_locator",
                )
            }
        }),
        (good_attributes(), "[a-z]{3,10}")
            .prop_filter("not a priority", |(_, p)| p != "live" && p != "backfill")
            .prop_map({
                let with = with.clone();
                move |(a, p)| {
                    with(
                        Value::Object(a),
                        json!({"priority": p}),
                        "priority_must_be_live_or_backfill",
                    )
                }
            }),
        (good_attributes(), key()).prop_map({
            let with = with.clone();
            move |(mut a, k)| {
                a.insert(format!("context.{k}"), json!("x"));
                with(
                    Value::Object(a),
                    json!({}),
                    "attribute_keys_must_not_use_a_protected_prefix",
                )
            }
        }),
    ]
}

async fn insert(db: &TestDb, columns: &Value) -> Result<(), Option<String>> {
    let result = sqlx::query(
        "insert into pdq.jobs (conversation_id, external_tag, participant_purpose, participant_name, priority, attributes)
         select (r->>'conversation_id')::uuid, r->>'external_tag', r->>'participant_purpose',
                r->>'participant_name', coalesce(r->>'priority', 'live'), r->'attributes'
         from (select $1::jsonb as r) as input",
    )
    .bind(columns)
    .execute(&db.pool)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) => Err(error
            .as_database_error()
            .and_then(|e| e.constraint())
            .map(str::to_owned)),
    }
}

#[tokio::test]
async fn ten_thousand_generated_bad_rows_are_each_refused_by_the_right_constraint() {
    let scenario = Scenario::start(SCENARIO);
    let db = TestDb::with_connections(4).await;
    let attempts: i64 = if super::long_mode() { 50_000 } else { 10_000 };
    let mut runner = TestRunner::deterministic();
    let (bad, good) = (bad_row(), good_attributes());
    let mut good_inserted = 0;
    let mut by_constraint: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in 0..attempts {
        let row = bad.new_tree(&mut runner).unwrap().current();
        let refused = insert(&db, &row.columns)
            .await
            .expect_err("a bad row is refused");
        assert_eq!(
            refused.as_deref(),
            Some(row.constraint),
            "{n}: {}",
            row.columns
        );
        *by_constraint.entry(row.constraint).or_default() += 1;
        if n % 100 == 0 {
            let attributes = Value::Object(good.new_tree(&mut runner).unwrap().current());
            let row = json!({"conversation_id": "6f1c2d3e-0000-4000-8000-000000000001", "attributes": attributes});
            insert(&db, &row)
                .await
                .expect("a good row sent on its own goes in");
            good_inserted += 1;
        }
    }
    let stored = db.count("pdq.jobs").await;
    let lost = good_inserted - stored;
    let result = match lost {
        0 => Ok(()),
        _ => Err(format!(
            "{stored} rows stored for {good_inserted} good ones"
        )),
    };
    scenario.record(&Row {
        scenario: SCENARIO,
        result,
        caveat: None,
        stats: Some(Stats {
            jobs: attempts + good_inserted,
            applied: None,
            lost,
            stale: None,
            duplicates: None,
            dead: Default::default(),
            stuck: None,
            drain: None,
        }),
        notes: format!(
            "{attempts} bad rows each refused by its own named constraint ({} different ones); \
             {good_inserted} good rows accepted; {stored} rows stored (no partial writes)",
            by_constraint.len()
        ),
    });
    assert_eq!(stored, good_inserted, "no partial writes");
    db.drop_database().await;
}
