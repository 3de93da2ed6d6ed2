//! The real `pgwarden` binary as a process: started with a config file, its addresses read
//! from its log, stopped with SIGTERM or kill -9. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{within, PG_DB, PG_USER};

/// How long starting and stopping may take.
const BOUND: Duration = Duration::from_secs(60);

pub struct Process {
    child: Child,
    /// The client listener's port.
    pub port: u16,
    /// The admin API's base URL, when the config turns it on.
    pub admin: Option<String>,
}

impl Process {
    /// Runs `pgwarden serve --config config`; waits for the admin API too when `admin`.
    pub fn start(config: &Path, admin: bool) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["serve", "--config"])
            .arg(config)
            .env("PGWARDEN_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, so the process never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("pgwarden serving") {
                    if let Some(rest) = line.split("listen=").nth(1) {
                        let a = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = tx.send((true, a));
                    }
                } else if line.contains("admin API serving") {
                    if let Some(rest) = line.split("address=Some(").nth(1) {
                        let a = rest.split(')').next().unwrap_or("").to_owned();
                        let _ = tx.send((false, a));
                    }
                }
            }
        });
        let (mut port, mut url) = (None, None);
        while port.is_none() || (admin && url.is_none()) {
            let (listen, addr) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("pgwarden logs its addresses");
            if listen {
                port = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
            } else {
                url = Some(format!("http://{addr}"));
            }
        }
        Process {
            child,
            port: port.unwrap(),
            admin: url,
        }
    }

    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={PG_USER} dbname={PG_DB}",
            self.port
        )
    }

    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGKILL (kill -9), and reaps it.
    pub async fn kill9(mut self) {
        self.child.kill().unwrap();
        self.exit_code().await;
    }

    /// Waits (with a deadline) for the process to exit: its status.
    pub async fn exit_code(&mut self) -> i32 {
        within(BOUND, "pgwarden to exit", async {
            loop {
                if let Some(st) = self.child.try_wait().unwrap() {
                    return st.code().unwrap_or(-1);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
