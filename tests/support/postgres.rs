//! A fresh PostgreSQL database for one test, on the server at 127.0.0.1:5432 (or
//! `TEST_POSTGRES_URL`). Without a server the test fails, unless skipping was asked for by
//! name (`BRANDGATE_TEST_SKIP_POSTGRES=1`): no spelling of `CI` (or its absence) skips it.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

pub struct Database {
    pub url: String,
    name: String,
    admin: sqlx::PgPool,
}

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The one way to skip the PostgreSQL tests: this variable set to `1`.
pub const SKIP: &str = "BRANDGATE_TEST_SKIP_POSTGRES";

impl Database {
    /// The `[store]` line that points a daemon at this database.
    pub fn store_line(&self) -> String {
        format!("url = \"{}\"", self.url)
    }

    pub async fn create() -> Option<Database> {
        let admin_url = admin_url();
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&admin_url)
            .await
        {
            Ok(pool) => pool,
            // Skipping is asked for by name, never assumed: a run that cannot reach
            // PostgreSQL fails, whatever CI variable it has (or not).
            Err(e) => {
                if std::env::var(SKIP).as_deref() != Ok("1") {
                    panic!(
                        "PostgreSQL at {admin_url} is needed ({e}); start it, or set {SKIP}=1 to skip these tests"
                    );
                }
                eprintln!("SKIPPED ({SKIP}=1): needs PostgreSQL at {admin_url} ({e})");
                return None;
            }
        };
        let mut random = [0u8; 6];
        aws_lc_rs::rand::fill(&mut random).unwrap();
        let name = format!("brandgate_it_{}", brandgate::hex::encode(&random));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b)
            .to_string();
        Some(Database {
            url: format!("{base}/{name}"),
            name,
            admin,
        })
    }

    /// The database's name (as `pg_stat_activity.datname` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to the server's maintenance database, as a superuser: for what a test
    /// does to the server itself (ending backends, refusing connections).
    pub fn admin(&self) -> &sqlx::PgPool {
        &self.admin
    }

    pub async fn drop(self) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await;
    }
}
