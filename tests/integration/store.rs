//! The store's conformance suite: the contract written in `src/store/mod.rs`, exercised the same
//! way against SQLite and against the PostgreSQL server on 127.0.0.1:5432 (a database of its
//! own per run; under CI it must not be skipped, see `support::postgres`).

use brandgate::clock::UnixMillis;
use brandgate::ids::{AgentId, ConversationId};
use brandgate::store::agents::{AgentAuditRow, AgentRow, AgentSessionRow, FailedLogin};
use brandgate::store::devices::PushRegistration;
use brandgate::store::relay::{Appended, ConversationRow, NewEvent};
use brandgate::store::{SigningKeyRow, Store, StoreError, StoreOptions, migrate};

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

async fn open(url: &str) -> Store {
    Store::open(StoreOptions {
        url,
        password: None,
        max_connections: 4,
    })
    .await
    .unwrap()
}

/// The suite.
async fn conforms(store: &Store) {
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
    let original = key("b", 200).private_sealed;
    assert!(
        store
            .replace_signing_key_seal("b", &original, &[9, 9])
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_signing_key_seal("b", &original, &[8, 8])
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

    grants_conform(store).await;
    relay_conforms(store).await;
    crate::store_outbox::conforms(store).await;
    crate::store_outbox::presence_conforms(store).await;
    crate::store_outbox::push_claims_conform(store).await;
    agents_conform(store).await;

    // Migrations are idempotent, and a database from a newer brandgate is refused.
    migrate::run(store).await.unwrap();
    let future = migrate::latest(store) + 1;
    let insert = "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)";
    match store {
        Store::Sqlite(pool, _) => sqlx::query(insert)
            .bind(future)
            .execute(pool)
            .await
            .map(|_| ()),
        Store::Postgres(pool) => sqlx::query(insert)
            .bind(future)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .unwrap();
    assert!(
        matches!(migrate::run(store).await, Err(StoreError::TooNew { found, .. }) if found == future)
    );
}

fn agent(id: &str, username: &str) -> AgentRow {
    AgentRow {
        id: id.into(),
        account: "acme".into(),
        username: username.into(),
        password_sealed: vec![7, 7, id.len() as u8],
        disabled: false,
        failed_logins: 0,
        locked_until: None,
        created_at: UnixMillis(1_000),
        last_login_at: None,
        sso_subject: None,
    }
}

fn session(hash: u8, agent_id: &str, expires_at: i64) -> AgentSessionRow {
    let expires_at = UnixMillis(expires_at);
    AgentSessionRow {
        token_hash: vec![hash; 32],
        agent_id: agent_id.into(),
        csrf_hash: vec![hash ^ 0xff; 32],
        created_at: UnixMillis(1_000),
        expires_at,
    }
}

/// Agents: unique usernames per account, lock-out counting, sessions that do not outlive a
/// disable or a password reset, one winner per refresh, the audit.
async fn agents_conform(store: &Store) {
    store.create_agent(&agent("a1", "bob")).await.unwrap();
    store.create_agent(&agent("a2", "ann")).await.unwrap();
    // The same username in the same account is a conflict; in another account it is not.
    let mut dup = agent("a3", "ann");
    dup.password_sealed = vec![0];
    assert!(matches!(
        store.create_agent(&dup).await,
        Err(StoreError::Conflict)
    ));
    dup.account = "other".into();
    store.create_agent(&dup).await.unwrap();
    let listed = store.list_agents("acme").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|a| a.username.as_str()).collect();
    assert_eq!(names, ["ann", "bob"]);
    assert_eq!(listed[0], agent("a2", "ann"));
    assert_eq!(store.get_agent("acme", "zed").await.unwrap(), None);

    // An identity at the provider links one agent of an account, once, never replaced.
    let (a1, a2) = (AgentId::new("a1"), AgentId::new("a2"));
    assert!(
        store
            .link_agent_sso_subject(&a1, "https://idp s1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .link_agent_sso_subject(&a1, "https://idp s9")
            .await
            .unwrap()
    );
    assert!(matches!(
        store.link_agent_sso_subject(&a2, "https://idp s1").await,
        Err(StoreError::Conflict)
    ));
    let linked = store
        .get_agent_by_sso_subject("acme", "https://idp s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (linked.id, linked.sso_subject.as_deref()),
        (a1, Some("https://idp s1"))
    );
    assert_eq!(
        store
            .get_agent_by_sso_subject("other", "https://idp s1")
            .await
            .unwrap(),
        None
    );
    // The same identity may link an agent of another account.
    assert!(
        store
            .link_agent_sso_subject(&AgentId::new("a3"), "https://idp s1")
            .await
            .unwrap()
    );

    // Failures count up to the limit, which locks; a locked agent counts nothing more.
    let a1 = AgentId::new("a1");
    let fail = |now: i64| store.record_failed_login(&a1, UnixMillis(now), 3, UnixMillis(now + 100));
    assert_eq!(
        fail(2_000).await.unwrap(),
        Some(FailedLogin {
            failed_logins: 1,
            locked_until: None
        })
    );
    fail(2_001).await.unwrap();
    assert_eq!(
        fail(2_002).await.unwrap(),
        Some(FailedLogin {
            failed_logins: 3,
            locked_until: Some(UnixMillis(2_102))
        })
    );
    assert_eq!(fail(2_050).await.unwrap(), None);
    // No login while locked.
    assert!(
        !store
            .begin_agent_session(&session(1, "a1", 9_000), UnixMillis(2_101))
            .await
            .unwrap()
    );
    // Once the lock ran out the count restarts.
    assert_eq!(
        fail(2_102).await.unwrap(),
        Some(FailedLogin {
            failed_logins: 1,
            locked_until: None
        })
    );
    assert_eq!(
        store
            .record_failed_login(&"nobody".into(), UnixMillis(2_000), 3, UnixMillis(2_100))
            .await
            .unwrap(),
        None
    );

    // A login clears the count and stores the session; it is found while live.
    assert!(
        store
            .begin_agent_session(&session(1, "a1", 9_000), UnixMillis(3_000))
            .await
            .unwrap()
    );
    let bob = store.get_agent("acme", "bob").await.unwrap().unwrap();
    assert_eq!((bob.failed_logins, bob.locked_until), (0, None));
    assert_eq!(bob.last_login_at, Some(UnixMillis(3_000)));
    let live = store
        .get_live_agent_session(&[1; 32], UnixMillis(8_999))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            live.agent_id.as_str(),
            live.username.as_str(),
            live.account.as_str()
        ),
        ("a1", "bob", "acme")
    );
    assert_eq!(live.csrf_hash, vec![0xfe; 32]);
    assert_eq!(live.expires_at, UnixMillis(9_000));
    assert_eq!(
        store
            .get_live_agent_session(&[1; 32], UnixMillis(9_000))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        store
            .begin_agent_session(&session(1, "a1", 9_000), UnixMillis(3_000))
            .await,
        Err(StoreError::Conflict)
    ));

    // A refresh extends a live session: a new CSRF digest and end; an ended one stays ended.
    assert!(
        store
            .extend_agent_session(&[1; 32], &[7; 32], UnixMillis(9_500), UnixMillis(4_000))
            .await
            .unwrap()
    );
    let extended = store
        .get_live_agent_session(&[1; 32], UnixMillis(9_200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (extended.csrf_hash, extended.expires_at),
        (vec![7; 32], UnixMillis(9_500))
    );
    assert!(
        !store
            .extend_agent_session(&[1; 32], &[8; 32], UnixMillis(9_900), UnixMillis(9_500))
            .await
            .unwrap()
    );
    assert!(
        !store
            .extend_agent_session(&[9; 32], &[8; 32], UnixMillis(9_900), UnixMillis(4_000))
            .await
            .unwrap()
    );

    // Disabling ends every session and refuses new ones; enabling does not bring them back.
    assert!(
        store
            .begin_agent_session(&session(5, "a1", 9_000), UnixMillis(4_000))
            .await
            .unwrap()
    );
    assert!(store.set_agent_disabled(&"a1".into(), true).await.unwrap());
    assert_eq!(store.count_agent_sessions(&"a1".into()).await.unwrap(), 0);
    assert!(
        !store
            .begin_agent_session(&session(6, "a1", 9_000), UnixMillis(4_000))
            .await
            .unwrap()
    );
    assert!(store.set_agent_disabled(&"a1".into(), false).await.unwrap());
    assert!(
        !store
            .set_agent_disabled(&"nobody".into(), true)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_live_agent_session(&[5; 32], UnixMillis(4_000))
            .await
            .unwrap(),
        None
    );

    // A password reset replaces the seal, lifts a lock and ends every session.
    assert!(
        store
            .begin_agent_session(&session(7, "a2", 9_000), UnixMillis(4_000))
            .await
            .unwrap()
    );
    for now in 4_001..4_004 {
        store
            .record_failed_login(&"a2".into(), UnixMillis(now), 3, UnixMillis(now + 10_000))
            .await
            .unwrap();
    }
    assert!(
        store
            .replace_agent_password(&"a2".into(), &[42])
            .await
            .unwrap()
    );
    let ann = store.get_agent("acme", "ann").await.unwrap().unwrap();
    assert_eq!(ann.password_sealed, vec![42]);
    assert_eq!((ann.failed_logins, ann.locked_until), (0, None));
    assert_eq!(store.count_agent_sessions(&"a2".into()).await.unwrap(), 0);
    assert!(
        !store
            .replace_agent_password(&"nobody".into(), &[1])
            .await
            .unwrap()
    );

    // Logout, and the sweep of expired sessions.
    assert!(
        store
            .begin_agent_session(&session(8, "a2", 5_000), UnixMillis(4_500))
            .await
            .unwrap()
    );
    assert!(
        store
            .begin_agent_session(&session(9, "a2", 6_000), UnixMillis(4_500))
            .await
            .unwrap()
    );
    assert!(store.delete_agent_session(&[9; 32]).await.unwrap());
    assert!(!store.delete_agent_session(&[9; 32]).await.unwrap());
    assert_eq!(
        store
            .delete_expired_agent_sessions(UnixMillis(5_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.count_agent_sessions(&"a2".into()).await.unwrap(), 0);

    // The audit, newest first, per account.
    for (at, outcome) in [(10, "wrong_password"), (20, "success"), (20, "locked")] {
        store
            .create_agent_audit(&AgentAuditRow {
                at: UnixMillis(at),
                account: "acme".into(),
                username: "ann".into(),
                agent_id: Some("a2".into()),
                outcome: outcome.into(),
                source: Some("192.0.2.1".into()),
                via: None,
            })
            .await
            .unwrap();
    }
    store
        .create_agent_audit(&AgentAuditRow {
            at: UnixMillis(30),
            account: "acme".into(),
            username: "ghost".into(),
            agent_id: None,
            outcome: "unknown_username".into(),
            source: None,
            via: Some("oidc https://login.brand.example".into()),
        })
        .await
        .unwrap();
    let audit = store.list_agent_audit("acme", 3).await.unwrap();
    let outcomes: Vec<&str> = audit.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["unknown_username", "locked", "success"]);
    assert_eq!(audit[0].agent_id, None);
    assert_eq!(
        audit[0].via.as_deref(),
        Some("oidc https://login.brand.example")
    );
    assert_eq!(audit[1].via, None);
    assert!(
        store
            .list_agent_audit("other", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Pending grants: single use, expiry, conflicts, and one winner among concurrent takers.
async fn grants_conform(store: &Store) {
    store
        .create_pending_grant("code:1", &[1, 2], 1_000)
        .await
        .unwrap();
    assert!(matches!(
        store.create_pending_grant("code:1", &[3], 2_000).await,
        Err(StoreError::Conflict)
    ));
    // Expired (at or before now): gone, and nothing is returned.
    assert_eq!(
        store.take_pending_grant("code:1", 1_000).await.unwrap(),
        None
    );
    assert_eq!(
        store.take_pending_grant("code:1", 0).await.unwrap(),
        None,
        "deleted when taken"
    );

    store
        .create_pending_grant("code:2", &[7], 1_000)
        .await
        .unwrap();
    assert_eq!(
        store.take_pending_grant("code:2", 999).await.unwrap(),
        Some(vec![7])
    );
    assert_eq!(store.take_pending_grant("code:2", 999).await.unwrap(), None);

    // Ten takers at once: exactly one gets it.
    store
        .create_pending_grant("code:3", &[5], 1_000)
        .await
        .unwrap();
    let takers: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_pending_grant("code:3", 1).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        won += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(won, 1);

    store
        .create_pending_grant("login:a", &[1], 100)
        .await
        .unwrap();
    store
        .create_pending_grant("login:b", &[1], 200)
        .await
        .unwrap();
    store
        .create_pending_grant("login:c", &[1], 300)
        .await
        .unwrap();
    assert_eq!(store.delete_expired_pending_grants(200).await.unwrap(), 2);
    assert_eq!(
        store.take_pending_grant("login:c", 0).await.unwrap(),
        Some(vec![1])
    );
}

fn conversation(id: &str, consumer: &str) -> ConversationRow {
    ConversationRow {
        id: id.into(),
        account: "acct".into(),
        consumer_id: consumer.into(),
        open: true,
        agent_id: None,
        skill: None,
        created_at: UnixMillis(1_000),
        closed_at: None,
        last_seq: -1,
    }
}

fn new_event<'a>(
    conv: &'a ConversationId,
    event_id: &'a str,
    client: Option<&'a str>,
) -> NewEvent<'a> {
    NewEvent {
        conversation_id: conv,
        event_id,
        originator_id: "consumer-1",
        originator_role: "CONSUMER",
        client_event_id: client,
        holder: None,
        sealed: b"sealed",
        created_at: UnixMillis(2_000),
        outbox: &[],
        notice: None,
    }
}

/// Conversations and events: one open conversation per consumer, gapless sequences under
/// concurrency, idempotent re-sends, no events in closed conversations.
async fn relay_conforms(store: &Store) {
    store
        .create_conversation(&conversation("c1", "u1"), &[])
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_conversation(&conversation("c2", "u1"), &[])
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store
            .get_open_conversation("acct", &"u1".into())
            .await
            .unwrap(),
        Some(conversation("c1", "u1"))
    );
    assert_eq!(
        store
            .get_open_conversation("other", &"u1".into())
            .await
            .unwrap(),
        None
    );

    // Twenty writers at once: sequences 0..20, each once.
    let ids: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    let writers: Vec<_> = ids
        .iter()
        .map(|id| {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move {
                store
                    .append_event(&new_event(&"c1".into(), &id, None))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for w in writers {
        let appended = w.await.unwrap();
        assert!(appended.created);
        seqs.push(appended.seq);
    }
    seqs.sort();
    assert_eq!(seqs, (0..20).collect::<Vec<i64>>());

    // A re-send with the same client event id gets its first sequence back, stores nothing.
    let first = store
        .append_event(&new_event(&"c1".into(), "x1", Some("client-7")))
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            seq: 20,
            created: true,
            earlier: None,
        }
    );
    let again = store
        .append_event(&new_event(&"c1".into(), "x2", Some("client-7")))
        .await
        .unwrap();
    // ...with the first event's id and sealed body, to compare with.
    assert_eq!(
        again,
        Appended {
            seq: 20,
            created: false,
            earlier: Some(("x1".into(), b"sealed".to_vec())),
        }
    );
    let next = store
        .append_event(&new_event(&"c1".into(), "x3", None))
        .await
        .unwrap();
    assert_eq!(next.seq, 21, "the re-send used no sequence");

    // Listed in order from a sequence, as written.
    let listed = store.list_events(&"c1".into(), 19, 100).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [19, 20, 21]
    );
    assert_eq!(listed[1].client_event_id.as_deref(), Some("client-7"));
    assert_eq!(listed[1].event_id, "x1");
    assert_eq!(listed[1].sealed, b"sealed");
    assert_eq!(
        store.list_events(&"c1".into(), 0, 5).await.unwrap().len(),
        5
    );

    // Closing: once; no events after; then the consumer may open a new one.
    assert!(
        store
            .close_conversation(&"c1".into(), UnixMillis(3_000), &[])
            .await
            .unwrap()
    );
    assert!(
        !store
            .close_conversation(&"c1".into(), UnixMillis(3_001), &[])
            .await
            .unwrap()
    );
    assert!(matches!(
        store
            .append_event(&new_event(&"c1".into(), "late", None))
            .await,
        Err(StoreError::NotFound)
    ));
    // A re-send of an event stored before the close still gets its sequence.
    assert_eq!(
        store
            .append_event(&new_event(&"c1".into(), "x4", Some("client-7")))
            .await
            .unwrap(),
        Appended {
            seq: 20,
            created: false,
            earlier: Some(("x1".into(), b"sealed".to_vec())),
        }
    );
    let closed = store.get_conversation(&"c1".into()).await.unwrap().unwrap();
    assert!(!closed.open);
    assert_eq!(closed.closed_at, Some(UnixMillis(3_000)));
    assert_eq!(closed.last_seq, 21);
    let mut later = conversation("c3", "u1");
    later.created_at = UnixMillis(5_000);
    store.create_conversation(&later, &[]).await.unwrap();
    let list = store
        .list_consumer_conversations("acct", &"u1".into(), 10)
        .await
        .unwrap();
    assert_eq!(
        list.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c3", "c1"],
        "newest first"
    );
    assert!(matches!(
        store
            .append_event(&new_event(&"missing".into(), "m", None))
            .await,
        Err(StoreError::NotFound)
    ));
    routing_conforms(store).await;
    devices_conform(store).await;
}

/// Push registrations: one per consumer and app, replaced by a new one; a dead token removes
/// it only while it is still the registered one.
async fn devices_conform(store: &Store) {
    let registration = |app: &str, hash: &str| PushRegistration {
        account: "acct".into(),
        consumer_id: "u9".into(),
        app: app.into(),
        provider: "apns".into(),
        token_sealed: format!("sealed-{hash}").into_bytes(),
        token_hash: hash.into(),
        updated_at: 1,
    };
    store
        .put_push_registration(&registration("com.b", "h1"))
        .await
        .unwrap();
    store
        .put_push_registration(&registration("com.a", "h2"))
        .await
        .unwrap();
    // The same app again: replaced, not added.
    store
        .put_push_registration(&registration("com.b", "h3"))
        .await
        .unwrap();
    let listed = store
        .list_push_registrations("acct", &"u9".into())
        .await
        .unwrap();
    assert_eq!(
        listed,
        [registration("com.a", "h2"), registration("com.b", "h3")]
    );
    assert!(
        store
            .list_push_registrations("other", &"u9".into())
            .await
            .unwrap()
            .is_empty()
    );
    // A token reported dead after it was replaced leaves the new one alone.
    assert!(
        !store
            .delete_push_registration("acct", &"u9".into(), "com.b", Some("h1"))
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_push_registration("acct", &"u9".into(), "com.b", Some("h3"))
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_push_registration("acct", &"u9".into(), "com.a", None)
            .await
            .unwrap()
    );
    assert!(
        store
            .list_push_registrations("acct", &"u9".into())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Routing: the queue, one winner among agents taking a conversation at once, returning a
/// conversation to the queue, and an agent's list.
async fn routing_conforms(store: &Store) {
    let mut waiting = Vec::new();
    for (i, consumer) in ["r1", "r2", "r3"].iter().enumerate() {
        let mut c = conversation(&format!("q{i}"), consumer);
        c.created_at = UnixMillis(10_000 + i as i64);
        store.create_conversation(&c, &[]).await.unwrap();
        waiting.push(c.id);
    }
    let queue = |rows: Vec<ConversationRow>| {
        rows.into_iter()
            .filter(|c| c.id.as_str().starts_with('q'))
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        queue(
            store
                .list_waiting_conversations("acct", None, 100)
                .await
                .unwrap()
        ),
        waiting,
        "oldest first"
    );

    // An agent that rejects a ring is no longer offered it and cannot take it (until the
    // conversation joins the queue again, below); other agents still are and can.
    assert!(
        store
            .reject_ring(&"q1".into(), &"agent-r".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .reject_ring(&"q1".into(), &"agent-r".into())
            .await
            .unwrap(),
        "again: no error"
    );
    assert!(
        store
            .has_rejected_ring(&"q1".into(), &"agent-r".into())
            .await
            .unwrap()
    );
    assert!(
        !store
            .has_rejected_ring(&"q1".into(), &"agent-s".into())
            .await
            .unwrap()
    );
    assert_eq!(
        queue(
            store
                .list_waiting_conversations("acct", Some(&"agent-r".into()), 100)
                .await
                .unwrap()
        ),
        ["q0", "q2"]
    );
    assert_eq!(
        queue(
            store
                .list_waiting_conversations("acct", Some(&"agent-s".into()), 100)
                .await
                .unwrap()
        ),
        waiting
    );
    assert!(
        !store
            .take_conversation(&"q1".into(), &"agent-r".into())
            .await
            .unwrap()
    );

    // Ten agents take q0 at once: exactly one wins.
    let takers: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                (
                    format!("agent-{i}"),
                    store
                        .take_conversation(&"q0".into(), &format!("agent-{i}").into())
                        .await
                        .unwrap(),
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in takers {
        let (agent, won) = t.await.unwrap();
        if won {
            winners.push(agent);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let winner = winners.remove(0);
    let taken = store.get_conversation(&"q0".into()).await.unwrap().unwrap();
    assert_eq!(
        taken.agent_id.as_ref().map(|a| a.as_str()),
        Some(winner.as_str())
    );
    assert_eq!(
        queue(
            store
                .list_waiting_conversations("acct", None, 100)
                .await
                .unwrap()
        ),
        ["q1", "q2"]
    );
    // A ring of a conversation that is not waiting cannot be rejected.
    assert!(
        !store
            .reject_ring(&"q0".into(), &"agent-r".into())
            .await
            .unwrap()
    );

    // Only its agent returns it; with a new skill; then it waits again and can be taken.
    assert!(
        !store
            .return_conversation(&"q0".into(), &"someone-else".into(), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .return_conversation(&"q0".into(), &winner.clone().into(), Some("billing"))
            .await
            .unwrap()
    );
    let returned = store.get_conversation(&"q0".into()).await.unwrap().unwrap();
    assert_eq!(returned.agent_id, None);
    assert_eq!(returned.skill.as_deref(), Some("billing"));
    assert!(
        store
            .take_conversation(&"q0".into(), &"agent-x".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .take_conversation(&"q1".into(), &"agent-x".into())
            .await
            .unwrap()
    );
    // An agent's event goes in only while the agent holds the conversation.
    let q1 = ConversationId::new("q1");
    let (agent_x, agent_y) = (AgentId::new("agent-x"), AgentId::new("agent-y"));
    let by = |holder| NewEvent {
        holder: Some(holder),
        ..new_event(&q1, "by-agent", None)
    };
    assert!(matches!(
        store.append_event(&by(&agent_y)).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.append_event(&by(&agent_x)).await.unwrap().created);
    assert_eq!(
        store
            .list_agent_conversations("acct", &"agent-x".into(), 10)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["q1", "q0"],
        "newest first"
    );

    // A closed conversation cannot be taken or returned, and stays in its agent's list.
    assert!(
        store
            .close_conversation(&"q1".into(), UnixMillis(20_000), &[])
            .await
            .unwrap()
    );
    assert!(
        !store
            .return_conversation(&"q1".into(), &"agent-x".into(), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .close_conversation(&"q2".into(), UnixMillis(20_000), &[])
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_conversation(&"q2".into(), &"agent-x".into())
            .await
            .unwrap()
    );

    assert_eq!(
        store
            .list_agent_conversations("acct", &"agent-x".into(), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // q0 joins the queue again: a new round, offered to everyone, the rejection of an
    // earlier round forgotten.
    assert!(
        store
            .reject_ring(&"q0".into(), &"agent-r".into())
            .await
            .is_ok()
    );
    assert!(
        store
            .return_conversation(&"q0".into(), &"agent-x".into(), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .reject_ring(&"q0".into(), &"agent-r".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .return_conversation(&"q0".into(), &"agent-r".into(), None)
            .await
            .is_ok_and(|done| !done),
        "not agent-r's to return"
    );
    assert!(
        !store
            .take_conversation(&"q0".into(), &"agent-r".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .take_conversation(&"q0".into(), &"agent-y".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .return_conversation(&"q0".into(), &"agent-y".into(), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .has_rejected_ring(&"q0".into(), &"agent-r".into())
            .await
            .unwrap()
    );
    assert_eq!(
        queue(
            store
                .list_waiting_conversations("acct", Some(&"agent-r".into()), 100)
                .await
                .unwrap()
        ),
        ["q0"]
    );
    assert!(
        store
            .take_conversation(&"q0".into(), &"agent-r".into())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&Store::default_url(dir.path())).await;
    assert_eq!(store.backend(), "sqlite");
    conforms(&store).await;
    // Only the service reads its database.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("brandgate.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

#[tokio::test]
async fn postgres_conforms() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let store = open(&db.url).await;
    assert_eq!(store.backend(), "postgres");
    conforms(&store).await;
    store.close().await;
    db.drop().await;
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    // Five "nodes" open the same new database at once; each migration runs once, under the lock.
    let opens: Vec<_> = (0..5)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { open(&url).await })
        })
        .collect();
    for handle in opens {
        handle.await.unwrap().close().await;
    }
    let store = open(&db.url).await;
    let Store::Postgres(pool) = &store else {
        unreachable!()
    };
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, migrate::latest(&store));
    store.close().await;
    db.drop().await;
}

/// `/readyz` follows the database: a node whose PostgreSQL stops answering is not ready (and
/// `brandgate_store_up` says 0) until it answers again.
#[tokio::test]
async fn readiness_follows_the_database() {
    use std::time::{Duration, Instant};
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let role = format!("{}_ready", db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'pw'"
    )))
    .execute(db.admin())
    .await
    .unwrap();
    let env = crate::support::TestEnv::new();
    let rest = db.url.split_once("://").map_or(db.url.as_str(), |r| r.1);
    let host = rest.rsplit_once('@').map_or(rest, |r| r.1);
    let password = env.secret("db-password", "pw");
    let store = format!(
        "url = \"postgres://{role}@{host}\"\npassword_file = \"{}\"",
        password.display()
    );
    let keys = crate::support::identity_world::data_key_line("k1");
    let config = env.config(&env.store_section(&keys, &store));
    let mut daemon = crate::support::daemon::Daemon::start(env.path(), &config).await;
    let client = env.client();
    let ready = |daemon: &crate::support::daemon::Daemon| {
        let url = daemon.ops_url("/readyz");
        let client = &client;
        async move { client.get(&url).await }
    };
    let first = ready(&daemon).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["checks"]["store"]["answers"], true);

    // The database shuts the node out: no new logins, its connections ended.
    let login = |allow: bool| {
        let how = if allow { "LOGIN" } else { "NOLOGIN" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} {how}"))).execute(db.admin())
    };
    login(false).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&role)
        .execute(db.admin())
        .await
        .unwrap();
    let until = |want: u16| {
        let daemon = &daemon;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = ready(daemon).await;
                if r.status == want {
                    return r;
                }
                assert!(
                    Instant::now() < deadline,
                    "readyz stayed {}: {}",
                    r.status,
                    r.body
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let down = until(503).await;
    assert_eq!(
        down.json()["checks"]["store"]["answers"],
        false,
        "{}",
        down.body
    );
    let m = client.get(&daemon.ops_url("/metrics")).await.body;
    assert!(m.contains("brandgate_store_up 0"), "{m}");

    login(true).await.unwrap();
    let up = until(200).await;
    assert_eq!(up.json()["checks"]["store"]["answers"], true);
    let log = daemon.stop().await;
    assert!(log.contains("the store does not answer"), "{log}");
    assert!(log.contains("the store answers again"), "{log}");
    let admin = db.admin().clone();
    db.drop().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await
        .unwrap();
}
