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
