//! `pdq demo`: everything end to end on the local Postgres and an in-process emulator —
//! migrate, create live conversations, enqueue a realistic mix, work, report, verify.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use pdq::db::ScratchDatabase;
use pdq::emulator::{
    ConversationSpec, CreatedConversation, Emulator, EmulatorConfig, EmulatorHandle, Faults,
    RateLimit, RateLimitScope,
};
use pdq::genesys::GenesysClient;
use pdq::queue::{self, Locators, NewJob, Priority};
use pdq::worker::{Api, Budget, Worker, WorkerConfig};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Database;

/// Demo settings.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Keep the demo database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
    /// Do not serve the console at the end (in a terminal it stays up until Ctrl-C).
    #[arg(long)]
    pub no_console: bool,
    /// Also print the worker's log lines (otherwise progress and the report only; RUST_LOG
    /// overrides).
    #[arg(short, long)]
    pub verbose: bool,
}

/// Runs the demo; exits non-zero if any accepted update was lost, is still pending when the
/// demo gives up, or is not visible. SIGINT, SIGTERM or SIGHUP (a closed terminal) stop it and
/// drop its database (unless `--keep`).
pub async fn run(db: &Database, args: DemoArgs, json_output: bool) -> anyhow::Result<ExitCode> {
    let admin_url = match db.url() {
        Some(url) if pdq::db::connect_options(url).is_ok() => url,
        _ => pdq::db::LOCAL_SERVER_URL,
    };
    let mut interrupted = Interrupt::listen()?;
    let prefix = format!("pdq_demo_{}_", chrono::Utc::now().format("%Y%m%d_%H%M%S"));
    let mut scratch = ScratchDatabase::create(admin_url, &prefix, 24)
        .await
        .map_err(|error| match error {
            pdq::db::Error::Connect { .. } => anyhow::Error::new(error).context(
                "no Postgres answered (DATABASE_URL or 127.0.0.1:5432): start one, e.g. `docker compose up -d postgres`",
            ),
            other => other.into(),
        })?;
    if args.keep {
        scratch.keep();
    }
    let say = Say { json: json_output };
    say.line(&format!("demo database: {}", scratch.name()));
    let outcome = tokio::select! {
        result = demo(scratch.pool().clone(), &args, say) => result,
        signal = interrupted.recv() => {
            let name = scratch.name().to_owned();
            // Dropping the armed database ends its sessions (`WITH (FORCE)`) and removes it.
            drop(scratch);
            match args.keep {
                true => eprintln!("\ninterrupted by {}: demo database {name} kept", signal.name),
                false => eprintln!("\ninterrupted by {}: demo database {name} dropped", signal.name),
            }
            return Ok(ExitCode::from(128 + signal.number));
        }
    };
    if !args.keep {
        scratch.drop_now().await;
    }
    outcome
}

/// Where the demo's own lines go: stdout, or stderr when stdout carries the JSON report.
#[derive(Debug, Clone, Copy)]
struct Say {
    json: bool,
}

impl Say {
    fn line(self, text: &str) {
        match self.json {
            true => eprintln!("{text}"),
            false => println!("{text}"),
        }
    }
}

/// A signal that stops the demo.
struct Stopped {
    name: &'static str,
    number: u8,
}

