//! pdq against the Postgres setups users run: a TLS-only server (every sslmode, a wrong CA,
//! client certificates), PgBouncer (session and transaction mode), a connection budget, a
//! silent connection and a blackholed Postgres, a standby, a failover to a synchronous
//! standby. Private clusters, poolers and workers' metrics listen on 25450-25469, the TCP
//! proxies on 25480-25489; all are removed afterwards.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq::emulator::{EmulatorConfig, Faults};
use pdq::metrics::Condition;
use pdq::worker::{Api, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::app::{fast, TestApp};
use crate::clusters::{Bouncer, Cluster};
use crate::helpers::{wait_until, TestDb};

fn pdq(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("run pdq")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A CA and, signed by it, a certificate for `names` with `key`; a client certificate for
/// `client` too.
struct TestCa {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
    client_pem: String,
    client_key_pem: String,
}

fn test_ca(ca_name: &str, names: &[&str], client: &str) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut leaf = CertificateParams::new(names).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "pdq test server");
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, client);
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
        client_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A TLS-only cluster (`hostssl` lines only) whose certificate names `localhost` but not
/// 127.0.0.1; `certuser` must log in with a client certificate.
fn tls_cluster(port: u16) -> Option<(Cluster, TestCa)> {
    let ca = test_ca("pdq test Postgres CA", &["localhost"], "certuser");
    let files = |data: &Path| {
        std::fs::write(data.join("server.crt"), &ca.leaf_pem).unwrap();
        write_private(&data.join("server.key"), &ca.leaf_key_pem);
        std::fs::write(data.join("root.crt"), &ca.ca_pem).unwrap();
    };
    let cluster = Cluster::start(
        port,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'",
        "local all all trust\n\
         hostssl all certuser 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 trust\n",
        files,
    )?;
    let run = |sql: &str| {
        let status = Command::new(crate::clusters::postgres_bin().unwrap().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-qAtc", sql])
            .env("PGSSLMODE", "require")
            .status()
            .unwrap();
        assert!(status.success(), "{sql}");
    };
    run("create role certuser login superuser");
    std::fs::write(cluster.path("ca.pem"), &ca.ca_pem).unwrap();
    std::fs::write(
        cluster.path("wrong-ca.pem"),
        test_ca("another CA", &["localhost"], "x").ca_pem,
    )
    .unwrap();
    std::fs::write(cluster.path("client.crt"), &ca.client_pem).unwrap();
    write_private(&cluster.path("client.key"), &ca.client_key_pem);
    Some((cluster, ca))
}

/// Whether the session pdq opens with `url` is encrypted (pg_stat_ssl).
async fn encrypted(url: &str) -> Result<bool, String> {
    let options = pdq::db::connect_options(url).map_err(|e| e.to_string())?;
    let pool = pdq::db::connect(options, 1)
        .await
        .map_err(|e| e.to_string())?;
    let ssl: bool = sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    pool.close().await;
    Ok(ssl)
}

#[tokio::test]
async fn tls_only_postgres_works_with_every_sslmode_as_libpq_documents_it() {
    let Some((cluster, _ca)) = tls_cluster(25450) else {
        return;
    };
    let ca = cluster.path("ca.pem").display().to_string();
    let wrong = cluster.path("wrong-ca.pem").display().to_string();
    let at = |host: &str, query: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?{query}",
            cluster.port
        )
    };

    // verify-full with the right CA: migrate, then status, over TLS.
    let full = at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let migrated = pdq(&full, &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let status = pdq(&full, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert_eq!(encrypted(&full).await, Ok(true));

    // A CA that did not sign the server's certificate: refused, and said so.
    let wrong_ca = pdq(
        &at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={wrong}"),
        ),
        &["migrate"],
    );
    assert_eq!(wrong_ca.status.code(), Some(5), "{}", stderr(&wrong_ca));
    assert!(
        stderr(&wrong_ca).contains("not signed by a trusted CA"),
        "{}",
        stderr(&wrong_ca)
    );

    // verify-full checks the host name.
    let wrong_name = pdq(
        &at(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &["status"],
    );
    assert_eq!(wrong_name.status.code(), Some(5), "{}", stderr(&wrong_name));
    assert!(
        stderr(&wrong_name).contains("does not name this host"),
        "{}",
        stderr(&wrong_name)
    );
    // verify-ca checks the chain (sqlx 0.8.6 with rustls 0.23.4x checks the name too: stricter
    // than libpq, never weaker; docs/postgres.md).
    let verify_ca = at("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert_eq!(encrypted(&verify_ca).await, Ok(true));
    let verify_ca_wrong = at(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={wrong}"),
    );
    assert!(encrypted(&verify_ca_wrong).await.is_err());

    // verify-* without a root certificate is refused before connecting (as libpq does).
    let no_root = pdq(&at("localhost", "sslmode=verify-full"), &["status"]);
    assert_eq!(no_root.status.code(), Some(2), "{}", stderr(&no_root));
    assert!(
        stderr(&no_root).contains("sslrootcert"),
        "{}",
        stderr(&no_root)
    );

    // require encrypts without verifying, unless a root certificate is given: then it
    // verifies the chain (libpq), so the wrong CA is refused.
    assert_eq!(
        encrypted(&at("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    let require_wrong = at("127.0.0.1", &format!("sslmode=require&sslrootcert={wrong}"));
    let refused = encrypted(&require_wrong).await.unwrap_err();
    assert!(refused.contains("not signed by a trusted CA"), "{refused}");

    // prefer (the default) and allow both end up on TLS against a TLS-only server; disable
    // is refused by pg_hba, with the server's words.
    assert_eq!(encrypted(&at("127.0.0.1", "")).await, Ok(true));
    assert_eq!(
        encrypted(&at("127.0.0.1", "sslmode=prefer")).await,
        Ok(true)
    );
    assert_eq!(encrypted(&at("127.0.0.1", "sslmode=allow")).await, Ok(true));
    let disabled = pdq(&at("127.0.0.1", "sslmode=disable"), &["status"]);
    assert_eq!(disabled.status.code(), Some(5), "{}", stderr(&disabled));
    assert!(
        stderr(&disabled).contains("pg_hba.conf"),
        "{}",
        stderr(&disabled)
    );

    // A client certificate logs in a user that pg_hba requires one of.
    let cert = cluster.path("client.crt").display().to_string();
    let key = cluster.path("client.key").display().to_string();
    let with_cert = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}",
        cluster.port
    );
    assert_eq!(encrypted(&with_cert).await, Ok(true));
    let without_cert = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        cluster.port
    );
    assert!(encrypted(&without_cert).await.is_err());
}

#[tokio::test]
async fn stock_pgbouncer_accepts_pdq_because_no_extra_float_digits_is_sent() {
    let db = TestDb::new().await;
    let Some(bouncer) = Bouncer::start(25451, 5432, "session", "") else {
        return;
    };
    let through = bouncer.url(&db.name);
    let migrated = pdq(&through, &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}\n{}",
        stderr(&migrated),
        bouncer.log()
    );
    let status = pdq(&through, &["status", "--json"]);
    assert!(
        status.status.success(),
        "{}\n{}",
        stderr(&status),
        bouncer.log()
    );
    let enqueued = pdq(
        &through,
        &[
            "enqueue",
            "--conversation-id",
            "6f1c2d3e-0000-4000-8000-000000000001",
            "--attr",
            "tier=gold",
        ],
    );
    assert!(enqueued.status.success(), "{}", stderr(&enqueued));
    assert_eq!(db.count("pdq.jobs").await, 1);
    drop(bouncer);
    db.drop_database().await;
}

/// A child process killed when the test ends, a failed assertion included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sessions of `application_name` on `database` now.
async fn sessions(db: &TestDb, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = $1 and application_name = $2",
    )
    .bind(&db.name)
    .bind(application_name)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_worker_with_32_executors_holds_a_few_connections_and_lets_idle_ones_go() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.emulator.set_faults(Faults {
        latency_ms: 50,
        ..Faults::default()
    });
    let targets = app.customers_with_one_job(300).await;
    let worker = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args([
                "run",
                "--executors",
                "32",
                "--metrics-addr",
                "127.0.0.1:25455",
            ])
            .env("DATABASE_URL", app.db.url())
            .env("PGAPPNAME", "pdq-budget-test")
            .envs(app.emulator.client_env())
            .env("PDQ_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pdq run"),
    );
    let mut most = 0;
    let started = Instant::now();
    while app.db.count("pdq.finished_jobs").await < targets.len() as i64 {
        assert!(started.elapsed() < Duration::from_secs(60), "not drained");
        most = most.max(sessions(&app.db, "pdq-budget-test").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (cid, pid) in &targets {
        assert!(app
            .emulator
            .attributes_of(*cid, *pid)
            .unwrap()
            .contains_key("n"));
    }
    assert!(
        most <= i64::from(pdq::db::DEFAULT_WORKER_CONNECTIONS),
        "the worker held {most} connections"
    );
    assert!(most >= 2, "sampled {most}: the count works");
    // Once idle, connections close (recycled after a minute, not reopened): the pool shrinks
    // below its peak. The listener's stays, and the polls, heartbeat and maintenance keep one
    // or two more in use, how many depending on the machine's load.
    let released = wait_until(Duration::from_secs(100), || async {
        sessions(&app.db, "pdq-budget-test").await < most.min(4)
    })
    .await;
    let left = sessions(&app.db, "pdq-budget-test").await;
    drop(worker);
    assert!(released, "{left} connections still open after idling");
    app.db.drop_database().await;
}

/// A TCP proxy on loopback in front of the local Postgres that can go silent: frozen
/// connections swallow what either side sends (no reset, no close), as a dropped NAT entry.
struct SilentProxy {
    port: u16,
    /// Connections of an epoch below this are frozen.
    frozen_below: Arc<AtomicU64>,
    /// The epoch new connections get.
    epoch: Arc<AtomicU64>,
}

impl SilentProxy {
    async fn start(port: u16) -> SilentProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let epoch = Arc::new(AtomicU64::new(0));
        let (frozen, epochs) = (frozen_below.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mine = epochs.load(Ordering::SeqCst);
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pipe(client_read, server_write, mine, frozen.clone());
                    let down = pipe(server_read, client_write, mine, frozen);
                    let _ = tokio::time::timeout(Duration::from_secs(120), async {
                        tokio::join!(up, down)
                    })
                    .await;
                });
            }
        });
        SilentProxy {
            port,
            frozen_below,
            epoch,
        }
    }

    /// Every connection open now goes silent for good; `new_too`: so do the next ones, until
    /// [`SilentProxy::lift`].
    fn freeze(&self, new_too: bool) {
        let next = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let below = if new_too { u64::MAX } else { next };
        self.frozen_below.store(below, Ordering::SeqCst);
    }

    /// Connections opened from now on are forwarded (the frozen ones stay silent).
    fn lift(&self) {
        let next = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.frozen_below.store(next, Ordering::SeqCst);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

/// Copies `from` to `to` while the connection's epoch is not frozen, then reads and drops.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    epoch: u64,
    frozen_below: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A frozen connection keeps reading (no reset, the peer's sends succeed) and
        // forwards nothing; it never closes the other side either.
        if epoch < frozen_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_silent_connection_under_a_claim_neither_stops_the_claimer_nor_hides_from_healthz() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let proxy = SilentProxy::start(25452).await;
    let options = pdq::db::connect_options(&proxy.url(&app.db.name)).unwrap();
    let pool = pdq::db::connect(options, 6).await.unwrap();
    let api = Api::new(app.client("pdq-demo-secret", Duration::from_millis(500)));
    let worker = Worker::new(
        pool,
        api,
        WorkerConfig {
            claim_timeout: Duration::from_secs(1),
            ..fast()
        },
    );
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!health.is_unhealthy(), "{}", health.reason());

    // Hold the claim on the server (a lock on pdq.inflight), go silent, then let it finish:
    // its answer never comes back.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("lock table pdq.inflight in exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let waiting = wait_until(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity
             where datname = $1 and wait_event_type = 'Lock' and query like '%candidates%'",
        )
        .bind(&app.db.name)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
            > 0
    })
    .await;
    assert!(waiting, "a claim waits on the lock");
    proxy.freeze(true);
    blocker.rollback().await.unwrap();

    // While Postgres is unreachable, /healthz says so.
    let red = wait_until(Duration::from_secs(15), || async {
        health.has(Condition::Stalled)
    })
    .await;
    assert!(red, "healthz stayed green: {}", health.reason());
    assert!(
        health.reason().contains("no claim has completed"),
        "{}",
        health.reason()
    );

    // New connections work again (the old ones stay silent): jobs enqueued now apply.
    proxy.lift();
    let targets = app.customers_with_one_job(10).await;
    let applied = wait_until(Duration::from_secs(30), || async {
        targets.iter().all(|(cid, pid)| {
            app.emulator
                .attributes_of(*cid, *pid)
                .is_some_and(|attributes| attributes.contains_key("n"))
        })
    })
    .await;
    assert!(applied, "the claimer never came back: {}", health.reason());
    let green = wait_until(Duration::from_secs(10), || async {
        !health.has(Condition::Stalled)
    })
    .await;
    assert!(green, "{}", health.reason());
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(40), running).await;
    app.db.drop_database().await;
}

