//! Shipping pdq: the CLI conventions (`--version`, completions, man page), `pdq healthcheck`,
//! login roles from `pdq roles`, secrets from files, and corporate networks (an HTTP proxy from
//! the environment, a CA from `SSL_CERT_FILE`), each tested through the real binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pdq::emulator::{ConversationSpec, Emulator, EmulatorConfig};
use pdq::queue::{self, Locators, NewJob};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::helpers::{wait_until, TestDb};

/// Every proxy variable reqwest reads: removed from each child, so the machine's own proxy
/// settings never change what a test sees.
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `pdq` with no proxy variables and no database.
fn pdq() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdq"));
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    command.env_remove("DATABASE_URL");
    command
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run pdq"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch folder under the system's temporary directory.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdq-packaging-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The subcommands every generated document must mention.
const SUBCOMMANDS: [&str; 8] = [
    "run",
    "migrate",
    "status",
    "doctor",
    "healthcheck",
    "roles",
    "completions",
    "man",
];

#[tokio::test]
async fn version_names_the_commit_and_the_build_date() {
    let mut command = pdq();
    command.arg("--version");
    let out = output(command).await;
    assert!(out.status.success(), "{out:?}");
    let line = text(&out.stdout);
    let line = line.trim();
    let rest = line
        .strip_prefix(&format!("pdq {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, rest) = rest.split_once(", built ").expect(line);
    let date = rest.strip_suffix(')').expect(line);
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    assert!(
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "{line}"
    );
    // Built from a git checkout, the commit is the checkout's.
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|h| h.status.success());
    if let Some(head) = head {
        assert!(text(&head.stdout).starts_with(commit), "{line}");
    }
}

#[tokio::test]
async fn completions_parse_in_their_shell_and_offer_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let mut command = pdq();
        command.args(["completions", shell]);
        let out = output(command).await;
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        for subcommand in SUBCOMMANDS {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
        assert!(script.contains("metrics-addr"), "{shell} lacks run's flags");
        // Syntax-check with the shell itself where it is installed (bash always is here).
        let dir = scratch_dir();
        let file = dir.join(format!("pdq.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let checked = match shell {
            "fish" => Command::new("fish").arg("--no-execute").arg(&file).output(),
            _ => Command::new(shell).arg("-n").arg(&file).output(),
        };
        match checked {
            Ok(checked) => assert!(checked.status.success(), "{shell} -n: {checked:?}"),
            Err(error) => assert!(shell != "bash", "bash must be installed: {error}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let mut unknown = pdq();
    unknown.args(["completions", "cmd.exe"]);
    assert_eq!(output(unknown).await.status.code(), Some(2));
}

#[tokio::test]
async fn the_man_page_is_roff_and_documents_every_subcommand() {
    let mut command = pdq();
    command.arg("man");
    let out = output(command).await;
    assert!(out.status.success(), "{out:?}");
    let page = text(&out.stdout);
    assert!(page.contains(".TH pdq 1"), "{page}");
    assert!(
        page.contains(".SH NAME") && page.contains(".SH SUBCOMMANDS"),
        "{page}"
    );
    for subcommand in SUBCOMMANDS {
        assert!(
            page.contains(&format!("pdq\\-{subcommand}(1)")),
            "{subcommand}"
        );
    }
    // With a folder: one page per subcommand, the way packagers install them.
    let dir = scratch_dir();
    let mut command = pdq();
    command.args(["man", "--out-dir"]).arg(&dir);
    assert!(output(command).await.status.success());
    for page in ["pdq.1", "pdq-run.1", "pdq-healthcheck.1", "pdq-roles.1"] {
        let body = std::fs::read_to_string(dir.join(page)).unwrap_or_default();
        assert!(body.starts_with(".ie") || body.contains(".TH"), "{page}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Serves one canned HTTP answer to every connection on loopback.
async fn canned_http(status_line: &'static str, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 {status_line}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_on_200_and_1_on_anything_else_with_one_line_saying_why() {
    let check = |url: String| {
        let mut command = pdq();
        command.args(["healthcheck", "--timeout-ms", "2000", "--url", &url]);
        command
    };
    let ok = canned_http("200 OK", "ok\n").await;
    let out = output(check(format!("http://{ok}/healthz"))).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout).lines().count(), 1, "{out:?}");
    assert!(text(&out.stdout).starts_with("healthy: "), "{out:?}");

    let sick = canned_http(
        "503 Service Unavailable",
        "paused: the API rejects the credentials\n",
    )
    .await;
    let out = output(check(format!("http://{sick}/healthz"))).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = text(&out.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("503") && line.contains("rejects the credentials"),
        "{line}"
    );

    // Without --url: PDQ_METRICS_ADDR's port, on loopback when it listens everywhere (the image).
    let mut follows = pdq();
    follows
        .arg("healthcheck")
        .env_remove("PDQ_HEALTHCHECK_URL")
        .env("PDQ_METRICS_ADDR", format!("0.0.0.0:{}", ok.port()));
    let out = output(follows).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains(&format!("http://127.0.0.1:{}/healthz", ok.port())),
        "{out:?}"
    );

    // The emulator's healthcheck in docker-compose.yml.
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let out = output(check(format!("{}/healthz", emulator.base_url()))).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A closed port: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = output(check(format!("http://{closed}/healthz"))).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = text(&out.stdout);
    assert!(
        line.starts_with("unhealthy: ") && line.contains("cannot connect"),
        "{line}"
    );
}

/// A forward and CONNECT proxy on loopback that records the first request line of every
/// connection it serves (and refuses any destination that is not loopback).
struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(120), Proxy::serve(client, log))
                            .await;
                });
            }
        });
        Proxy { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    async fn serve(mut client: TcpStream, log: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await?;
            if n == 0 || buf.len() > 64 * 1024 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let first = head.lines().next().unwrap_or_default().to_owned();
        log.lock().unwrap().push(first.clone());
        let mut parts = first.split(' ');
        let (method, target, version) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if method == "CONNECT" {
            let Ok(dest) = target.parse::<SocketAddr>() else {
                return client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            };
            if !dest.ip().is_loopback() {
                return client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
            }
            let mut upstream = TcpStream::connect(dest).await?;
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
            upstream.write_all(&buf[head_end..]).await?;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            return Ok(());
        }
        // Forward proxying: `GET http://host:port/path HTTP/1.1` → origin form upstream.
        let Ok(url) = url::Url::parse(target) else {
            return client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        };
        let dest = url
            .socket_addrs(|| None)
            .ok()
            .and_then(|a| a.into_iter().next());
        let Some(dest) = dest.filter(|d| d.ip().is_loopback()) else {
            return client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        };
        let mut upstream = TcpStream::connect(dest).await?;
        let path = &url[url::Position::BeforePath..];
        let mut rewritten = format!("{method} {path} {version}").into_bytes();
        rewritten.extend_from_slice(&buf[first.len()..]);
        upstream.write_all(&rewritten).await?;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        Ok(())
    }
}

