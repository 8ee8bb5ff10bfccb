//! DNS rebinding: the console answers only the host names it was started for (its listen
//! address, the localhost forms, and the hosts of `--public-url` / `--allowed-host`), so a page
//! whose name was rebound to the console's address reads nothing and changes nothing.

use pdq::console::ConsoleConfig;
use reqwest::header::{HOST, ORIGIN};
use reqwest::StatusCode;

use crate::helpers::TestDb;
use crate::support::{console_pool, count, seed, Seeded, Served};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Every GET route of the console, with ids from the seeded state.
fn get_routes(seeded: &Seeded) -> Vec<String> {
    vec![
        "/".to_owned(),
        "/?range=day".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs/{}", seeded.keyed),
        format!("/jobs/{}/cancel", seeded.pending[1]),
        "/dlq".to_owned(),
        format!("/dlq/{}", seeded.dead[2]),
        "/assets/console.css".to_owned(),
        "/assets/console.js".to_owned(),
        "/nowhere".to_owned(),
    ]
}

async fn writable_console(db: &TestDb, allowed_hosts: Vec<String>) -> Served {
    Served::start(
        console_pool(db, true).await,
        "127.0.0.1:0".parse().unwrap(),
        ConsoleConfig {
            allow_writes: true,
            refresh_secs: 0,
            allowed_hosts,
            first_read_wait: std::time::Duration::from_secs(30),
            ..ConsoleConfig::default()
        },
    )
    .await
}

/// The CSRF token of the dead-letter page, read the legitimate way.
async fn csrf(console: &Served) -> String {
    let page = http()
        .get(console.url("/dlq"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_foreign_host_gets_nothing_from_any_route() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = writable_console(&db, Vec::new()).await;
    let port = console.addr.port();
    let foreign = [
        format!("rebound.example:{port}"),
        "rebound.example".to_owned(),
        format!("127.0.0.1.rebound.example:{port}"),
        format!("localhost.rebound.example:{port}"),
        format!("sub.localhost.example.:{port}"),
        format!("10.1.2.3:{port}"),
    ];
    for host in &foreign {
        for path in get_routes(&seeded) {
            let answer = http()
                .get(console.url(&path))
                .header(HOST, host)
                .send()
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "GET {path} with Host {host}"
            );
            let body = answer.text().await.unwrap();
            assert!(
                !body.contains("seeded failure") && !body.contains("order-1001"),
                "GET {path} with Host {host} shows no data: {body}"
            );
            assert!(
                !body.contains("name=\"csrf\""),
                "no CSRF token under Host {host}"
            );
        }
    }

    // Even with the real CSRF token and an Origin that matches the forged Host, nothing is
    // changed under a foreign Host.
    let token = csrf(&console).await;
    let dead = seeded.dead[2].to_string();
    let pending = seeded.pending[1].to_string();
    let posts = [
        (
            "/dlq/purge",
            vec![("id", dead.as_str()), ("csrf", token.as_str())],
        ),
        (
            "/dlq/requeue",
            vec![("id", dead.as_str()), ("csrf", token.as_str())],
        ),
        (
            "/dlq/confirm",
            vec![
                ("id", dead.as_str()),
                ("action", "purge"),
                ("csrf", token.as_str()),
            ],
        ),
    ];
    let cancel = format!("/jobs/{pending}/cancel");
    for host in &foreign {
        for (path, form) in posts
            .iter()
            .map(|(p, f)| (p.to_string(), f.clone()))
            .chain([(
                cancel.clone(),
                vec![("confirm", "yes"), ("csrf", token.as_str())],
            )])
        {
            let answer = http()
                .post(console.url(&path))
                .header(HOST, host)
                .header(ORIGIN, format!("http://{host}"))
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "POST {path} with Host {host}"
            );
        }
    }
    assert_eq!(
        count(&db.pool, "select count(*) from pdq.dead_letters").await,
        4
    );
    assert_eq!(
        count(&db.pool, "select count(*) from pdq.cancelled_jobs").await,
        0
    );
    db.drop_database().await;
}

#[tokio::test]
async fn the_listen_address_localhost_and_the_allowed_hosts_are_answered() {
    let db = TestDb::new().await;
    let seeded = seed(&db.pool).await;
    let console = writable_console(
        &db,
        vec![
            "pdq.example.com".to_owned(),
            "Ops.Example.com:8443".to_owned(),
        ],
    )
    .await;
    let port = console.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("localhost.:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
        "pdq.example.com".to_owned(),
        "pdq.example.com:443".to_owned(),
        "ops.example.com".to_owned(),
    ] {
        for path in get_routes(&seeded) {
            let answer = http()
                .get(console.url(&path))
                .header(HOST, &host)
                .send()
                .await
                .unwrap();
            assert_ne!(
                answer.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "GET {path} with Host {host}"
            );
        }
    }
    // A write through the proxy's name works (the proxy keeps the Host and the Origin).
    let token = csrf(&console).await;
    let dead = seeded.dead[2].to_string();
    let answer = http()
        .post(console.url("/dlq/purge"))
        .header(HOST, "pdq.example.com")
        .header(ORIGIN, "https://pdq.example.com")
        .form(&[("id", dead.as_str()), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        count(&db.pool, "select count(*) from pdq.dead_letters").await,
        3
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_console_on_every_interface_answers_address_literals_but_not_foreign_names() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let secret = crate::support::token();
    let console = Served::start(
        console_pool(&db, false).await,
        "0.0.0.0:0".parse().unwrap(),
        ConsoleConfig {
            token: Some(secret.clone()),
            refresh_secs: 0,
            ..ConsoleConfig::default()
        },
    )
    .await;
    let port = console.addr.port();
    use secrecy::ExposeSecret;
    for (host, expected) in [
        (format!("127.0.0.1:{port}"), StatusCode::OK),
        (format!("192.0.2.10:{port}"), StatusCode::OK),
        (
            format!("rebound.example:{port}"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
    ] {
        let answer = http()
            .get(console.url("/jobs"))
            .header(HOST, &host)
            .bearer_auth(secret.expose_secret())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), expected, "Host {host}");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn pdq_console_answers_the_host_of_its_public_url() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "console",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--public-url",
            "https://pdq.example.com/console/",
            "--allowed-host",
            "ops.example.com",
        ])
        .env("DATABASE_URL", db.url())
        .env_remove("PDQ_CONSOLE_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/jobs");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(answer) = http().get(&url).send().await {
            answered = Some(answer.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(StatusCode::OK));
    for (host, expected) in [
        ("pdq.example.com", StatusCode::OK),
        ("ops.example.com", StatusCode::OK),
        ("example.com", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let answer = http().get(&url).header(HOST, host).send().await.unwrap();
        assert_eq!(answer.status(), expected, "Host {host}");
    }
    let _ = child.kill();
    let _ = child.wait();
    db.drop_database().await;
}
