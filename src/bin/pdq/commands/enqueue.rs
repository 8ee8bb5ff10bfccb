//! `pdq enqueue`: insert one job from a shell.

use std::process::ExitCode;

use pdq::queue::{self, Locators, NewJob};
use serde_json::{Map, Value};

use super::Database;
use crate::cli::EnqueueArgs;
use crate::exit::{Exit, Failed};

/// Enqueues one job and prints its id; a refused row prints the rule it broke.
pub async fn run(db: &Database, args: EnqueueArgs, json: bool) -> anyhow::Result<ExitCode> {
    let job = new_job(args)?;
    let pool = db.pool().await?;
    match queue::enqueue(&pool, &job).await {
        Ok(id) if json => {
            crate::output::json(&serde_json::json!({ "id": id, "enqueued": id.is_some() }))?
        }
        Ok(Some(id)) => println!("enqueued job {id}"),
        Ok(None) => {
            println!("already applied or dead-lettered (idempotency key); nothing enqueued")
        }
        Err(queue::Error::Refused {
            constraint,
            meaning,
        }) => {
            eprintln!("refused: {meaning} (constraint {constraint})");
            if json {
                let body = serde_json::json!({
                    "error": format!("refused: {meaning}"),
                    "constraint": constraint,
                    "exit_code": Exit::Refused.code(),
                });
                crate::output::json(&body)?;
            }
            return Ok(Exit::Refused.status());
        }
        Err(error) => return Err(error.into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn new_job(args: EnqueueArgs) -> anyhow::Result<NewJob> {
    Ok(NewJob {
        attributes: attributes(args.attributes.as_deref(), &args.attr)?,
        locators: Locators {
            conversation_id: args.conversation_id,
            external_tag: args.external_tag,
            participant_id: args.participant_id,
            participant_purpose: args.participant_purpose,
            participant_external_contact_id: args.participant_external_contact_id,
            participant_name: args.participant_name,
        },
        priority: Some(args.priority),
        run_at: args.run_at,
        expires_at: args.expires_at,
        idempotency_key: args.idempotency_key,
        max_attempts: args.max_attempts,
    })
}

/// `--attributes` JSON with each `--attr key=value` merged over it. Values are not checked
/// here: the database's constraints are the single judge, and say why a row is refused.
fn attributes(json: Option<&str>, pairs: &[String]) -> anyhow::Result<Value> {
    let mut value = match json {
        Some(text) => serde_json::from_str(text).map_err(|e| {
            Failed::error(Exit::Usage, format!("--attributes is not valid JSON: {e}"))
        })?,
        None => Value::Object(Map::new()),
    };
    for pair in pairs {
        let Some((key, item)) = pair.split_once('=') else {
            return Err(Failed::error(
                Exit::Usage,
                format!("--attr {pair} must look like key=value"),
            ));
        };
        match &mut value {
            Value::Object(map) => {
                map.insert(key.to_owned(), Value::String(item.to_owned()));
            }
            _ => {
                return Err(Failed::error(
                    Exit::Usage,
                    "--attr needs --attributes to be a JSON object",
                ))
            }
        }
    }
    Ok(value)
}