/// The test database's URL, logged in as `user` (trust authentication on the test server).
fn url_as(db: &TestDb, user: &str) -> String {
    let mut url = url::Url::parse(&db.url()).expect("database URL");
    url.set_username(user).unwrap();
    url.set_password(None).unwrap();
    url.to_string()
}

/// Drops login roles made by a test (roles are cluster-wide).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_pdq_roles_login_secret_files_and_a_proxy_applies_jobs() {
    let db = TestDb::new().await;
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let proxy = Proxy::start().await;
    let conversation = emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let job = NewJob {
        locators: Locators {
            conversation_id: Some(conversation.id),
            participant_purpose: Some("customer".into()),
            ..Locators::default()
        },
        attributes: json!({ "tier": "gold" }),
        ..NewJob::default()
    };
    queue::enqueue(&db.pool, &job).await.unwrap();

    // The login role, made by `pdq roles --apply` as the owner.
    let role = format!("pdq_t_run_{}", Uuid::new_v4().simple());
    let mut roles = pdq();
    roles
        .args(["roles", "--apply", "--worker", &role])
        .env("DATABASE_URL", db.url());
    let out = output(roles).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("member of pdq_worker"),
        "{out:?}"
    );

    let dir = scratch_dir();
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "pdq-demo-secret\n").unwrap();
    let database_url = dir.join("database-url");
    std::fs::write(&database_url, format!("{}\n", url_as(&db, &role))).unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut worker = pdq()
        .args(["run", "--metrics-addr", &metrics.to_string()])
        .env("DATABASE_URL_FILE", &database_url)
        .env("GENESYS_API_URL", emulator.base_url())
        .env("GENESYS_CLIENT_ID", "pdq-demo")
        .env_remove("GENESYS_CLIENT_SECRET")
        .env("GENESYS_CLIENT_SECRET_FILE", &secret)
        .env("HTTP_PROXY", proxy.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pdq run");

    let applied = wait_until(Duration::from_secs(30), || async {
        db.count("pdq.finished_jobs").await == 1
    })
    .await;
    let healthy = wait_until(Duration::from_secs(15), || async {
        let mut check = pdq();
        check
            .args(["healthcheck", "--url", &format!("http://{metrics}/healthz")])
            // The probe must not go through the proxy, even when one is set.
            .env("HTTP_PROXY", proxy.url());
        output(check).await.status.success()
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let mut stopped = false;
    for _ in 0..300 {
        if worker.try_wait().unwrap().is_some() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !stopped {
        let _ = worker.kill();
    }
    let status = worker.wait().unwrap();
    let mut logs = String::new();
    let _ = std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut logs);

    assert!(applied, "the job was not applied: {logs}");
    assert!(healthy, "healthcheck never passed: {logs}");
    assert!(status.success(), "pdq run stopped with {status}: {logs}");
    assert!(!logs.contains("pdq-demo-secret"), "{logs}");
    let seen = proxy.seen();
    let base = emulator.base_url();
    assert!(
        seen.iter()
            .any(|line| line.starts_with(&format!("POST {base}/oauth/token"))),
        "the token request went through the proxy: {seen:?}"
    );
    assert!(
        seen.iter().all(|line| line.contains(&base)),
        "only the emulator was proxied: {seen:?}"
    );
    assert!(
        !seen.iter().any(|line| line.contains("/healthz")),
        "healthcheck bypasses the proxy: {seen:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    drop_roles(db, &[&role]).await;
}

#[tokio::test]
async fn a_pdq_roles_login_cannot_migrate_or_change_the_schema() {
    let db = TestDb::new().await;
    let role = format!("pdq_t_ops_{}", Uuid::new_v4().simple());
    let worker = format!("pdq_t_run_{}", Uuid::new_v4().simple());

    // Printed, not applied: nothing exists yet.
    let mut print = pdq();
    print.args(["roles", "--worker", &worker, "--operator", &role]);
    let out = output(print).await;
    assert!(out.status.success(), "{out:?}");
    let sql = text(&out.stdout);
    assert!(
        sql.contains(&format!("grant pdq_worker to {worker};")),
        "{sql}"
    );
    assert!(
        sql.contains(&format!("grant pdq_operator to {role};")),
        "{sql}"
    );
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(&worker)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!exists, "printing applies nothing");

    // The printed SQL is what --apply runs: run it through Postgres as printed.
    sqlx::raw_sql(&sql).execute(&db.pool).await.unwrap();

    // The operator login does an operator's work.
    for command in [&["status"][..], &["dlq", "list"][..], &["jobs", "list"][..]] {
        let mut operator = pdq();
        operator
            .args(command)
            .env("DATABASE_URL", url_as(&db, &role));
        let out = output(operator).await;
        assert!(out.status.success(), "{command:?}: {out:?}");
    }

    for name in [&worker, &role] {
        // A fresh database: migrating needs CREATE on it, which the login role lacks.
        let mut admin = pdq::db::connect(db.options.clone(), 1).await.unwrap();
        let fresh = format!("pdq_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("create database {fresh}"))
            .execute(&admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(&url_as(&db, name)).unwrap();
        url.set_path(&format!("/{fresh}"));
        let mut migrate = pdq();
        migrate.arg("migrate").env("DATABASE_URL", url.as_str());
        let out = output(migrate).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{name} migrated: {out:?}");
        assert!(stderr.contains("permission denied"), "{stderr}");
        sqlx::query(&format!("drop database {fresh} with (force)"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        admin = pdq::db::connect(db.options.clone().username(name), 1)
            .await
            .unwrap();
        // On the migrated database: no DDL in pdq's schema.
        for ddl in [
            "create table pdq.intruder (x int)",
            "alter table pdq.jobs add column intruder int",
            "drop table pdq.dead_letters",
        ] {
            let refused = sqlx::query(ddl).execute(&admin).await.unwrap_err();
            assert!(
                refused.to_string().contains("permission denied")
                    || refused.to_string().contains("must be owner"),
                "{name}: {ddl}: {refused}"
            );
        }
        admin.close().await;
    }

    // Applying is idempotent (Compose's `roles` service runs at every `up`) ...
    for _ in 0..2 {
        let mut again = pdq();
        again
            .args(["roles", "--apply", "--worker", &worker])
            .env("DATABASE_URL", db.url());
        let out = output(again).await;
        assert!(out.status.success(), "{out:?}");
    }
    // ... but never hands a group to a role that holds more than the group gives.
    let mighty = format!("pdq_t_big_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("create role {mighty} login createdb"))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut refused = pdq();
    refused
        .args(["roles", "--apply", "--operator", &mighty])
        .env("DATABASE_URL", db.url());
    let out = output(refused).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("more rights than pdq_operator"),
        "{out:?}"
    );
    let member: bool = sqlx::query_scalar("select pg_has_role($1, 'pdq_operator', 'member')")
        .bind(&mighty)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!member, "nothing was granted");

    // A database URL file that cannot be read is a usage error naming the file.
    let mut missing = pdq();
    missing.args([
        "status",
        "--database-url-file",
        "/nonexistent/pdq/database-url",
    ]);
    let out = output(missing).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr)
            .contains("cannot read the database URL file /nonexistent/pdq/database-url"),
        "{out:?}"
    );

    // A name that is not a plain identifier is a usage error, and nothing runs.
    let mut bad = pdq();
    bad.args(["roles", "--apply", "--worker", "x; drop table pdq.jobs"])
        .env("DATABASE_URL", db.url());
    let out = output(bad).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    drop_roles(db, &[&worker, &role, &mighty]).await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn test_ca() -> (String, rcgen::Certificate, rcgen::KeyPair) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pdq test inspecting-proxy CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf, leaf_key)
}

/// TLS in front of `backend` on loopback; counts completed and failed handshakes.
async fn tls_front(
    leaf: &rcgen::Certificate,
    key: &rcgen::KeyPair,
    backend: SocketAddr,
) -> (SocketAddr, Arc<Mutex<(u32, u32)>>) {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Mutex::new((0, 0)));
    let tally = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, tally) = (acceptor.clone(), tally.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(mut tls) => {
                        tally.lock().unwrap().0 += 1;
                        if let Ok(mut upstream) = TcpStream::connect(backend).await {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(60),
                                tokio::io::copy_bidirectional(&mut tls, &mut upstream),
                            )
                            .await;
                        }
                    }
                    Err(_) => tally.lock().unwrap().1 += 1,
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_from_ssl_cert_file_is_trusted_through_an_https_proxy() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let backend: SocketAddr = emulator
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (ca_pem, leaf, key) = test_ca();
    let (front, handshakes) = tls_front(&leaf, &key, backend).await;
    let proxy = Proxy::start().await;
    let dir = scratch_dir();
    let ca_file = dir.join("corporate-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();

    let doctor = |trust: bool| {
        let mut command = pdq();
        command
            .args(["doctor", "--api-url", &format!("https://{front}")])
            .env("GENESYS_CLIENT_ID", "pdq-demo")
            .env("GENESYS_CLIENT_SECRET", "pdq-demo-secret")
            .env("HTTPS_PROXY", proxy.url())
            .env_remove("SSL_CERT_DIR");
        match trust {
            true => command.env("SSL_CERT_FILE", &ca_file),
            false => command.env_remove("SSL_CERT_FILE"),
        };
        command
    };
    let trusted = output(doctor(true)).await;
    assert!(
        trusted.status.success(),
        "{}\n{}",
        text(&trusted.stdout),
        text(&trusted.stderr)
    );
    assert!(
        text(&trusted.stdout).contains("organization pdq emulator org"),
        "{trusted:?}"
    );
    let ok_handshakes = handshakes.lock().unwrap().0;
    assert!(ok_handshakes >= 1, "TLS went through the test CA");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|line| *line == format!("CONNECT {front} HTTP/1.1")),
        "the TLS connection was tunnelled through the proxy: {:?}",
        proxy.seen()
    );

    // Without the CA (system store and built-in roots only), the certificate is refused.
    let refused = output(doctor(false)).await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(handshakes.lock().unwrap().1 >= 1, "the handshake failed");
    assert_eq!(handshakes.lock().unwrap().0, ok_handshakes);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The build script's reader of `.git` files (build/git_head.rs), for images built without git.
