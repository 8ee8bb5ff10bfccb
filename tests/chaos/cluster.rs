//! A private Postgres cluster for the crash scenario: its own data directory and port, never
//! the machine's shared server. Started as the `postgres` user when running as root (initdb
//! refuses root), stopped and removed when dropped.

use std::path::PathBuf;
use std::process::Command;

/// A throwaway cluster.
pub struct PrivateCluster {
    dir: PathBuf,
    bindir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateCluster {
    /// initdb + start on a port of the chaos suite's range (25440–25449); `None` when the
    /// server binaries are not installed.
    #[allow(dead_code)]
    pub fn start() -> Option<PrivateCluster> {
        PrivateCluster::start_in(25_440)
    }

    /// initdb + start on a port of the ten from `first` (each suite has its own range, so
    /// clusters of suites running side by side never collide).
    pub fn start_in(first: u16) -> Option<PrivateCluster> {
        let bindir = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bindir = PathBuf::from(String::from_utf8(bindir.stdout).ok()?.trim());
        let port = first + (std::process::id() % 10) as u16;
        let dir =
            std::env::temp_dir().join(format!("pdq-chaos-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).ok()?;
        let cluster = PrivateCluster { dir, bindir, port };
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .ok()?;
        }
        let data = cluster.dir.join("data");
        let initdb = cluster.run(
            "initdb",
            &["-D", data.to_str()?, "--auth=trust", "-U", "postgres", "-N"],
        );
        initdb.then_some(())?;
        cluster.pg_ctl("start", "fast").then_some(cluster)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: no checkpoint, every backend killed, as
    /// in a power cut) and starts it again, which runs crash recovery from the WAL.
    pub fn crash_and_recover(&self) -> bool {
        self.pg_ctl("stop", "immediate") && self.pg_ctl("start", "fast")
    }

    fn pg_ctl(&self, action: &str, mode: &str) -> bool {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-m",
                mode,
                "-w",
                action,
            ],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> bool {
        let binary = self.bindir.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        command
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.pg_ctl("stop", "immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
