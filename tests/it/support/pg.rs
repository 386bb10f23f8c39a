//! PostgreSQL for tests: the real server on 127.0.0.1:5432 (trust auth, user `postgres`, see
//! TEST-PEERS.md). Each test gets a database of its own, so tests run in parallel; it is
//! dropped (best effort) when the handle is.

/// The server's maintenance database, where test databases are created and dropped.
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh, empty database; dropped with its handle.
#[derive(Debug)]
pub struct TestDb {
    /// `postgres://postgres@127.0.0.1:5432/<name>`.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates `fb_<random>`.
    pub async fn create() -> TestDb {
        use sqlx::Connection;
        let name = format!("fb_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut conn = sqlx::PgConnection::connect(ADMIN_URL)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (see TEST-PEERS.md)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        TestDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, and synchronous (no runtime in Drop): psql ends the store's connections.
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a tempdir, a free port, trust auth), so a
/// test may stop and start it without disturbing the shared server. It runs as the `postgres`
/// OS user (PostgreSQL refuses root) and is stopped and removed with its handle, even when the
/// test panics.
#[derive(Debug)]
pub struct PrivateCluster {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`, the maintenance database.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// The directory holding `initdb` and `pg_ctl`, or `None` when PostgreSQL is not installed.
    fn bin_dir() -> Option<std::path::PathBuf> {
        let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .collect();
        // The newest version when several are installed.
        dirs.sort();
        dirs.pop()
    }

    /// Runs `program` from the cluster's bin directory as the `postgres` user; panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("runuser");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    /// A fresh cluster, started; `None` (after saying why) when no `initdb` is installed.
    pub fn start() -> Option<PrivateCluster> {
        use std::os::unix::fs::PermissionsExt;
        let Some(bin) = Self::bin_dir() else {
            eprintln!("skipped: no /usr/lib/postgresql/*/bin/initdb on this machine");
            return None;
        };
        // Under /tmp with mode 0755 and owned by postgres, so the server can reach its files.
        let dir = tempfile::Builder::new()
            .prefix("fb-pg-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let owned = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(owned.success(), "chown the cluster directory to postgres");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cluster = PrivateCluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            data: dir.path().join("data"),
            dir,
        };
        let data = cluster.data.display().to_string();
        cluster.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        cluster.start_again();
        Some(cluster)
    }

    /// Starts the (stopped) cluster and returns once it accepts connections.
    pub fn start_again(&self) {
        let data = self.data.display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let options = format!(
            "-c fsync=off -c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        );
    }

    /// Stops the server the harsh way (`-m immediate`: from the database's view, a crash; it
    /// recovers from its WAL on the next start).
    pub fn stop_immediate(&self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// What the server logged so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Best effort: a stopped cluster makes pg_ctl fail, which is fine. The tempdir goes next.
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