#[path = "../../build/git_head.rs"]
#[allow(dead_code)]
mod git_head;

/// A scratch folder for one git layout.
fn git_scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdq-git-{name}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_build_reads_the_commit_from_git_files_in_every_layout() {
    let a = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";
    let b = "ffeeddccbbaa99887766554433221100ffeeddcc";
    // A branch as a loose ref.
    let loose = git_scratch("loose");
    write(loose.join("HEAD"), "ref: refs/heads/main\n");
    write(loose.join("refs/heads/main"), &format!("{a}\n"));
    assert_eq!(git_head::head_commit(&loose).as_deref(), Some(a));
    // Only in packed-refs (a fresh clone, or after `git gc`).
    let packed = git_scratch("packed");
    write(packed.join("HEAD"), "ref: refs/heads/main\n");
    write(
        packed.join("packed-refs"),
        &format!("# pack-refs with: peeled fully-peeled sorted \n{b} refs/heads/other\n{a} refs/heads/main\n"),
    );
    assert_eq!(git_head::head_commit(&packed).as_deref(), Some(a));
    // A detached HEAD (a CI checkout of a tag or commit).
    let detached = git_scratch("detached");
    write(detached.join("HEAD"), &format!("{b}\n"));
    assert_eq!(git_head::head_commit(&detached).as_deref(), Some(b));
    // A worktree: `.git` is a file; its HEAD is its own, the refs are the main repository's.
    let main = git_scratch("main");
    write(
        main.join(".git/packed-refs"),
        &format!("{b} refs/heads/feature\n"),
    );
    write(
        main.join(".git/worktrees/wt/HEAD"),
        "ref: refs/heads/feature\n",
    );
    write(main.join(".git/worktrees/wt/commondir"), "../..\n");
    write(main.join("wt/.git"), "gitdir: ../.git/worktrees/wt\n");
    assert_eq!(
        git_head::head_commit(&main.join("wt/.git")).as_deref(),
        Some(b)
    );
    // Nothing to read: no commit, never a guess.
    let empty = git_scratch("empty");
    assert_eq!(git_head::head_commit(&empty), None);
    assert_eq!(git_head::head_commit(&empty.join(".git")), None);
    write(empty.join("HEAD"), "ref: refs/heads/gone\n");
    assert_eq!(
        git_head::head_commit(&empty),
        None,
        "a branch with no commit"
    );
    write(empty.join("HEAD"), "not a commit\n");
    assert_eq!(git_head::head_commit(&empty), None);
    for dir in [loose, packed, detached, main, empty] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// What the image build sees: of `.git` only HEAD, packed-refs and refs/ (`.dockerignore`),
/// copied into one folder (the Dockerfile's `PDQ_GIT_DIR`), names this checkout's commit.
#[test]
fn the_git_files_the_image_build_gets_name_this_checkout_s_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(text(&out.stdout).trim().to_owned())
    };
    let (Some(head), Some(git_dir), Some(common)) = (
        git(&["rev-parse", "HEAD"]),
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        eprintln!("skipped: not a git checkout, or no git");
        return;
    };
    let context = git_scratch("context");
    std::fs::copy(format!("{git_dir}/HEAD"), context.join("HEAD")).unwrap();
    let packed = PathBuf::from(&common).join("packed-refs");
    if packed.exists() {
        std::fs::copy(packed, context.join("packed-refs")).unwrap();
    }
    let status = Command::new("cp")
        .args([
            "-r",
            &format!("{common}/refs"),
            &context.display().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(git_head::head_commit(&context), Some(head.clone()));
    // The checkout itself, read without git, agrees too.
    let dot_git = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".git");
    assert_eq!(git_head::head_commit(&dot_git), Some(head));
    std::fs::remove_dir_all(context).unwrap();
}
/// The YAML document at `path` under the crate root.
fn yaml_file(path: &str) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap()
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrators_probe_liveness_on_livez_and_readiness_on_readyz() {
    // Helm: readiness on /readyz, liveness on /livez (never /healthz, which is readiness).
    let root = env!("CARGO_MANIFEST_DIR");
    let template =
        std::fs::read_to_string(format!("{root}/deploy/helm/pdq/templates/deployment.yaml"))
            .unwrap();
    let probe_path = |probe: &str| {
        let at = template
            .find(&format!("{probe}:"))
            .unwrap_or_else(|| panic!("{probe}"));
        let rest = &template[at..];
        let path = rest.find("path: ").unwrap();
        rest[path + 6..].lines().next().unwrap().trim().to_owned()
    };
    assert_eq!(probe_path("readinessProbe"), "/readyz");
    assert_eq!(probe_path("livenessProbe"), "/livez");

    // Compose: every service running the worker checks liveness.
    let compose = yaml_file("docker-compose.yml");
    let services = compose["services"].as_hash().unwrap();
    let mut workers = 0;
    for (name, service) in services {
        let command: Vec<&str> = service["command"]
            .as_vec()
            .map(|c| c.iter().filter_map(|a| a.as_str()).collect())
            .unwrap_or_default();
        if command.first() != Some(&"run") {
            continue;
        }
        workers += 1;
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_vec()
            .unwrap_or_else(|| panic!("{name:?} has no healthcheck"))
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(
            test,
            ["CMD", "pdq", "healthcheck", "--live"],
            "service {name:?}"
        );
    }
    assert_eq!(workers, 2, "the sandbox and the org worker");

    // The image's HEALTHCHECK checks liveness.
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let health = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK "))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(health, r#"CMD ["pdq", "healthcheck", "--live"]"#);

    // `pdq healthcheck --live` asks /livez on PDQ_METRICS_ADDR's port (the image's setting);
    // without --live it asks /healthz, as before.
    let server = canned_http("200 OK", "alive\n").await;
    for (live, path) in [(true, "/livez"), (false, "/healthz")] {
        let mut command = pdq();
        command
            .arg("healthcheck")
            .env_remove("PDQ_HEALTHCHECK_URL")
            .env("PDQ_METRICS_ADDR", format!("0.0.0.0:{}", server.port()));
        if live {
            command.arg("--live");
        }
        let out = output(command).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(
            text(&out.stdout).contains(&format!("http://127.0.0.1:{}{path}", server.port())),
            "{out:?}"
        );
    }
}