#[tokio::test]
async fn migrate_through_a_transaction_pooler_is_complete_and_leaves_no_lock_behind() {
    let admin = TestDb::new().await;
    let name = format!("pdq_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&admin.pool)
        .await
        .unwrap();
    let Some(bouncer) = Bouncer::start(25456, 5432, "transaction", "") else {
        return;
    };
    let through = bouncer.url(&name);
    for run in 0..2 {
        let started = Instant::now();
        let migrated = tokio::task::spawn_blocking({
            let through = through.clone();
            move || pdq(&through, &["migrate"])
        });
        let migrated = tokio::time::timeout(Duration::from_secs(60), migrated)
            .await
            .expect("pdq migrate hung")
            .unwrap();
        assert!(
            migrated.status.success(),
            "run {run}: {}\n{}",
            stderr(&migrated),
            bouncer.log()
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let direct = pdq::db::connect(admin.options.clone().database(&name), 1)
        .await
        .unwrap();
    pdq::db::check_schema(&direct).await.unwrap();
    let stray: bool =
        sqlx::query_scalar("select to_regclass('public._sqlx_migrations') is not null")
            .fetch_one(&direct)
            .await
            .unwrap();
    assert!(!stray, "migration bookkeeping landed in public");
    let locks: i64 = sqlx::query_scalar(
        "select count(*) from pg_locks l join pg_database d on d.oid = l.database
         where l.locktype = 'advisory' and d.datname = $1",
    )
    .bind(&name)
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(locks, 0, "advisory locks left behind");
    let applied: i64 =
        sqlx::query_scalar("select count(*) from pdq._sqlx_migrations where success")
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!(applied, pdq::db::MIGRATOR.iter().count() as i64);
    direct.close().await;
    drop(bouncer);
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&admin.pool)
        .await
        .unwrap();
    admin.drop_database().await;
}

#[tokio::test]
async fn a_hot_standby_is_named_by_doctor_and_run_and_async_replication_is_warned_about() {
    let Some(mut primary) = Cluster::start(
        25453,
        "wal_level = replica\nmax_wal_senders = 4",
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        |_| {},
    ) else {
        return;
    };
    let migrated = pdq(&primary.url(), &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let standby = Cluster::standby_of(&primary, 25454);

    let doctor = pdq(&standby.url(), &["doctor"]);
    assert_eq!(doctor.status.code(), Some(5), "{doctor:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        stderr(&doctor)
    );
    assert!(said.contains("read-only standby"), "{said}");

    let emulator = pdq::emulator::Emulator::start(EmulatorConfig::default())
        .await
        .unwrap();
    let run_on = |url: &str, secs: u64| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["run", "--metrics-addr", "127.0.0.1:25457"])
            .env("DATABASE_URL", url)
            .envs(emulator.client_env())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pdq run");
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    let on_standby = run_on(&standby.url(), 20);
    assert_eq!(on_standby.status.code(), Some(5), "{}", stderr(&on_standby));
    assert!(
        stderr(&on_standby).contains("read-only standby"),
        "{}",
        stderr(&on_standby)
    );

    // The primary streams to the standby asynchronously: `pdq run` warns at start.
    let on_primary = run_on(&primary.url(), 4);
    assert!(
        stderr(&on_primary).contains("replicates asynchronously"),
        "{}",
        stderr(&on_primary)
    );
    drop(standby);
    primary.stop();
}

/// `pdq run` as a child process with its log in a file, killed when dropped.
struct Running {
    child: KillOnDrop,
    log: std::path::PathBuf,
    metrics: String,
}

impl Running {
    fn spawn(app: &TestApp, url: &str, metrics_port: u16, env: &[(&str, &str)]) -> Running {
        let log = std::env::temp_dir().join(format!(
            "pdq-run-{metrics_port}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let metrics = format!("127.0.0.1:{metrics_port}");
        let child = Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["run", "--metrics-addr", &metrics])
            .env("DATABASE_URL", url)
            .envs(app.emulator.client_env())
            .env("PDQ_RATE_LIMIT", "0")
            .env("PDQ_EXECUTORS", "4")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start pdq run");
        Running {
            child: KillOnDrop(child),
            log,
            metrics,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/healthz`: status and body (0 when it does not answer within 2 s).
    async fn healthz(&self) -> (u16, String) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        match client
            .get(format!("http://{}/healthz", self.metrics))
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    async fn started(&self) -> bool {
        wait_until(Duration::from_secs(30), || async {
            self.log_text().contains("pdq worker running")
        })
        .await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Jobs `{"n": "<first+i>"}` for `n` fresh customers, enqueued directly; their targets.
async fn jobs_for_new_customers(
    app: &TestApp,
    first: usize,
    n: usize,
) -> Vec<(uuid::Uuid, uuid::Uuid, String)> {
    let mut targets = Vec::new();
    for i in first..first + n {
        let (c, pid) = app.customer_conversation();
        let value = i.to_string();
        app.enqueue(crate::app::job(
            pdq::queue::Locators::ids(c.id, pid),
            serde_json::json!({ "n": value }),
        ))
        .await;
        targets.push((c.id, pid, value));
    }
    targets
}

/// Whether the emulator's PATCH history shows every target's value applied.
fn all_applied(app: &TestApp, targets: &[(uuid::Uuid, uuid::Uuid, String)]) -> bool {
    targets
        .iter()
        .all(|(cid, pid, value)| crate::app::values_sent(app, *cid, *pid, "n").contains(value))
}

#[tokio::test]
async fn a_blackholed_postgres_turns_healthz_red_and_the_worker_recovers_every_call_after_it() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.emulator.set_faults(Faults {
        latency_ms: 50,
        ..Faults::default()
    });
    let proxy = SilentProxy::start(25480).await;
    let before = jobs_for_new_customers(&app, 0, 20).await;
    let pdq = Running::spawn(
        &app,
        &proxy.url(&app.db.name),
        25458,
        &[
            ("PDQ_CLAIM_TIMEOUT_SECS", "1"),
            ("PDQ_STATEMENT_TIMEOUT_SECS", "2"),
            ("PDQ_LEASE_SECS", "6"),
            ("GENESYS_REQUEST_TIMEOUT_MS", "1000"),
        ],
    );
    assert!(pdq.started().await, "{}", pdq.log_text());
    let drained = wait_until(Duration::from_secs(30), || async {
        all_applied(&app, &before) && app.db.count("pdq.jobs").await == 0
    })
    .await;
    assert!(drained, "{}", pdq.log_text());
    assert_eq!(pdq.healthz().await.0, 200, "{}", pdq.log_text());

    // Hold the recording of the next jobs on the server (a lock on pdq.finished_jobs), go
    // silent, then let it finish: its answer never comes back.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("lock table pdq.finished_jobs in exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let during = jobs_for_new_customers(&app, 100, 10).await;
    let waiting = wait_until(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity
             where datname = $1 and wait_event_type = 'Lock' and query like '%archived as%'",
        )
        .bind(&app.db.name)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
            > 0
    })
    .await;
    assert!(waiting, "recording waits on the lock: {}", pdq.log_text());
    proxy.freeze(true);
    blocker.rollback().await.unwrap();

    // While Postgres is silent, /healthz turns red within a bound and stays red.
    let red = wait_until(Duration::from_secs(20), || async {
        pdq.healthz().await.0 == 503
    })
    .await;
    assert!(
        red,
        "healthz stayed ok while Postgres was silent: {}",
        pdq.log_text()
    );
    for _ in 0..10 {
        let (status, body) = pdq.healthz().await;
        assert_eq!(
            status, 503,
            "healthz said ok while Postgres was silent: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // New connections work again (the old ones stay silent): every job is applied and
    // recorded, those enqueued now too, and /healthz is green again.
    proxy.lift();
    let after = jobs_for_new_customers(&app, 200, 10).await;
    let recovered = wait_until(Duration::from_secs(90), || async {
        all_applied(&app, &during)
            && all_applied(&app, &after)
            && app.db.count("pdq.jobs").await == 0
    })
    .await;
    let (status, body) = pdq.healthz().await;
    assert!(
        recovered,
        "jobs left: {}, healthz {status} {body}\n{}",
        app.db.count("pdq.jobs").await,
        pdq.log_text()
    );
    let green = wait_until(Duration::from_secs(30), || async {
        pdq.healthz().await.0 == 200
    })
    .await;
    assert!(green, "{:?}", pdq.healthz().await);
    let finished = app.db.count("pdq.finished_jobs").await;
    assert_eq!(finished, 40, "every job recorded once");
    drop(pdq);
    app.db.drop_database().await;
}

/// Enqueues one job at a time and measures how long each takes from its INSERT to the
/// emulator's PATCH; `gap` between them lets the worker find the queue empty.
async fn pickup_times(app: &TestApp, first: usize, rounds: usize, gap: Duration) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in first..first + rounds {
        let started = Instant::now();
        let target = jobs_for_new_customers(app, i, 1).await;
        let applied = wait_until(Duration::from_secs(15), || async {
            all_applied(app, &target)
        })
        .await;
        assert!(applied, "job {i} was not applied");
        times.push(started.elapsed());
        tokio::time::sleep(gap).await;
    }
    times.sort();
    times
}

#[tokio::test]
async fn through_a_transaction_pooler_the_listener_takes_its_direct_url_or_the_poll_runs_alone() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    // One server connection: sqlx names its prepared statements, which PgBouncer before 1.21
    // cannot keep across server connections (docs/postgres.md).
    let Some(bouncer) = Bouncer::start(25459, 5432, "transaction", "default_pool_size = 1") else {
        return;
    };
    let pooled = bouncer.url(&app.db.name);
    let direct = app.db.url();

    // The worker's statements go through the pooler, LISTEN goes direct: new jobs are picked
    // up by their notification, long before the (slow) poll.
    let listening = Running::spawn(
        &app,
        &pooled,
        25460,
        &[
            ("PDQ_LISTEN_URL", &direct),
            ("PDQ_POLL_INTERVAL_MS", "3000"),
            ("PDQ_DB_CONNECTIONS", "1"),
        ],
    );
    assert!(
        listening.started().await,
        "{}\n{}",
        listening.log_text(),
        bouncer.log()
    );
    let times = pickup_times(&app, 0, 6, Duration::from_millis(300)).await;
    assert!(
        times[times.len() / 2] < Duration::from_millis(800),
        "pickup waited for the poll: {times:?}\n{}",
        listening.log_text()
    );
    assert!(!listening.log_text().contains("wake-ups never arrive"));
    assert_eq!(listening.healthz().await, (200, "ok\n".to_owned()));
    drop(listening);
    // A fresh pooler: the server connection keeps the named statements of the last client.
    drop(bouncer);
    let Some(bouncer) = Bouncer::start(25463, 5432, "transaction", "default_pool_size = 1") else {
        return;
    };

    // Poll-only mode: nothing listens (a listener would hold the pool's one connection and
    // starve the claimer), the short default poll picks the jobs up.
    let polling = Running::spawn(
        &app,
        &bouncer.url(&app.db.name),
        25461,
        &[("PDQ_WAKEUP", "poll"), ("PDQ_DB_CONNECTIONS", "1")],
    );
    assert!(polling.started().await, "{}", polling.log_text());
    let times = pickup_times(&app, 100, 6, Duration::from_millis(300)).await;
    assert!(
        times[times.len() / 2] < Duration::from_millis(800),
        "{times:?}\n{}",
        polling.log_text()
    );
    drop(polling);
    drop(bouncer);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_listen_through_a_transaction_pooler_never_fires_and_the_worker_says_so_once() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let Some(bouncer) = Bouncer::start(25462, 5432, "transaction", "") else {
        return;
    };
    let through = pdq::db::connect_options(&bouncer.url(&app.db.name)).unwrap();
    let listen_pool = pdq::db::connect(through, 1).await.unwrap();
    let worker = app.worker(WorkerConfig {
        poll_interval: Duration::from_millis(300),
        ..fast()
    });
    worker.listen_through(listen_pool);
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));

    pickup_times(&app, 0, 6, Duration::from_millis(700)).await;
    let said = wait_until(Duration::from_secs(10), || async {
        health.notes().contains("wake-ups never arrive")
    })
    .await;
    assert!(
        said,
        "notes: {:?}; healthz: {}",
        health.notes(),
        health.reason()
    );
    assert!(
        health.notes().contains("--listen-url"),
        "{}",
        health.notes()
    );
    assert!(
        !health.is_unhealthy(),
        "a slow pickup is no failure: {}",
        health.reason()
    );

    // /healthz stays 200 and carries the note; `pdq status` shows it beside the worker.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = pdq::metrics::router(worker.metrics(), worker.health());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let response = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.unwrap();
    assert!(
        body.starts_with("ok\nnote: wake-ups never arrive"),
        "{body}"
    );
    let shown = wait_until(Duration::from_secs(20), || async {
        let status = pdq(&app.db.url(), &["status"]);
        String::from_utf8_lossy(&status.stdout).contains("wake-ups never arrive")
    })
    .await;
    assert!(
        shown,
        "{}",
        String::from_utf8_lossy(&pdq(&app.db.url(), &["status"]).stdout)
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(40), running).await;
    drop(bouncer);
    app.db.drop_database().await;
}

/// A TCP proxy on loopback that forwards to one backend port at a time, as a virtual IP in
/// front of a primary: [`SwitchProxy::switch`] resets every open connection and sends new
/// ones to another port.
struct SwitchProxy {
    port: u16,
    target: Arc<std::sync::atomic::AtomicU16>,
    generation: Arc<AtomicU64>,
}

impl SwitchProxy {
    async fn start(port: u16, target: u16) -> SwitchProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let to = Arc::new(std::sync::atomic::AtomicU16::new(target));
        let generation = Arc::new(AtomicU64::new(0));
        let (targets, generations) = (to.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let port = targets.load(Ordering::SeqCst);
                let generations = generations.clone();
                let mine = generations.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    let copying = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let switched = async {
                        while generations.load(Ordering::SeqCst) == mine {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copying => {}
                        _ = switched => {}
                        _ = tokio::time::sleep(Duration::from_secs(180)) => {}
                    }
                });
            }
        });
        SwitchProxy {
            port,
            target: to,
            generation,
        }
    }

    fn switch(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

#[tokio::test]
async fn after_a_failover_to_a_synchronous_standby_every_committed_job_is_applied() {
    let Some(mut primary) = Cluster::start(
        25464,
        "wal_level = replica\nmax_wal_senders = 4",
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        |_| {},
    ) else {
        return;
    };
    let migrated = pdq(&primary.url(), &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let standby = Cluster::standby_of(&primary, 25465);
    let direct = pdq::db::connect(pdq::db::connect_options(&primary.url()).unwrap(), 1)
        .await
        .unwrap();
    sqlx::query("alter system set synchronous_standby_names = '*'")
        .execute(&direct)
        .await
        .unwrap();
    sqlx::query("select pg_reload_conf()")
        .execute(&direct)
        .await
        .unwrap();
    let synchronous = wait_until(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_replication where sync_state = 'sync'",
        )
        .fetch_one(&direct)
        .await
        .unwrap()
            == 1
    })
    .await;
    assert!(synchronous, "the standby replicates synchronously");
    direct.close().await;
    let proxy = SwitchProxy::start(25482, primary.port).await;
    let app = TestApp::new(EmulatorConfig::default()).await;
    let worker = Running::spawn(
        &app,
        &proxy.url(),
        25466,
        &[
            ("PDQ_CLAIM_TIMEOUT_SECS", "1"),
            ("PDQ_STATEMENT_TIMEOUT_SECS", "2"),
            ("PDQ_LEASE_SECS", "6"),
            ("GENESYS_REQUEST_TIMEOUT_MS", "1000"),
        ],
    );
    assert!(worker.started().await, "{}", worker.log_text());

    // A producer inserts one job every 20 ms through the proxy and remembers the jobs whose
    // INSERT returned (committed, and, with synchronous replication, on the standby too).
    let producer_options = pdq::db::connect_options(&proxy.url()).unwrap();
    let producing = CancellationToken::new();
    let targets: Vec<(uuid::Uuid, uuid::Uuid)> = (0..400)
        .map(|_| app.customer_conversation())
        .map(|(c, pid)| (c.id, pid))
        .collect();
    let producer = tokio::spawn({
        let (stop, targets) = (producing.clone(), targets.clone());
        async move {
            let mut committed = Vec::new();
            let mut pool = None;
            for (i, (cid, pid)) in targets.into_iter().enumerate() {
                if stop.is_cancelled() {
                    break;
                }
                if pool.is_none() {
                    pool = pdq::db::connect(producer_options.clone(), 1).await.ok();
                }
                if let Some(db) = &pool {
                    let job = crate::app::job(
                        pdq::queue::Locators::ids(cid, pid),
                        serde_json::json!({ "n": i.to_string() }),
                    );
                    let inserted =
                        tokio::time::timeout(Duration::from_secs(2), pdq::queue::enqueue(db, &job))
                            .await;
                    match inserted {
                        Ok(Ok(_)) => committed.push((cid, pid, i.to_string())),
                        _ => pool = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            committed
        }
    });

    // Mid-stream the primary dies, the standby is promoted and the address moves to it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    primary.stop();
    standby.promote();
    proxy.switch(standby.port);
    tokio::time::sleep(Duration::from_secs(4)).await;
    producing.cancel();
    let committed = producer.await.unwrap();
    assert!(committed.len() > 100, "{} committed", committed.len());

    // Every job whose INSERT committed is applied (the emulator's PATCH history shows its
    // value), those running at the failover after their lease.
    let applied = wait_until(Duration::from_secs(60), || async {
        all_applied(&app, &committed)
    })
    .await;
    let missing: Vec<&String> = committed
        .iter()
        .filter(|(cid, pid, value)| !crate::app::values_sent(&app, *cid, *pid, "n").contains(value))
        .map(|(_, _, value)| value)
        .collect();
    assert!(
        applied,
        "{} of {} committed jobs never applied: {missing:?}\n{}",
        missing.len(),
        committed.len(),
        worker.log_text()
    );
    drop(worker);
    drop(standby);
}
