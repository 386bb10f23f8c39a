//! `store.password_file`: the PostgreSQL password comes from a file, reaches the server, and
//! is never printed. The server is [`PgAuthPeer`], which records the password it is sent and
//! refuses the login.

use std::process::{Command, Output};

use crate::support::pg_auth::PgAuthPeer;

const SECRET: &str = "s3cr3t-Pa55-from-file";

/// `firebreak audit verify` with nothing in its environment but `env`.
fn audit_verify(env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify"])
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run firebreak")
}

fn printed(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_file(dir: &tempfile::TempDir, content: &str) -> String {
    let path = dir.path().join("pg-password");
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[test]
fn password_file_is_sent_to_postgres_and_never_printed() {
    let peer = PgAuthPeer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, &format!("{SECRET}\n"));
    let url = format!(
        "postgres://firebreak@{}/firebreak?sslmode=prefer",
        peer.addr
    );
    let o = audit_verify(&[
        ("FIREBREAK_STORE__URL", &url),
        ("FIREBREAK_STORE__PASSWORD_FILE", &file),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let passwords = peer.passwords();
    assert!(!passwords.is_empty(), "the peer was never asked to log in");
    assert!(
        passwords.iter().all(|p| p == SECRET),
        "the server got {passwords:?}, not the file's password without its newline"
    );
    let out = printed(&o);
    assert!(out.contains("cannot open the store"), "{out}");
    assert!(
        out.contains("28P01") || out.contains("password authentication failed"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "the password was printed: {out}");
}

#[test]
fn url_password_is_sent_to_postgres_and_never_printed() {
    let peer = PgAuthPeer::start();
    let url = format!("postgres://firebreak:{SECRET}@{}/firebreak", peer.addr);
    let o = audit_verify(&[("FIREBREAK_STORE__URL", &url)]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let passwords = peer.passwords();
    assert!(!passwords.is_empty(), "the peer was never asked to log in");
    assert!(passwords.iter().all(|p| p == SECRET), "{passwords:?}");
    let out = printed(&o);
    assert!(out.contains("[REDACTED]"), "{out}");
    assert!(!out.contains(SECRET), "the password was printed: {out}");
}

#[test]
fn password_in_url_and_password_file_is_a_config_error() {
    let peer = PgAuthPeer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, SECRET);
    let url = format!(
        "postgres://firebreak:other-{SECRET}@{}/firebreak",
        peer.addr
    );
    let o = audit_verify(&[
        ("FIREBREAK_STORE__URL", &url),
        ("FIREBREAK_STORE__PASSWORD_FILE", &file),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let out = printed(&o);
    assert!(out.contains("store.password_file"), "{out}");
    assert!(out.contains("already holds a password"), "{out}");
    assert!(!out.contains(SECRET), "a password was printed: {out}");
    assert!(peer.passwords().is_empty(), "it connected anyway");
}

#[test]
fn password_file_with_a_sqlite_store_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, SECRET);
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let o = audit_verify(&[
        ("FIREBREAK_STORE__URL", &url),
        ("FIREBREAK_STORE__PASSWORD_FILE", &file),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let out = printed(&o);
    assert!(out.contains("not a postgres:// URL"), "{out}");
    assert!(
        !dir.path().join("ledger.db").exists(),
        "the sqlite store was opened"
    );
}

#[test]
fn missing_or_empty_password_file_is_named_and_nothing_is_sent() {
    let peer = PgAuthPeer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://firebreak@{}/firebreak", peer.addr);
    let missing = dir.path().join("no-such-password").display().to_string();
    let o = audit_verify(&[
        ("FIREBREAK_STORE__URL", &url),
        ("FIREBREAK_STORE__PASSWORD_FILE", &missing),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let out = printed(&o);
    assert!(
        out.contains(&missing) && out.contains("cannot read it"),
        "{out}"
    );

    let empty = write_file(&dir, "\n");
    let o = audit_verify(&[
        ("FIREBREAK_STORE__URL", &url),
        ("FIREBREAK_STORE__PASSWORD_FILE", &empty),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let out = printed(&o);
    assert!(out.contains(&empty) && out.contains("it is empty"), "{out}");
    assert!(
        peer.passwords().is_empty(),
        "it connected without a password"
    );
}

#[test]
fn pgpassword_from_the_environment_is_sent_and_the_password_file_wins_over_it() {
    let peer = PgAuthPeer::start();
    let url = format!("postgres://firebreak@{}/firebreak", peer.addr);
    let o = audit_verify(&[("FIREBREAK_STORE__URL", &url), ("PGPASSWORD", SECRET)]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    assert_eq!(peer.passwords().last().map(String::as_str), Some(SECRET));
    assert!(!printed(&o).contains(SECRET), "{}", printed(&o));

    let peer = PgAuthPeer::start();
    let url = format!("postgres://firebreak@{}/firebreak", peer.addr);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, &format!("file-{SECRET}\n"));
    let o = audit_verify(&[
        ("FIREBREAK_STORE__URL", &url),
        ("FIREBREAK_STORE__PASSWORD_FILE", &file),
        ("PGPASSWORD", SECRET),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let passwords = peer.passwords();
    assert!(!passwords.is_empty());
    assert!(
        passwords.iter().all(|p| *p == format!("file-{SECRET}")),
        "{passwords:?}"
    );
}
