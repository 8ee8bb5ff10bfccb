//! Private Postgres clusters and PgBouncers on the ports 25450-25469, for the tests of the
//! setups users run (TLS-only servers, poolers, standbys); each is stopped and its directory
//! removed when the value is dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding Debian's Postgres binaries (the newest version), if any.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

/// `pgbouncer`, if installed.
pub fn pgbouncer_bin() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A command run as `postgres` when this process is root (Postgres refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    match is_root() {
        true => {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        }
        false => Command::new(program),
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Gives a directory tree to `postgres` (when root), so the server can read it.
fn hand_over(dir: &Path) {
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(dir);
                c
            },
            "chown",
        );
    }
}

/// A fresh directory for one cluster or pooler, empty.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// A private Postgres cluster on 127.0.0.1.
pub struct Cluster {
    /// Its port.
    pub port: u16,
    /// Its directory (the data directory is `data` inside).
    pub dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

impl Cluster {
    /// Initialises a cluster on `port` (trust auth for `postgres`), with `conf` appended to
    /// postgresql.conf and `hba` as pg_hba.conf; `files` writes extra files (certificates)
    /// into the data directory before the start. `None` (after saying why) when Postgres's
    /// binaries are not installed.
    pub fn start(port: u16, conf: &str, hba: &str, files: impl FnOnce(&Path)) -> Option<Cluster> {
        let Some(bin) = postgres_bin() else {
            println!("SKIPPED: initdb is not installed (no /usr/lib/postgresql/*/bin)");
            return None;
        };
        let dir = fresh_dir(&format!("pg{port}"));
        let data = dir.join("data");
        hand_over(&dir);
        let mut initdb = as_postgres(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        Cluster::configure(&dir, port, conf, hba, files);
        let mut cluster = Cluster {
            port,
            dir,
            bin,
            running: false,
        };
        cluster.start_again();
        Some(cluster)
    }

    fn configure(dir: &Path, port: u16, conf: &str, hba: &str, files: impl FnOnce(&Path)) {
        let data = dir.join("data");
        let mut settings = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        settings.push_str(&format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nshared_buffers = 16MB\nmax_connections = 40\n{conf}\n",
            dir.display()
        ));
        std::fs::write(data.join("postgresql.conf"), settings).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        files(&data);
        hand_over(dir);
    }

    /// A standby of `primary` on `port`, made by `pg_basebackup -R` (streaming, hot standby;
    /// a fast checkpoint: a spread one takes minutes after a `CREATE DATABASE`).
    pub fn standby_of(primary: &Cluster, port: u16) -> Cluster {
        let dir = fresh_dir(&format!("pg{port}"));
        hand_over(&dir);
        let mut backup = as_postgres(&primary.bin.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .args(["-p", &primary.port.to_string()]);
        run(backup, "pg_basebackup");
        let data = dir.join("data");
        let mut settings = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        settings.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.display()
        ));
        std::fs::write(data.join("postgresql.conf"), settings).unwrap();
        hand_over(&dir);
        let mut standby = Cluster {
            port,
            dir,
            bin: primary.bin.clone(),
            running: false,
        };
        standby.start_again();
        standby
    }

    /// Starts the cluster (again), waiting until it accepts connections.
    pub fn start_again(&mut self) {
        let mut start = as_postgres(&self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null());
        let status = start.status().expect("pg_ctl start");
        if !status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            panic!("the cluster on {} did not start:\n{log}", self.port);
        }
        self.running = true;
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting until it is done).
    pub fn promote(&self) {
        let mut promote = as_postgres(&self.bin.join("pg_ctl"));
        promote
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "promote"])
            .stdout(Stdio::null());
        run(promote, "pg_ctl promote");
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A file in the cluster's directory (outside the data directory).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Stops the cluster now (fast shutdown).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let mut stop = as_postgres(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        self.running = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PgBouncer in the foreground, a child of the test, killed when dropped.
pub struct Bouncer {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Bouncer {
    /// PgBouncer on `port` in `pool_mode` (session, transaction) in front of the server at
    /// 127.0.0.1:`server_port`, trust auth; `None` (after saying why) when it is not
    /// installed.
    pub fn start(port: u16, server_port: u16, pool_mode: &str, extra: &str) -> Option<Bouncer> {
        let Some(bin) = pgbouncer_bin() else {
            println!("SKIPPED: pgbouncer is not installed (apt-get install pgbouncer)");
            return None;
        };
        let dir = fresh_dir(&format!("pgbouncer{port}"));
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={server_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n\
             max_client_conn = 200\ndefault_pool_size = 20\nlogfile = {log}\n\
             pidfile = {pid}\nadmin_users = postgres\n{extra}\n",
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        hand_over(&dir);
        let mut command = Command::new(&bin);
        if is_root() {
            // PgBouncer refuses to run as root; it drops to postgres itself.
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer");
        let bouncer = Bouncer { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(bouncer)
    }

    /// The URL of `database` through the pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
