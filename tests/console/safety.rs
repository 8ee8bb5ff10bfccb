//! The safety rules over plain HTTP: CSRF, the token off loopback, read-only mode, bad input,
//! the headers, and the console working as a login role granted only `pdq_operator`.

use pdq::console::{self, ConsoleConfig};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::helpers::TestDb;
use crate::support::{console_pool, count, seed, serve, token, Served};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

/// The body of the page at `path`.
async fn page_text(console: &Served, path: &str) -> String {
    http()
        .get(console.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn csrf(console: &Served) -> String {
    let page = page_text(console, "/dlq").await;
    csrf_of(&page)
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = serve(&db, true).await;
    let id = seeded.dead[2].to_string();
    let waiting = "select count(*) from pdq.dead_letters";

    for form in [
        vec![("id", id.as_str())],
        vec![("id", id.as_str()), ("csrf", "0000")],
        vec![("id", id.as_str()), ("csrf", "")],
    ] {
        let answer = http()
            .post(console.url("/dlq/purge"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{form:?}");
        assert!(answer.text().await.unwrap().contains("CSRF"));
    }
    let cancel = http()
        .post(console.url(&format!("/jobs/{}/cancel", seeded.pending[0])))
        .form(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::FORBIDDEN);
    assert_eq!(count(&db.pool, waiting).await, 4, "nothing was purged");
    assert_eq!(
        count(&db.pool, "select count(*) from pdq.cancelled_jobs").await,
        0
    );

    // From another origin, even with the token: refused.
    let token = csrf(&console).await;
    let foreign = http()
        .post(console.url("/dlq/purge"))
        .header("origin", "http://evil.example")
        .form(&[("id", id.as_str()), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert_eq!(count(&db.pool, waiting).await, 4);

    // With it: purged.
    let done = http()
        .post(console.url("/dlq/purge"))
        .header("origin", &console.base)
        .form(&[("id", id.as_str()), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(count(&db.pool, waiting).await, 3);
    db.drop_database().await;
}

#[tokio::test]
async fn off_loopback_every_request_needs_the_token() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let secret = token();
    let no_token = ConsoleConfig::default();
    assert!(
        console::check_listen("0.0.0.0:9188".parse().unwrap(), &no_token).is_err(),
        "binding every interface without a token is refused"
    );
    assert!(console::check_listen("127.0.0.1:9188".parse().unwrap(), &no_token).is_ok());

    let console = Served::start(
        console_pool(&db, false).await,
        "0.0.0.0:0".parse().unwrap(),
        ConsoleConfig {
            token: Some(secret.clone()),
            ..ConsoleConfig::default()
        },
    )
    .await;
    for path in ["/", "/jobs", "/dlq", "/assets/console.css", "/nowhere"] {
        let answer = http().get(console.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(answer.headers().contains_key("www-authenticate"));
    }
    let wrong = http()
        .get(console.url("/"))
        .bearer_auth("t-not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let bearer = http()
        .get(console.url("/"))
        .bearer_auth(secret.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let page = bearer.text().await.unwrap();
    assert!(
        !page.contains(secret.expose_secret()),
        "the token is never rendered"
    );
    let basic = http()
        .get(console.url("/dlq"))
        .basic_auth("operator", Some(secret.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    db.drop_database().await;
}

#[tokio::test]
async fn pdq_console_refuses_to_listen_off_loopback_without_a_token() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["console", "--listen", "0.0.0.0:0"])
        .env("DATABASE_URL", crate::helpers::database_url())
        .env_remove(console::TOKEN_ENV)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PDQ_CONSOLE_TOKEN"), "{stderr}");
}

#[tokio::test]
async fn a_read_only_console_refuses_writes_and_its_sessions_cannot_write() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = serve(&db, false).await;
    let page = page_text(&console, "/dlq").await;
    assert!(
        !page.contains("id=\"purge\""),
        "no write buttons when read-only"
    );
    let token = csrf_of(&page);
    let id = seeded.dead[0].to_string();
    let answer = http()
        .post(console.url("/dlq/requeue"))
        .form(&[("id", id.as_str()), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("--allow-writes"));
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from pdq.jobs where requeued_from is not null"
        )
        .await,
        0
    );
    let read_only = console_pool(&db, false).await;
    let refused = sqlx::query("delete from pdq.dead_letters")
        .execute(&read_only)
        .await
        .unwrap_err();
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("25006"),
        "read_only_sql_transaction"
    );
    read_only.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_query_strings_get_a_400_page_that_says_why() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let console = serve(&db, true).await;
    let token = csrf(&console).await;
    for (path, says) in [
        ("/jobs?id=abc", "id=\"abc\""),
        ("/jobs?id=-4", "positive"),
        ("/jobs?state=finished", "unknown state"),
        ("/jobs?conversation=nope", "UUID"),
        ("/jobs?before=99999999999999999999", "before="),
        ("/jobs/abc", "not a job id"),
        ("/dlq/0", "not a job id"),
        ("/dlq?reason=lost", "unknown dead-letter reason"),
        ("/dlq?since=yesterday", "since="),
        (
            "/dlq?since=2026-11-25T10:00&until=2026-11-25T09:00",
            "earlier",
        ),
        ("/dlq?after=zz", "page key"),
        ("/?range=week", "hour or day"),
        ("/jobs?key=a%00b", "NUL"),
        ("/jobs?tag=%00", "NUL"),
        ("/jobs?key=%FF%FE", ""),
    ] {
        let answer = http().get(console.url(path)).send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap().replace("&quot;", "\"");
        if path == "/jobs?key=%FF%FE" {
            assert_eq!(
                status,
                StatusCode::OK,
                "{path}: an odd key is just not found"
            );
            continue;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    for form in [
        vec![("csrf", token.as_str()), ("action", "requeue")],
        vec![("csrf", token.as_str()), ("action", "explode"), ("id", "1")],
        vec![("csrf", token.as_str()), ("action", "purge"), ("id", "x")],
    ] {
        let answer = http()
            .post(console.url("/dlq/confirm"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{form:?}");
    }
    assert_eq!(
        http()
            .get(console.url("/jobs/999999"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    db.drop_database().await;
}

#[tokio::test]
async fn every_page_has_a_strict_policy_and_no_inline_script() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = serve(&db, true).await;
    for path in [
        "/".to_owned(),
        "/?range=day".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs/{}", seeded.dead[0]),
        format!("/jobs/{}/cancel", seeded.pending[0]),
        "/dlq".to_owned(),
        format!("/dlq/{}", seeded.dead[0]),
        "/jobs?id=zz".to_owned(),
    ] {
        let answer = http().get(console.url(&path)).send().await.unwrap();
        let csp = answer.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        let html = answer.text().await.unwrap();
        let inline_scripts = html.matches("<script>").count() + html.matches("<script ").count()
            - html.matches("<script src=").count();
        assert_eq!(inline_scripts, 0, "{path}");
        assert!(!html.contains(" style="), "{path}: inline style");
        assert!(!html.contains(" onclick="), "{path}: inline handler");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn the_console_works_as_a_login_role_granted_only_pdq_operator() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let role = format!("pdq_t_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("create role {role} login in role pdq_operator"))
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(console::connect_options(
            db.options.clone().username(&role),
            true,
        ))
        .await
        .unwrap();
    let console = Served::start(
        pool.clone(),
        "127.0.0.1:0".parse().unwrap(),
        ConsoleConfig {
            allow_writes: true,
            ..ConsoleConfig::default()
        },
    )
    .await;
    for path in [
        "/".to_owned(),
        "/?range=day".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs?conversation={}", seeded.conversation),
        format!("/jobs/{}", seeded.dead[0]),
        "/dlq".to_owned(),
        format!("/dlq/{}", seeded.dead[0]),
    ] {
        let answer = http().get(console.url(&path)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path} as pdq_operator");
    }
    let token = csrf(&console).await;
    let first = seeded.dead[0].to_string();
    let confirm = http()
        .post(console.url("/dlq/confirm"))
        .form(&[
            ("csrf", token.as_str()),
            ("action", "requeue"),
            ("id", &first),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), StatusCode::OK);
    assert!(confirm.text().await.unwrap().contains("tier"));
    for (path, form) in [
        ("/dlq/requeue".to_owned(), vec![("id", first.clone())]),
        (
            "/dlq/purge".to_owned(),
            vec![("id", seeded.dead[3].to_string())],
        ),
        (
            format!("/jobs/{}/cancel", seeded.pending[2]),
            vec![("confirm", "yes".to_owned())],
        ),
    ] {
        let mut form = form;
        form.push(("csrf", token.clone()));
        let answer = http()
            .post(console.url(&path))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path} as pdq_operator");
    }
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from pdq.jobs where requeued_from is not null"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db.pool, "select count(*) from pdq.dead_letters").await,
        3
    );
    let by: String = sqlx::query_scalar("select cancelled_by from pdq.cancelled_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(by, role);
    drop(console);
    pool.close().await;
    let server = db.server.clone();
    db.drop_database().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pdq::db::connect_options(&server).unwrap())
        .await
        .unwrap();
    sqlx::query(&format!("drop role if exists {role}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

#[tokio::test]
async fn pdq_demo_prints_the_console_url_and_exits_when_not_in_a_terminal() {
    let run = |extra: &'static [&'static str]| async move {
        let mut args = vec!["demo", "--timeout-secs", "120"];
        args.extend_from_slice(extra);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(&args)
            .env("DATABASE_URL", crate::helpers::database_url())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap()
    };
    let output = tokio::time::timeout(std::time::Duration::from_secs(180), run(&[]))
        .await
        .expect("the demo exits by itself when stdout is not a terminal");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("console: http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no console URL in:\n{stdout}"));
    assert!(line.contains("not kept up"), "{line}");
    let skipped = run(&["--no-console"]).await;
    assert!(skipped.status.success());
    assert!(!String::from_utf8_lossy(&skipped.stdout).contains("console: http"));
}

#[tokio::test]
async fn pdq_run_serves_the_read_only_console_beside_the_worker() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let emulator = pdq::emulator::Emulator::start(pdq::emulator::EmulatorConfig::default())
        .await
        .unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["run", "--metrics-addr", "127.0.0.1:0", "--console", &addr])
        .env("DATABASE_URL", db.url())
        .env("GENESYS_API_URL", emulator.base_url())
        .env("GENESYS_LOGIN_URL", emulator.base_url())
        .env("GENESYS_CLIENT_ID", pdq::emulator::DEMO_CLIENT_ID)
        .env("GENESYS_CLIENT_SECRET", pdq::emulator::DEMO_CLIENT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}");
    let up = crate::helpers::wait_until(std::time::Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            http()
                .get(format!("{url}/jobs"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    assert!(up, "pdq run --console answers");
    let page = http()
        .get(format!("{url}/dlq"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("read-only"));
    let refused = http()
        .post(format!("{url}/dlq/purge"))
        .form(&[("id", "1"), ("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let _ = worker.kill().await;
    db.drop_database().await;
}

/// A console that may not wait at all for the queue's figures still answers every overview
/// request at once (without them while they are being read), and the figures arrive.
#[tokio::test]
async fn the_overview_answers_before_its_figures_are_read_and_shows_them_once_read() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let console = Served::start(
        console_pool(&db, false).await,
        "127.0.0.1:0".parse().unwrap(),
        ConsoleConfig {
            first_read_wait: std::time::Duration::ZERO,
            ..ConsoleConfig::default()
        },
    )
    .await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut shown = false;
    while !shown && std::time::Instant::now() < until {
        let answer = http().get(console.url("/")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body = answer.text().await.unwrap();
        assert!(
            body.contains("id=\"verdict\"") != body.contains("id=\"verdict-pending\""),
            "either the figures or the note that they are being read"
        );
        assert!(
            body.contains("class=\"charts\"") != body.contains("id=\"charts-pending\""),
            "either the charts or the note that they are being read"
        );
        shown = body.contains("id=\"verdict\"") && body.contains("class=\"charts\"");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        shown,
        "the figures and charts read in the background are shown"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_dead_letter_of_an_unknown_reason_is_listed_not_an_error_page() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    // A reason this binary does not know (written by a newer pdq, or by hand).
    sqlx::query("update pdq.dead_letters set reason = 'sent_by_a_newer_pdq' where id = $1")
        .bind(seeded.dead[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let console = serve(&db, false).await;
    for path in [
        "/dlq".to_owned(),
        "/dlq?reason=sent_by_a_newer_pdq".to_owned(),
        format!("/dlq/{}", seeded.dead[0]),
        format!("/jobs/{}", seeded.dead[0]),
        "/".to_owned(),
    ] {
        let answer = http().get(console.url(&path)).send().await.unwrap();
        let status = answer.status();
        let page = answer.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert!(page.contains("sent_by_a_newer_pdq"), "{path}: {page}");
    }
    let list = page_text(&console, "/dlq").await;
    for id in &seeded.dead[1..] {
        assert!(
            list.contains(&format!("/dlq/{id}\"")),
            "dead letter {id}: {list}"
        );
    }
    drop(console);
    db.drop_database().await;
}
