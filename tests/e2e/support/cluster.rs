//! Private PostgreSQL clusters for tests that need their own server settings (auth methods,
//! TLS, restarts): initdb in a temp dir owned by the `postgres` user (PostgreSQL refuses to
//! run as root), a free port, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    pub port: u16,
    pub data: PathBuf,
    dir: tempfile::TempDir,
    bindir: PathBuf,
}

fn bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config is on the PATH");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn as_postgres(bindir: &Path, prog: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bindir.join(prog))
        .args(args)
        .output()
        .expect("runuser works")
}

fn chown_postgres(path: &Path) {
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chown {}", path.display());
}

impl Cluster {
    /// Starts a cluster with `hba` as its whole pg_hba.conf, `conf` appended to
    /// postgresql.conf, and `files` (name, contents) written into the data directory.
    pub fn start(hba: &str, conf: &str, files: &[(&str, &[u8])]) -> Cluster {
        let bindir = bindir();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-cluster")
            .tempdir()
            .unwrap();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let out = as_postgres(
            &bindir,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        for (name, contents) in files {
            let p = data.join(name);
            std::fs::write(&p, contents).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = super::free_port();
            let pgconf = format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 50\n{conf}\n",
                dir.path().display()
            );
            let base = std::fs::read_to_string(data.join("postgresql.conf.orig"))
                .or_else(|_| std::fs::read_to_string(data.join("postgresql.conf")))
                .unwrap();
            if !data.join("postgresql.conf.orig").exists() {
                std::fs::write(data.join("postgresql.conf.orig"), &base).unwrap();
            }
            std::fs::write(data.join("postgresql.conf"), format!("{base}{pgconf}")).unwrap();
            chown_postgres(dir.path());
            let log = dir.path().join("log");
            let out = as_postgres(
                &bindir,
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if out.status.success() {
                return Cluster {
                    port,
                    data,
                    dir,
                    bindir,
                };
            }
            last_err = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("private cluster did not start: {last_err}");
    }

    /// Runs SQL as the superuser over the cluster's Unix socket.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "psql",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
            ])
            .args(["-h", self.dir.path().to_str().unwrap()])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The directory holding the cluster's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server immediately (backends are killed, clients see the link drop).
    pub fn stop_immediate(&self) {
        let _ = as_postgres(
            &self.bindir,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Cluster {
    /// Stops the server (`-m fast`: clients are disconnected, the shutdown checkpoint runs).
    pub fn stop_fast(&self) {
        let out = as_postgres(
            &self.bindir,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn start_again(&self) {
        let log = self.dir.path().join("log");
        let out = as_postgres(
            &self.bindir,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}
