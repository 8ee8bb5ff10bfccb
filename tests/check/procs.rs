//! `pdq run` children: started against the test database and the emulator, signalled by pid,
//! always reaped. Their logs go to files that are kept only when a run failed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdq::emulator::EmulatorHandle;

/// The lease the workers take (`pdq run` allows no shorter one).
pub const LEASE_SECS: u64 = 5;
/// The workers' request timeout: under half the lease, as `pdq run` requires.
pub const REQUEST_TIMEOUT_MS: u64 = 500;
/// The shared request budget (requests a minute for all workers), so an operator pause applies.
pub const RATE_LIMIT: u32 = 6_000;

/// What a worker logs once it runs.
const READY_LINE: &str = "pdq worker running";

/// One `pdq run` process.
pub struct Worker {
    child: Child,
    log: PathBuf,
    /// SIGSTOPped and not yet continued.
    pub stopped: bool,
}

impl Worker {
    /// Starts a worker on `database_url` against `emulator`.
    pub fn spawn(database_url: &str, emulator: &EmulatorHandle, tag: &str) -> Worker {
        let dir = std::env::temp_dir().join("pdq-check-logs");
        std::fs::create_dir_all(&dir).expect("log directory");
        let log = dir.join(format!("{tag}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["run", "--executors", "4", "--claim-batch", "16"])
            .args(["--rate-limit", &RATE_LIMIT.to_string()])
            .args(["--lease-secs", &LEASE_SECS.to_string()])
            .args(["--shutdown-grace-secs", "2"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url)
            .envs(emulator.client_env())
            .env("GENESYS_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
            .env(
                "RUST_LOG",
                std::env::var("PDQ_CHECK_WORKER_LOG")
                    .unwrap_or_else(|_| "warn,pdq::commands::run=info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("the pdq binary");
        Worker {
            child,
            log,
            stopped: false,
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `timeout`) until it logs that it runs; false if it did not.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(READY_LINE) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Sends `signal` (`-KILL`, `-STOP`, …) to it.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// True once it has exited (reaped).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.exited() {
            return;
        }
        self.signal("-CONT");
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM; reaps it within `grace`, else kills it. True when it exited by itself.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        if self.stopped {
            self.signal("-CONT");
            self.stopped = false;
        }
        self.signal("-TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        false
    }

    /// Keeps the log file (for a failed run); returns its path.
    pub fn keep_log(&self) -> PathBuf {
        self.log.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
        if !std::thread::panicking() && std::env::var_os("PDQ_CHECK_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