/// SIGINT, SIGTERM and SIGHUP, listened to from the start so that none kills the demo before
/// its database is dropped.
struct Interrupt {
    #[cfg(unix)]
    signals: [(tokio::signal::unix::Signal, &'static str, u8); 3],
}

impl Interrupt {
    fn listen() -> anyhow::Result<Interrupt> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Interrupt {
                signals: [
                    (signal(SignalKind::interrupt())?, "SIGINT", 2),
                    (signal(SignalKind::hangup())?, "SIGHUP", 1),
                    (signal(SignalKind::terminate())?, "SIGTERM", 15),
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Interrupt {})
    }

    async fn recv(&mut self) -> Stopped {
        #[cfg(unix)]
        {
            let [(int, ..), (hup, ..), (term, ..)] = &mut self.signals;
            let index = tokio::select! {
                _ = int.recv() => 0,
                _ = hup.recv() => 1,
                _ = term.recv() => 2,
            };
            let (_, name, number) = &self.signals[index];
            Stopped {
                name,
                number: *number,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stopped {
                name: "Ctrl-C",
                number: 2,
            }
        }
    }
}

/// The demo itself, on a migrated database.
async fn demo(pool: PgPool, args: &DemoArgs, say: Say) -> anyhow::Result<ExitCode> {
    let json_output = say.json;
    let emulator = Emulator::start(EmulatorConfig {
        rate_limit: Some(RateLimit {
            requests: 100,
            window_secs: 5,
            scope: RateLimitScope::Token,
        }),
        ..EmulatorConfig::default()
    })
    .await?;
    say.line(&format!(
        "emulator: {} (100 requests per 5 s per token)",
        emulator.base_url()
    ));
    let conversations: Vec<CreatedConversation> = (0..40)
        .map(|i| emulator.create_conversation(spec(i)))
        .collect();
    let refused = enqueue_mix(&pool, &emulator, &conversations).await?;
    let enqueued = count(&pool, "pdq.jobs").await?;
    say.line(&format!(
        "enqueued {enqueued} jobs; {} bad rows refused at INSERT:",
        refused.len()
    ));
    for row in &refused {
        say.line(&format!("  {row}"));
    }

    let worker = Worker::new(pool.clone(), Api::new(client(&emulator)?), demo_config());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    let ending: Vec<Uuid> = conversations[35..].iter().map(|c| c.id).collect();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut ended = false;
    let mut stormed = false;
    let mut progress = Progress::new();
    loop {
        let left = count(&pool, "pdq.jobs").await?;
        progress.show(&pool, left, started.elapsed()).await?;
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        if !stormed && started.elapsed() > Duration::from_secs(1) {
            // A short 429 storm: every executor pauses until Retry-After, then one probes.
            emulator.set_faults(Faults {
                storm_secs: 2,
                storm_retry_after_secs: 1,
                ..Faults::default()
            });
            stormed = true;
        }
        if !ended && started.elapsed() > Duration::from_secs(2) {
            ending.iter().for_each(|id| {
                emulator.end_conversation(*id);
            });
            ended = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.finish();
    stop.cancel();
    running.await??;
    let elapsed = started.elapsed();

    let report = report(&pool, &emulator, &worker, enqueued, refused, elapsed).await?;
    print_report(&report, json_output)?;
    if !args.no_console {
        super::console::after_demo(&pool, json_output).await?;
    }
    pool.close().await;
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line on stderr while the worker drains the queue: redrawn in place on a terminal,
/// a line every two seconds otherwise.
struct Progress {
    terminal: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    async fn show(&mut self, pool: &PgPool, left: i64, elapsed: Duration) -> anyhow::Result<()> {
        let every = match self.terminal {
            true => Duration::from_millis(200),
            false => Duration::from_secs(2),
        };
        if self.last.is_some_and(|last| last.elapsed() < every) && left > 0 {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let applied = count(pool, "pdq.finished_jobs").await?;
        let dead = count(pool, "pdq.dead_letters").await?;
        let line = format!(
            "working: {applied} applied, {dead} dead-lettered, {left} left ({:.1} s)",
            elapsed.as_secs_f64()
        );
        match self.terminal {
            true => eprint!("\r\x1b[2K{line}"),
            false => eprintln!("{line}"),
        }
        self.drawn = true;
        Ok(())
    }

    fn finish(&self) {
        if self.terminal && self.drawn {
            eprintln!();
        }
    }
}

fn spec(i: usize) -> ConversationSpec {
    let base = if i % 4 == 3 {
        ConversationSpec::media("message")
    } else {
        ConversationSpec::voice()
    };
    let spec = base.customer(&format!("Customer {i}")).agent();
    if i % 4 == 0 {
        spec.external_tag(&format!("ORDER-{i}"))
    } else {
        spec
    }
}

fn demo_config() -> WorkerConfig {
    WorkerConfig {
        executors: 16,
        lookup_window: Duration::from_secs(4),
        budget: Budget {
            per_minute: 1_200,
            backfill_share: 0.5,
            shared: true,
            name: "demo".into(),
        },
        seed: Some(42),
        ..WorkerConfig::default()
    }
}

fn client(emulator: &EmulatorHandle) -> anyhow::Result<GenesysClient> {
    Ok(GenesysClient::new(emulator.client_settings())?)
}

fn update(locators: Locators, attributes: Value) -> NewJob {
    NewJob {
        locators,
        attributes,
        ..NewJob::default()
    }
}

/// Ids known, purpose only, external tag, bursts, bad targets, expired, a backfill, bad rows.
async fn enqueue_mix(
    pool: &PgPool,
    emulator: &EmulatorHandle,
    conversations: &[CreatedConversation],
) -> anyhow::Result<Vec<RefusedRow>> {
    let mut jobs = Vec::new();
    for (i, c) in conversations.iter().enumerate() {
        let customer = Locators {
            participant_id: c.participant("customer"),
            ..Locators::conversation(c.id)
        };
        jobs.push(update(
            customer.clone(),
            json!({"orderStatus": "shipped", "n": i.to_string()}),
        ));
        jobs.push(update(
            Locators::conversation(c.id).purpose("customer"),
            json!({"vip": if i % 3 == 0 { "gold" } else { "silver" }}),
        ));
        if i % 4 == 0 {
            jobs.push(update(
                Locators::external_tag(format!("ORDER-{i}")),
                json!({"screenPop": format!("crm://order/{i}")}),
            ));
        }
        if i < 5 {
            for step in 1..=10 {
                jobs.push(update(
                    customer.clone(),
                    json!({"routingHint": format!("step-{step}")}),
                ));
            }
        }
        jobs.push(NewJob {
            priority: Some(Priority::Backfill),
            ..update(customer, json!({"segment": "loyal", "backfilled": "yes"}))
        });
    }
    let gone = emulator.create_conversation(ConversationSpec::voice().customer("Gone"));
    emulator.end_conversation(gone.id);
    let twins = emulator.create_conversation(
        ConversationSpec::voice()
            .customer("Twin A")
            .customer("Twin B"),
    );
    let first = &conversations[0];
    let first_customer = Locators {
        participant_id: first.participant("customer"),
        ..Locators::conversation(first.id)
    };
    for _ in 0..3 {
        jobs.push(update(
            Locators::ids(first.id, Uuid::new_v4()),
            json!({"x": "unknown participant"}),
        ));
    }
    jobs.push(update(
        Locators {
            participant_id: gone.participant("customer"),
            ..Locators::conversation(gone.id)
        },
        json!({"x": "ended"}),
    ));
    jobs.push(update(
        Locators::conversation(twins.id).purpose("customer"),
        json!({"x": "ambiguous"}),
    ));
    jobs.push(update(
        Locators::external_tag("NO-SUCH-ORDER"),
        json!({"x": "no tag"}),
    ));
    jobs.push(NewJob {
        run_at: Some(chrono::Utc::now() - chrono::Duration::seconds(10)),
        expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(5)),
        ..update(first_customer, json!({"x": "too late"}))
    });
    queue::enqueue_many(pool, &jobs).await?;
    let mut refused = Vec::new();
    for bad in [json!({"vip": true}), json!({"context.firstName": "Eve"})] {
        let result =
            queue::enqueue(pool, &update(Locators::conversation(first.id), bad.clone())).await;
        refused.push(refused_at_insert(bad, result)?);
    }
    Ok(refused)
}

/// A bad row and the rule of `pdq.jobs` (its constraint) that refused it.
#[derive(Debug, Serialize)]
struct RefusedRow {
    /// The row's attributes.
    attributes: Value,
    /// The constraint that refused it.
    constraint: String,
    /// What the rule says.
    meaning: String,
}

impl std::fmt::Display for RefusedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} refused by {}: {}",
            self.attributes, self.constraint, self.meaning
        )
    }
}

/// The rule that refused an enqueue of a bad row. Any other failure (the connection, a
/// timeout) is the demo's error, not a refusal; a bad row that was accepted is one too.
fn refused_at_insert(
    attributes: Value,
    result: Result<Option<i64>, queue::Error>,
) -> anyhow::Result<RefusedRow> {
    match result {
        Err(queue::Error::Refused {
            constraint,
            meaning,
        }) => Ok(RefusedRow {
            attributes,
            constraint,
            meaning,
        }),
        Err(other) => Err(anyhow::Error::new(other).context("enqueueing a bad row failed")),
        Ok(id) => {
            anyhow::bail!("a bad row was accepted (job {id:?}): a rule of pdq.jobs is missing")
        }
    }
}

async fn count(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(pool)
        .await?)
}

async fn report(
    pool: &PgPool,
    emulator: &EmulatorHandle,
    worker: &Worker,
    enqueued: i64,
    refused_at_insert: Vec<RefusedRow>,
    elapsed: Duration,
) -> anyhow::Result<DemoReport> {
    let applied = count(pool, "pdq.finished_jobs").await?;
    let pending = count(pool, "pdq.jobs").await?;
    let dead: Vec<(String, i64)> =
        sqlx::query_as("select reason, count(*) from pdq.dead_letters group by 1 order by 2 desc")
            .fetch_all(pool)
            .await?;
    let dead_total: i64 = dead.iter().map(|(_, n)| n).sum();
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "select percentile_cont(0.5) within group (order by extract(epoch from finished_at - created_at))::float8,
                percentile_cont(0.99) within group (order by extract(epoch from finished_at - created_at))::float8
         from pdq.finished_jobs",
    )
    .fetch_one(pool)
    .await?;
    let metrics = worker.metrics();
    let patches = emulator.count(
        "PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes",
        None,
    );
    let calls: u64 = emulator
        .request_counts()
        .iter()
        .filter(|c| c.route.contains("/api/v2/"))
        .map(|c| c.count)
        .sum();
    let too_many = emulator
        .request_counts()
        .iter()
        .filter(|c| c.status == 429)
        .map(|c| c.count)
        .sum::<u64>();
    let retried: BTreeMap<String, u64> = ["rate_limited", "transient", "not_yet_visible"]
        .iter()
        .map(|kind| {
            (
                kind.to_string(),
                metrics.outcome_count(&format!("retry:{kind}")),
            )
        })
        .collect();
    Ok(DemoReport {
        enqueued,
        refused_at_insert,
        applied,
        dead_lettered: dead_total,
        pending,
        lost: enqueued - applied - dead_total - pending,
        not_visible: not_visible(pool, emulator).await?,
        dead_letters_by_reason: dead.into_iter().collect(),
        retried_units: retried,
        api_calls: calls,
        attribute_patches: patches,
        http_429: too_many,
        limiter_pauses: worker.pacer().pauses(),
        enqueue_to_applied_p50_ms: p50.map(|s| (s * 1000.0).round()),
        enqueue_to_applied_p99_ms: p99.map(|s| (s * 1000.0).round()),
        seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Applied attributes missing on the emulator: replays applied jobs per participant in order
/// and compares the final value of every key.
async fn not_visible(pool: &PgPool, emulator: &EmulatorHandle) -> anyhow::Result<usize> {
    let rows: Vec<(Uuid, Uuid, Value)> = sqlx::query_as(
        "select resolved_conversation_id, resolved_participant_id, attributes from pdq.finished_jobs order by id",
    )
    .fetch_all(pool)
    .await?;
    let mut expected: BTreeMap<(Uuid, Uuid), BTreeMap<String, Value>> = BTreeMap::new();
    for (cid, pid, attributes) in rows {
        let entry = expected.entry((cid, pid)).or_default();
        if let Value::Object(map) = attributes {
            entry.extend(map);
        }
    }
    let mut missing = 0;
    for ((cid, pid), keys) in expected {
        let actual = emulator.attributes_of(cid, pid).unwrap_or_default();
        missing += keys
            .iter()
            .filter(|(k, v)| actual.get(*k).map(|a| json!(a)) != Some((*v).clone()))
            .count();
    }
    Ok(missing)
}

/// What the demo did, printed as a table or (with `--json`) as JSON.
#[derive(Debug, Serialize)]
struct DemoReport {
    /// Jobs accepted at INSERT.
    enqueued: i64,
    /// Bad rows refused at INSERT, each with the rule that refused it.
    refused_at_insert: Vec<RefusedRow>,
    /// Jobs applied (archived in `pdq.finished_jobs`).
    applied: i64,
    /// Jobs dead-lettered.
    dead_lettered: i64,
    /// Jobs still queued when the demo stopped.
    pending: i64,
    /// Accepted jobs that are neither applied, dead-lettered nor pending.
    lost: i64,
    /// Applied values the emulator does not show.
    not_visible: usize,
    /// Dead letters by reason.
    dead_letters_by_reason: BTreeMap<String, i64>,
    /// Units retried, by cause.
    retried_units: BTreeMap<String, u64>,
    /// Requests to `/api/v2/…`.
    api_calls: u64,
    /// Attribute PATCHes received by the emulator.
    attribute_patches: u64,
    /// Answers with status 429.
    http_429: u64,
    /// Pauses of the rate limiter.
    limiter_pauses: u64,
    /// Median time from enqueue to applied.
    enqueue_to_applied_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    enqueue_to_applied_p99_ms: Option<f64>,
    /// How long the worker ran.
    seconds: f64,
}

impl DemoReport {
    /// Every accepted update was applied or dead-lettered (none is still pending, none was
    /// lost), and every applied value is visible.
    fn complete(&self) -> bool {
        self.pending == 0 && self.lost == 0 && self.not_visible == 0
    }

    /// The last line of the report: success only when [`DemoReport::complete`].
    fn verdict(&self) -> String {
        if self.complete() {
            return "every accepted update was applied or dead-lettered, and every applied value \
                    is visible on the emulator"
                .to_owned();
        }
        let mut problems = Vec::new();
        if self.pending > 0 {
            problems.push(format!(
                "{} job(s) still pending when the demo stopped (it gave up at its timeout; \
                 try --timeout-secs)",
                self.pending
            ));
        }
        if self.lost != 0 {
            problems.push(format!("{} accepted job(s) LOST", self.lost));
        }
        if self.not_visible > 0 {
            problems.push(format!(
                "{} applied value(s) NOT VISIBLE on the emulator",
                self.not_visible
            ));
        }
        format!("INCOMPLETE: {}", problems.join("; "))
    }
}

/// Prints the report: pretty JSON, or the table people read.
fn print_report(report: &DemoReport, json_output: bool) -> anyhow::Result<()> {
    if json_output {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    // Numbers as JSON writes them (`12.0`, `null`), as this table always showed them.
    let ms = |value: Option<f64>| value.map_or_else(|| "null".to_owned(), |v| format!("{v:?}"));
    println!("\n== pdq demo report ==");
    for (key, value) in [
        ("enqueued", report.enqueued.to_string()),
        ("applied", report.applied.to_string()),
        ("dead_lettered", report.dead_lettered.to_string()),
        ("pending", report.pending.to_string()),
        ("lost", report.lost.to_string()),
        ("not_visible", report.not_visible.to_string()),
        ("seconds", format!("{:?}", report.seconds)),
    ] {
        println!("{key:<28} {value}");
    }
    println!(
        "{:<28} {} (p99 {})",
        "enqueue→applied p50 ms",
        ms(report.enqueue_to_applied_p50_ms),
        ms(report.enqueue_to_applied_p99_ms)
    );
    println!(
        "{:<28} {} calls, {} attribute PATCHes, {} answered 429",
        "API", report.api_calls, report.attribute_patches, report.http_429
    );
    println!("{:<28} {}", "rate-limit pauses", report.limiter_pauses);
    println!(
        "retried units by cause:     {}",
        serde_json::to_string(&report.retried_units)?
    );
    println!(
        "dead letters by reason:     {}",
        serde_json::to_string(&report.dead_letters_by_reason)?
    );
    println!("refused at INSERT:");
    for row in &report.refused_at_insert {
        println!("  {row}");
    }
    println!("\n{}", report.verdict());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pending: i64, lost: i64, not_visible: usize) -> DemoReport {
        DemoReport {
            enqueued: 100,
            refused_at_insert: Vec::new(),
            applied: 90 - pending - lost,
            dead_lettered: 10,
            pending,
            lost,
            not_visible,
            dead_letters_by_reason: BTreeMap::new(),
            retried_units: BTreeMap::new(),
            api_calls: 0,
            attribute_patches: 0,
            http_429: 0,
            limiter_pauses: 0,
            enqueue_to_applied_p50_ms: None,
            enqueue_to_applied_p99_ms: None,
            seconds: 1.0,
        }
    }

    #[test]
    fn jobs_still_pending_at_the_timeout_are_no_success() {
        let unfinished = report(7, 0, 0);
        assert!(!unfinished.complete());
        let verdict = unfinished.verdict();
        assert!(verdict.starts_with("INCOMPLETE"), "{verdict}");
        assert!(verdict.contains("7 job(s) still pending"), "{verdict}");
        assert!(!verdict.contains("every accepted update"), "{verdict}");
        assert!(report(0, 0, 0).complete());
        assert!(report(0, 0, 0)
            .verdict()
            .starts_with("every accepted update"));
        assert!(report(0, 2, 0).verdict().contains("2 accepted job(s) LOST"));
        assert!(report(0, 0, 3)
            .verdict()
            .contains("3 applied value(s) NOT VISIBLE"));
    }

    #[test]
    fn only_a_broken_rule_counts_as_refused_at_insert() {
        let refused = queue::Error::Refused {
            constraint: "attribute_values_must_be_strings".into(),
            meaning: "every attribute value must be a JSON string".into(),
        };
        let row = refused_at_insert(json!({"vip": true}), Err(refused)).unwrap();
        assert_eq!(
            row.to_string(),
            r#"{"vip":true} refused by attribute_values_must_be_strings: every attribute value must be a JSON string"#
        );
        let connection = queue::Error::Database(sqlx::Error::PoolTimedOut);
        let error = refused_at_insert(json!({}), Err(connection)).unwrap_err();
        assert!(
            format!("{error:#}").contains("enqueueing a bad row failed"),
            "{error:#}"
        );
        assert!(
            refused_at_insert(json!({}), Ok(Some(3))).is_err(),
            "an accepted bad row"
        );
    }
}
