//! PostgreSQL for tests, real and isolated: [`TestDb`] is a database of its own for one
//! test on the machine's server (created with a unique name, dropped with its connections
//! when the guard drops, also on panic), and [`PgServer`] is a private server in a
//! temporary directory that a test may stop and restart without disturbing any other test.
//!
//! Both go through one gate, [`postgres_or_skip`]: without PostgreSQL a test says SKIPPED
//! loudly and returns, and with `CLAUDEMESH_REQUIRE_POSTGRES=1` (set by `.ci/run`) the skip
//! is a failure. A harness whose setup fails must fail the test, so this crate panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server;

pub use server::PgServer;

/// Run `f` on a thread of its own and wait for it. The synchronous `postgres` client runs
/// a runtime of its own, which cannot start on a thread inside a tokio runtime (an async
/// test), so everything here that connects goes through this; so must a caller's own use
/// of [`TestDb::client`] from async code.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// Whether a skip must fail the test (`CLAUDEMESH_REQUIRE_POSTGRES=1`).
pub fn required() -> bool {
    std::env::var("CLAUDEMESH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Skip `test` (say so on stderr), or fail it when PostgreSQL is required.
pub fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: PostgreSQL is required (CLAUDEMESH_REQUIRE_POSTGRES=1) but {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// The address of the machine's PostgreSQL (`CLAUDEMESH_TEST_POSTGRES`, default
/// 127.0.0.1:5432) if it answers; otherwise [`skip`].
pub fn postgres_or_skip(test: &str) -> Option<String> {
    let addr =
        std::env::var("CLAUDEMESH_TEST_POSTGRES").unwrap_or_else(|_| "127.0.0.1:5432".into());
    let reachable = addr.parse().ok().is_some_and(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
    });
    if reachable {
        return Some(addr);
    }
    skip(test, &format!("no PostgreSQL answers at {addr}"));
    None
}

/// A name no other test run uses: only digits, lowercase letters and '_', so it is safe
/// to splice into DDL, which cannot take a bound parameter for a database name.
fn unique_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{prefix}_{}_{n}_{random:016x}", std::process::id())
}

/// A database of its own for one test, created on the server's `postgres` database and
/// dropped (connections and all) when this guard drops.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    /// A fresh database on the machine's server, or `None` after [`skip`].
    pub fn create(test: &str) -> Option<Self> {
        let addr = postgres_or_skip(test)?;
        Some(Self::create_on(&addr))
    }

    /// A fresh database on the server at `addr` (`host:port`, user `postgres`, trust).
    pub fn create_on(addr: &str) -> Self {
        let name = unique_name("cm_test");
        let admin_url = format!("postgres://postgres@{addr}/postgres");
        off_runtime(|| {
            let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
        });
        let url = format!("postgres://postgres@{addr}/{name}");
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// The database's URL (no password: the test servers trust local connections).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to the database (from async code, inside [`off_runtime`]).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    /// Close every other connection to this database (what a server restart does to
    /// them); returns how many were closed.
    pub fn terminate_connections(&self) -> u64 {
        off_runtime(|| {
            let mut admin = postgres::Client::connect(&self.admin_url, postgres::NoTls).unwrap();
            admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&self.name],
                )
                .unwrap()
                .len() as u64
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let dropped = off_runtime(|| {
            postgres::Client::connect(&self.admin_url, postgres::NoTls).and_then(|mut c| {
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
            })
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
