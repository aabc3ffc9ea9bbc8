//! One conformance suite for every backend: the contract in `store/mod.rs`, exercised the same
//! way against SQLite and against the PostgreSQL server on 127.0.0.1:5432.
//!
//! PostgreSQL: `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) must
//! reach a server where a database can be created; each run gets its own database, dropped
//! afterwards. Without a server the PostgreSQL run says SKIPPED, except under CI (`CI=true`),
//! where it fails: CI must never skip it.

use super::*;

fn key(kid: &str, activates_at: i64) -> SigningKeyRow {
    SigningKeyRow {
        kid: kid.into(),
        algorithm: "RS256".into(),
        public_jwk: format!(r#"{{"kid":"{kid}"}}"#),
        private_sealed: vec![1, 2, 3, kid.len() as u8],
        created_at: 1_800_000_000,
        activates_at,
    }
}

/// The suite.
pub async fn run(store: &Store) {
    // Create, and a second create of the same kid is a conflict that changes nothing.
    store.create_signing_key(&key("b", 200)).await.unwrap();
    store.create_signing_key(&key("a", 100)).await.unwrap();
    store.create_signing_key(&key("c", 200)).await.unwrap();
    let mut dup = key("a", 999);
    dup.public_jwk = "changed".into();
    assert!(matches!(
        store.create_signing_key(&dup).await,
        Err(StoreError::Conflict)
    ));

    // Listed by activation time, then kid; whole rows come back as written.
    let listed = store.list_signing_keys().await.unwrap();
    let kids: Vec<&str> = listed.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, ["a", "b", "c"]);
    assert_eq!(listed[0], key("a", 100));

    // Replace only when the expected value is still there.
    assert!(
        store
            .replace_signing_key_seal("b", &key("b", 200).private_sealed, &[9, 9])
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_signing_key_seal("b", &key("b", 200).private_sealed, &[8, 8])
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_signing_key_seal("zz", &[9, 9], &[8])
            .await
            .unwrap()
    );
    let b = store
        .list_signing_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.kid == "b")
        .unwrap();
    assert_eq!(b.private_sealed, vec![9, 9]);

    // Delete says whether there was something to delete.
    assert!(store.delete_signing_key("a").await.unwrap());
    assert!(!store.delete_signing_key("a").await.unwrap());
    assert_eq!(store.list_signing_keys().await.unwrap().len(), 2);

    // Migrations are idempotent, and a newer schema is refused.
    migrate::run(store).await.unwrap();
    let future = migrate::latest(store) + 1;
    on_pool!(store, pool => {
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)")
            .bind(future)
            .execute(pool)
            .await
            .unwrap();
    });
    assert!(
        matches!(migrate::run(store).await, Err(StoreError::TooNew { found, .. }) if found == future)
    );
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::default_url(dir.path());
    let store = Store::open(StoreOptions {
        url: &url,
        password: None,
        max_connections: 4,
    })
    .await
    .unwrap();
    assert_eq!(store.backend(), "sqlite");
    run(&store).await;
}

#[tokio::test]
async fn postgres_conforms() {
    let Some((store, admin, name)) = postgres_database().await else {
        return;
    };
    assert_eq!(store.backend(), "postgres");
    run(&store).await;
    store.close().await;
    drop_database(&admin, &name).await;
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let Some((first, admin, name)) = postgres_database().await else {
        return;
    };
    // Four more "nodes" open the same database at once.
    let url = database_url(&name);
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            Store::open(StoreOptions {
                url: &url,
                password: None,
                max_connections: 2,
            })
            .await
        })
    });
    for handle in opens.collect::<Vec<_>>() {
        handle.await.unwrap().unwrap().close().await;
    }
    first.close().await;
    drop_database(&admin, &name).await;
}

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn database_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// A fresh database on the test server, or `None` (SKIPPED) when there is no server and this
/// is not CI.
async fn postgres_database() -> Option<(Store, sqlx::PgPool, String)> {
    let admin_url = admin_url();
    let admin = match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&admin_url)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {admin_url} is required under CI: {e}");
            }
            eprintln!("SKIPPED: PostgreSQL conformance run (no server at {admin_url}: {e})");
            return None;
        }
    };
    let mut random = [0u8; 6];
    aws_lc_rs::rand::fill(&mut random).unwrap();
    let name = format!("brandgate_test_{}", crate::hex::encode(&random));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let store = Store::open(StoreOptions {
        url: &database_url(&name),
        password: None,
        max_connections: 4,
    })
    .await
    .unwrap();
    Some((store, admin, name))
}

async fn drop_database(admin: &sqlx::PgPool, name: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .unwrap();
}
