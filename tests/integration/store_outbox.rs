//! The outbox's part of the store's conformance suite (`src/store/outbox.rs` has the contract),
//! run by `store.rs` against SQLite and PostgreSQL, and two "nodes" claiming at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use brandgate::clock::UnixMillis;
use brandgate::ids::{ConsumerId, ConversationId};
use brandgate::store::outbox::{NewOutboxItem, OutboxCount, OutboxItem, Settle, Settled};
use brandgate::store::relay::{ConversationRow, NewEvent};
use brandgate::store::{Store, StoreError};

const T0: UnixMillis = UnixMillis(1_000_000);

fn item(id: &str, lane: &str, dedupe_key: Option<&str>) -> NewOutboxItem {
    NewOutboxItem {
        id: id.into(),
        kind: "webhook".into(),
        lane: lane.into(),
        dedupe_key: dedupe_key.map(str::to_string),
        payload: format!(r#"{{"item":"{id}"}}"#).into_bytes(),
        created_at: T0,
        next_at: T0,
    }
}

fn conversation(id: &str, consumer: &str) -> ConversationRow {
    ConversationRow {
        id: id.into(),
        account: "outbox".into(),
        consumer_id: consumer.into(),
        open: true,
        agent_id: None,
        skill: None,
        created_at: T0,
        closed_at: None,
        last_seq: -1,
    }
}

fn event<'a>(
    conversation_id: &'a ConversationId,
    event_id: &'a str,
    client: &'a str,
    outbox: &'a [NewOutboxItem],
) -> NewEvent<'a> {
    NewEvent {
        conversation_id,
        event_id,
        originator_id: "consumer-o",
        originator_role: "CONSUMER",
        client_event_id: Some(client),
        holder: None,
        sealed: b"sealed",
        created_at: T0,
        outbox,
        notice: None,
    }
}

async fn ids(store: &Store, parked: Option<bool>) -> Vec<String> {
    store
        .list_outbox(parked, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// The item with `id`, as stored now.
async fn stored(store: &Store, id: &str) -> OutboxItem {
    store
        .list_outbox(None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == id)
        .unwrap()
}

async fn claim(store: &Store, owner: &str, at: UnixMillis) -> Vec<String> {
    store
        .claim_outbox(
            owner,
            &["webhook"],
            at,
            at.after(std::time::Duration::from_secs(60)),
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// The contract, on an empty outbox.
pub async fn conforms(store: &Store) {
    // Written with their cause, and only then.
    let c1 = conversation("o1", "ou1");
    store
        .create_conversation(&c1, &[item("a", "lane-1", None)])
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_conversation(
                &conversation("o1-dup", "ou1"),
                &[item("lost", "lane-1", None)]
            )
            .await,
        Err(StoreError::Conflict)
    ));
    let appended = store
        .append_event(&event(
            &c1.id,
            "outbox-e1",
            "k1",
            &[item("b", "lane-1", None)],
        ))
        .await
        .unwrap();
    assert!(appended.created);
    // A re-send writes nothing new.
    let again = store
        .append_event(&event(
            &c1.id,
            "outbox-e1-again",
            "k1",
            &[item("lost-2", "lane-1", None)],
        ))
        .await
        .unwrap();
    assert!(!again.created);
    assert!(
        store
            .close_conversation(&c1.id, T0, &[item("c", "lane-1", None)])
            .await
            .unwrap()
    );
    assert!(
        !store
            .close_conversation(&c1.id, T0, &[item("lost-3", "lane-1", None)])
            .await
            .unwrap()
    );
    let c2 = conversation("o2", "ou2");
    store
        .create_conversation(&c2, &[item("d", "lane-2", None)])
        .await
        .unwrap();
    assert_eq!(ids(store, None).await, ["a", "b", "c", "d"]);
    let listed = store.list_outbox(None, 100).await.unwrap();
    assert_eq!(listed[0].conversation_id, Some(c1.id.clone()));
    assert_eq!((listed[0].seq, listed[1].seq), (None, Some(appended.seq)));
    assert_eq!(listed[1].payload, br#"{"item":"b"}"#);
    assert_eq!(
        (listed[0].attempts, listed[0].parked, listed[0].version),
        (0, false, 0)
    );

    // Only each lane's head can be claimed, by one owner, and nothing before it is due.
    assert_eq!(
        claim(store, "n1", UnixMillis(T0.0 - 1)).await,
        Vec::<String>::new()
    );
    assert_eq!(claim(store, "n1", T0).await, ["a", "d"]);
    assert_eq!(claim(store, "n2", T0).await, Vec::<String>::new());
    let held = store.list_outbox(None, 1).await.unwrap().remove(0);
    assert_eq!(
        store
            .settle_outbox(
                &held,
                "n2",
                Settle::Done {
                    renewed_at: T0,
                    renewed_due: T0
                }
            )
            .await
            .unwrap(),
        Settled::LeaseLost,
        "only the lease's owner settles"
    );
    assert_eq!(
        store
            .settle_outbox(
                &held,
                "n1",
                Settle::Done {
                    renewed_at: T0,
                    renewed_due: T0
                }
            )
            .await
            .unwrap(),
        Settled::Removed
    );
    assert_eq!(claim(store, "n2", T0).await, ["b"]);

    // A retry waits for its time, and holds its lane back meanwhile.
    let b = store.list_outbox(None, 1).await.unwrap().remove(0);
    let later = T0.after(std::time::Duration::from_secs(10));
    assert_eq!(
        store
            .settle_outbox(
                &b,
                "n2",
                Settle::Retry {
                    next_at: later,
                    error: "answered 503"
                }
            )
            .await
            .unwrap(),
        Settled::Kept
    );
    assert_eq!(claim(store, "n1", T0).await, Vec::<String>::new());
    assert_eq!(claim(store, "n1", later).await, ["b"]);

    // Parked: out of the lane (the next one goes), listed with its error, retried on demand.
    let b = store.list_outbox(None, 1).await.unwrap().remove(0);
    assert_eq!(
        store
            .settle_outbox(
                &b,
                "n1",
                Settle::Park {
                    error: "answered 400",
                    at: later
                }
            )
            .await
            .unwrap(),
        Settled::Kept
    );
    let parked = store.list_outbox(Some(true), 100).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (
            parked[0].id.as_str(),
            parked[0].attempts,
            parked[0].last_error.as_deref()
        ),
        ("b", 2, Some("answered 400"))
    );
    assert_eq!(ids(store, Some(false)).await, ["c", "d"]);
    assert_eq!(
        store.count_outbox().await.unwrap(),
        [OutboxCount {
            kind: "webhook".into(),
            pending: 2,
            parked: 1
        }]
    );
    assert_eq!(claim(store, "n1", later).await, ["c"]);
    assert_eq!(
        store
            .retry_parked_outbox(Some("nope"), later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.retry_parked_outbox(None, later).await.unwrap(), 1);
    let b = store.list_outbox(None, 1).await.unwrap().remove(0);
    assert_eq!((b.id.as_str(), b.parked, b.attempts), ("b", false, 0));
    // b heads lane-1 again, but c (lane-1) is still held: nothing of the lane until it is not.
    assert_eq!(claim(store, "n2", later).await, Vec::<String>::new());
    // Only the kinds asked for.
    let none = store
        .claim_outbox(
            "n2",
            &["away_push"],
            later.after(std::time::Duration::from_secs(61)),
            later,
            10,
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    // A lease that ran out is another owner's to take; the first can no longer settle it.
    let expired = later.after(std::time::Duration::from_secs(61));
    let c = stored(store, "c").await;
    // d's lease (n1's, from T0) ran out too.
    assert_eq!(
        claim(store, "n2", expired).await,
        ["b", "d"],
        "b heads lane-1 again"
    );
    // (c is lane-1's too: behind b now, whatever its lease.)
    assert_eq!(
        store
            .settle_outbox(
                &c,
                "n1",
                Settle::Done {
                    renewed_at: expired,
                    renewed_due: expired
                }
            )
            .await
            .unwrap(),
        Settled::Removed,
        "nobody else took c: n1's lease, though run out, is still the one on it"
    );

    // A renewed lease outlives its first end.
    let b_held = store.list_outbox(None, 1).await.unwrap().remove(0);
    let far = expired.after(std::time::Duration::from_secs(120));
    assert!(
        store
            .renew_outbox_lease(b_held.position, "n2", far)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_outbox_lease(b_held.position, "n9", far)
            .await
            .unwrap(),
        "not n9's"
    );
    let renewed_past = expired.after(std::time::Duration::from_secs(90));
    assert_eq!(
        claim(store, "n4", renewed_past).await,
        ["d"],
        "b stays n2's; d's ran out"
    );
    assert_eq!(store.release_outbox("n4").await.unwrap(), 1);

    // Handing leases back: at once claimable by another owner.
    assert_eq!(store.release_outbox("n2").await.unwrap(), 1);
    assert_eq!(claim(store, "n3", expired).await, ["b", "d"]);
    let b = store.list_outbox(None, 1).await.unwrap().remove(0);
    store
        .settle_outbox(
            &b,
            "n3",
            Settle::Done {
                renewed_at: expired,
                renewed_due: expired,
            },
        )
        .await
        .unwrap();

    // One pending item per dedupe key: a second write renews it (and gives it the new
    // sequence); completing what was claimed before the renewal keeps it, due again.
    let c3 = conversation("o3", "ou3");
    store.create_conversation(&c3, &[]).await.unwrap();
    let key = Some("away:o3");
    store
        .append_event(&event(
            &c3.id,
            "outbox-e3",
            "k3",
            &[item("p1", "lane-3", key)],
        ))
        .await
        .unwrap();
    assert_eq!(claim(store, "n1", expired).await, ["p1"]);
    let p = stored(store, "p1").await;
    let second = store
        .append_event(&event(
            &c3.id,
            "outbox-e4",
            "k4",
            &[item("p2", "lane-3", key)],
        ))
        .await
        .unwrap();
    let renewed = store
        .list_outbox(None, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.lane == "lane-3")
        .unwrap();
    assert_eq!(
        (renewed.id.as_str(), renewed.version, renewed.seq),
        ("p1", 1, Some(second.seq))
    );
    let due_again = expired.after(std::time::Duration::from_secs(3));
    assert_eq!(
        store
            .settle_outbox(
                &p,
                "n1",
                Settle::Done {
                    renewed_at: due_again,
                    renewed_due: due_again
                }
            )
            .await
            .unwrap(),
        Settled::Kept
    );
    assert_eq!(claim(store, "n1", expired).await, Vec::<String>::new());
    assert_eq!(claim(store, "n2", due_again).await, ["p1"]);
    let p = stored(store, "p1").await;
    assert_eq!(
        store
            .settle_outbox(
                &p,
                "n2",
                Settle::Done {
                    renewed_at: due_again,
                    renewed_due: due_again
                }
            )
            .await
            .unwrap(),
        Settled::Removed
    );

    // A parked item lets go of its dedupe key: the next write with it makes a new item.
    store
        .append_event(&event(
            &c3.id,
            "outbox-e5",
            "k5",
            &[item("p3", "lane-3", key)],
        ))
        .await
        .unwrap();
    assert_eq!(claim(store, "n2", due_again).await, ["p3"]);
    let p3 = stored(store, "p3").await;
    store
        .settle_outbox(
            &p3,
            "n2",
            Settle::Park {
                error: "refused",
                at: T0,
            },
        )
        .await
        .unwrap();
    store
        .append_event(&event(
            &c3.id,
            "outbox-e6",
            "k6",
            &[item("p4", "lane-3", key)],
        ))
        .await
        .unwrap();
    let lane3: Vec<(String, bool)> = store
        .list_outbox(None, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.lane == "lane-3")
        .map(|i| (i.id, i.parked))
        .collect();
    assert_eq!(lane3, [("p3".to_string(), true), ("p4".to_string(), false)]);
    assert_eq!(
        store
            .purge_parked_outbox(T0.after(std::time::Duration::from_millis(1)))
            .await
            .unwrap(),
        1
    );
    let p4 = stored(store, "p4").await;
    assert_eq!(claim(store, "n2", due_again).await, ["p4"]);
    store
        .settle_outbox(
            &p4,
            "n2",
            Settle::Done {
                renewed_at: T0,
                renewed_due: T0,
            },
        )
        .await
        .unwrap();

    // Purged: parked items older than the cut-off, nothing else.
    let d = stored(store, "d").await;
    store
        .settle_outbox(
            &d,
            "n3",
            Settle::Park {
                error: "gone",
                at: T0,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.purge_parked_outbox(T0).await.unwrap(), 0);
    assert_eq!(
        store
            .purge_parked_outbox(T0.after(std::time::Duration::from_millis(1)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(ids(store, None).await, Vec::<String>::new());

    // Written on its own (a cause outside the store): a second item with a pending one's key
    // is not written and does not renew it; once that one is done, the key is free again.
    store
        .add_outbox_item(&item("alone-1", "alone-lane-1", Some("dead:t1")))
        .await
        .unwrap();
    store
        .add_outbox_item(&item("alone-2", "alone-lane-2", Some("dead:t1")))
        .await
        .unwrap();
    assert_eq!(ids(store, None).await, ["alone-1"]);
    let alone = stored(store, "alone-1").await;
    assert_eq!(
        (alone.version, alone.conversation_id, alone.seq),
        (0, None, None)
    );
    assert_eq!(claim(store, "n1", T0).await, ["alone-1"]);
    store
        .add_outbox_item(&item("alone-3", "alone-lane-3", Some("dead:t1")))
        .await
        .unwrap();
    let claimed = stored(store, "alone-1").await;
    assert_eq!(
        store
            .settle_outbox(
                &claimed,
                "n1",
                Settle::Done {
                    renewed_at: T0,
                    renewed_due: T0,
                },
            )
            .await
            .unwrap(),
        Settled::Removed,
        "nothing renewed it"
    );
    store
        .add_outbox_item(&item("alone-4", "alone-lane-4", Some("dead:t1")))
        .await
        .unwrap();
    assert_eq!(ids(store, None).await, ["alone-4"]);
    assert_eq!(claim(store, "n2", T0).await, ["alone-4"]);
    let last = stored(store, "alone-4").await;
    store
        .settle_outbox(
            &last,
            "n2",
            Settle::Done {
                renewed_at: T0,
                renewed_due: T0,
            },
        )
        .await
        .unwrap();
}

/// Two handles on one database ("nodes") claim and complete at once: every item is handed out
/// exactly once, no lane ever has two items held at once, and each lane's are completed in
/// their written order.
async fn two_nodes_share_the_work(first: &Store, second: &Store) {
    const LANES: usize = 8;
    const PER_LANE: usize = 25;
    let mut conversations = Vec::new();
    for lane in 0..LANES {
        let c = conversation(&format!("shared-{lane}"), &format!("shared-u{lane}"));
        first.create_conversation(&c, &[]).await.unwrap();
        conversations.push(c);
    }
    // Written interleaved, so lanes mix in the write order.
    for n in 0..PER_LANE {
        for (lane, c) in conversations.iter().enumerate() {
            let id = format!("{lane}-{n:02}");
            first
                .append_event(&event(
                    &c.id,
                    &format!("event-{id}"),
                    &format!("k-{id}"),
                    &[item(&id, &format!("shared-lane-{lane}"), None)],
                ))
                .await
                .unwrap();
        }
    }
    // Lanes held right now, and every completion in the order it happened, across both.
    let shared = Arc::new(Mutex::new((HashSet::<String>::new(), Vec::<String>::new())));
    let work = |store: Store, owner: &'static str| {
        let shared = shared.clone();
        async move {
            let mut idle = 0;
            // Bounded: at most this many rounds, ending once the outbox stays empty.
            for _ in 0..10_000 {
                let items = store
                    .claim_outbox(
                        owner,
                        &["webhook"],
                        T0,
                        T0.after(std::time::Duration::from_secs(60)),
                        4,
                    )
                    .await
                    .unwrap();
                if items.is_empty() {
                    idle += 1;
                    if idle > 50 {
                        break;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for i in &items {
                    let fresh = shared.lock().unwrap().0.insert(i.lane.clone());
                    assert!(fresh, "{} claimed while its lane was held", i.id);
                }
                for i in items {
                    // Recorded before the settle: once settled, the lane's next may go.
                    {
                        let mut s = shared.lock().unwrap();
                        s.0.remove(&i.lane);
                        s.1.push(i.id.clone());
                    }
                    let settled = store
                        .settle_outbox(
                            &i,
                            owner,
                            Settle::Done {
                                renewed_at: T0,
                                renewed_due: T0,
                            },
                        )
                        .await
                        .unwrap();
                    assert_eq!(settled, Settled::Removed);
                }
            }
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(work(first.clone(), "node-a")),
        tokio::spawn(work(second.clone(), "node-b"))
    );
    a.unwrap();
    b.unwrap();
    let log = shared.lock().unwrap().1.clone();
    let mut all = log.clone();
    all.sort();
    let expected: Vec<String> = (0..LANES)
        .flat_map(|l| (0..PER_LANE).map(move |n| format!("{l}-{n:02}")))
        .collect();
    assert_eq!(all, expected, "each exactly once");
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for id in &log {
        let (lane, n) = id.split_once('-').unwrap();
        if let Some(before) = last.insert(lane, n) {
            assert!(before < n, "{id} after {lane}-{before}");
        }
    }
}

#[tokio::test]
async fn sqlite_nodes_share_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::default_url(dir.path());
    let (first, second) = (open(&url).await, open(&url).await);
    two_nodes_share_the_work(&first, &second).await;
}

#[tokio::test]
async fn postgres_nodes_share_the_outbox() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (first, second) = (open(&db.url).await, open(&db.url).await);
    two_nodes_share_the_work(&first, &second).await;
    first.close().await;
    second.close().await;
    db.drop().await;
}

async fn open(url: &str) -> Store {
    Store::open(brandgate::store::StoreOptions {
        url,
        password: None,
        max_connections: 4,
    })
    .await
    .unwrap()
}

/// Consumer presence (`src/store/presence.rs`): per node, expiring, cleared per node.
pub async fn presence_conforms(store: &Store) {
    let (u1, u2) = (ConsumerId::from("pu1"), ConsumerId::from("pu2"));
    let later = T0.after(std::time::Duration::from_secs(60));
    assert!(!store.is_consumer_present("acct", &u1, T0).await.unwrap());
    store
        .set_consumer_present("node-a", "acct", &u1, true, later)
        .await
        .unwrap();
    store
        .set_consumer_present("node-b", "acct", &u1, true, later)
        .await
        .unwrap();
    assert!(store.is_consumer_present("acct", &u1, T0).await.unwrap());
    assert!(!store.is_consumer_present("other", &u1, T0).await.unwrap());
    assert!(!store.is_consumer_present("acct", &u2, T0).await.unwrap());
    // Gone from a, still on b.
    store
        .set_consumer_present("node-a", "acct", &u1, false, later)
        .await
        .unwrap();
    assert!(store.is_consumer_present("acct", &u1, T0).await.unwrap());
    // b's rows expire unless refreshed.
    assert!(!store.is_consumer_present("acct", &u1, later).await.unwrap());
    let much_later = later.after(std::time::Duration::from_secs(60));
    store
        .refresh_node_presence("node-b", T0, much_later)
        .await
        .unwrap();
    assert!(store.is_consumer_present("acct", &u1, later).await.unwrap());
    // A node that stops clears its own rows.
    store
        .set_consumer_present("node-c", "acct", &u2, true, much_later)
        .await
        .unwrap();
    store.clear_node_presence("node-b", T0).await.unwrap();
    assert!(!store.is_consumer_present("acct", &u1, T0).await.unwrap());
    assert!(store.is_consumer_present("acct", &u2, T0).await.unwrap());
    store.clear_node_presence("node-c", T0).await.unwrap();
}

/// PostgreSQL: an append's notice is delivered at its commit and only then: not for a
/// re-send, not for a refused append. (A listener gets notifications in commit order, so the
/// last one shows that none came in between.)
#[tokio::test]
async fn postgres_an_appended_events_notice_goes_with_its_commit() {
    use brandgate::store::relay::Notice;
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let store = open(&db.url).await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("outbox_test").await.unwrap();
    let (c1, c2) = (conversation("n1", "nu1"), conversation("n2", "nu2"));
    store.create_conversation(&c1, &[]).await.unwrap();
    store.create_conversation(&c2, &[]).await.unwrap();
    let append = |c: &'static str, event_id: &'static str, client: &'static str| {
        let store = store.clone();
        async move {
            let conversation: ConversationId = c.into();
            let payload = move |seq: i64| Some(format!("{c} {seq}"));
            store
                .append_event(&NewEvent {
                    notice: Some(Notice {
                        channel: "outbox_test",
                        payload: &payload,
                    }),
                    ..event(&conversation, event_id, client, &[])
                })
                .await
        }
    };
    assert!(append("n1", "notice-1", "k1").await.unwrap().created);
    assert!(!append("n1", "notice-1-again", "k1").await.unwrap().created);
    store.close_conversation(&c1.id, T0, &[]).await.unwrap();
    assert!(matches!(
        append("n1", "notice-2", "k2").await,
        Err(StoreError::NotFound)
    ));
    assert!(append("n2", "notice-3", "k3").await.unwrap().created);
    let mut heard = Vec::new();
    while heard.last().map(String::as_str) != Some("n2 0") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification within 10 s")
            .unwrap();
        heard.push(n.payload().to_string());
    }
    assert_eq!(heard, ["n1 0", "n2 0"]);
    store.close().await;
    drop(listener);
    db.drop().await;
}

/// Shared push claims (`src/store/push_claims.rs`).
pub async fn push_claims_conform(store: &Store) {
    use brandgate::store::push_claims::{PushClaimOp, PushClaimOutcome as O};
    let key = [7u8; 32];
    let claim = |owner: &str, now: UnixMillis| PushClaimOp::Claim {
        key,
        owner: owner.into(),
        now,
        until: now.after(std::time::Duration::from_secs(30)),
    };
    let one = |op: PushClaimOp| async move { store.apply_push_claims(&[op]).await.unwrap()[0] };
    assert_eq!(one(claim("a", T0)).await, O::Claimed);
    assert_eq!(one(claim("b", T0)).await, O::Sending);
    // Another owner cannot release or mark it.
    one(PushClaimOp::Release {
        key,
        owner: "b".into(),
    })
    .await;
    assert_eq!(one(claim("b", T0)).await, O::Sending);
    // Released by its owner: the next claim takes it.
    assert_eq!(
        one(PushClaimOp::Release {
            key,
            owner: "a".into()
        })
        .await,
        O::Done
    );
    assert_eq!(one(claim("b", T0)).await, O::Claimed);
    // Delivered: a duplicate for everyone until the window ends, then claimable again.
    let window_end = T0.after(std::time::Duration::from_secs(600));
    one(PushClaimOp::Delivered {
        key,
        owner: "b".into(),
        until: window_end,
    })
    .await;
    assert_eq!(one(claim("a", T0)).await, O::Delivered);
    assert_eq!(one(claim("b", T0)).await, O::Delivered);
    one(PushClaimOp::Release {
        key,
        owner: "b".into(),
    })
    .await;
    assert_eq!(
        one(claim("a", T0)).await,
        O::Delivered,
        "a delivered key is not released"
    );
    assert_eq!(one(claim("a", window_end)).await, O::Claimed);
    // A claim whose owner died runs out.
    let later = window_end.after(std::time::Duration::from_secs(31));
    assert_eq!(one(claim("c", later)).await, O::Claimed);
    // In one batch, in order: outcomes per operation.
    let other = [8u8; 32];
    let batch = store
        .apply_push_claims(&[
            PushClaimOp::Claim {
                key: other,
                owner: "d".into(),
                now: T0,
                until: window_end,
            },
            PushClaimOp::Claim {
                key: other,
                owner: "e".into(),
                now: T0,
                until: window_end,
            },
            PushClaimOp::Delivered {
                key: other,
                owner: "d".into(),
                until: window_end,
            },
            PushClaimOp::Claim {
                key: other,
                owner: "e".into(),
                now: T0,
                until: window_end,
            },
        ])
        .await
        .unwrap();
    assert_eq!(batch, [O::Claimed, O::Sending, O::Done, O::Delivered]);
    // Purged once past.
    assert_eq!(store.purge_push_claims(window_end).await.unwrap(), 0);
    assert_eq!(
        store
            .purge_push_claims(later.after(std::time::Duration::from_secs(31)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(one(claim("f", T0)).await, O::Claimed);

    // Delivered recorded whoever holds the key now (here nobody: the claim ran out and was
    // purged): still a duplicate for everyone.
    let lost = [9u8; 32];
    store
        .apply_push_claims(&[PushClaimOp::Delivered {
            key: lost,
            owner: "g".into(),
            until: window_end,
        }])
        .await
        .unwrap();
    assert_eq!(
        store
            .apply_push_claims(&[PushClaimOp::Claim {
                key: lost,
                owner: "h".into(),
                now: T0,
                until: window_end
            }])
            .await
            .unwrap(),
        [O::Delivered]
    );

    // A batch of different keys (set-based statements): each op its own outcome.
    let [ka, kb, kc, kd, ke] = [[201u8; 32], [202; 32], [203; 32], [204; 32], [205; 32]];
    let until = window_end;
    store
        .apply_push_claims(&[
            PushClaimOp::Claim {
                key: ka,
                owner: "p".into(),
                now: T0,
                until,
            },
            PushClaimOp::Claim {
                key: kb,
                owner: "q".into(),
                now: T0,
                until,
            },
            PushClaimOp::Claim {
                key: ke,
                owner: "r".into(),
                now: T0,
                until,
            },
        ])
        .await
        .unwrap();
    store
        .apply_push_claims(&[PushClaimOp::Delivered {
            key: ka,
            owner: "p".into(),
            until,
        }])
        .await
        .unwrap();
    let mixed = store
        .apply_push_claims(&[
            PushClaimOp::Claim {
                key: ka,
                owner: "s".into(),
                now: T0,
                until,
            },
            PushClaimOp::Claim {
                key: kb,
                owner: "s".into(),
                now: T0,
                until,
            },
            PushClaimOp::Claim {
                key: kc,
                owner: "s".into(),
                now: T0,
                until,
            },
            PushClaimOp::Delivered {
                key: kd,
                owner: "s".into(),
                until,
            },
            PushClaimOp::Release {
                key: ke,
                owner: "r".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        mixed,
        [O::Delivered, O::Sending, O::Claimed, O::Done, O::Done]
    );
    let after = store
        .apply_push_claims(&[
            PushClaimOp::Claim {
                key: kc,
                owner: "t".into(),
                now: T0,
                until,
            },
            PushClaimOp::Claim {
                key: kd,
                owner: "t".into(),
                now: T0,
                until,
            },
            PushClaimOp::Claim {
                key: ke,
                owner: "t".into(),
                now: T0,
                until,
            },
        ])
        .await
        .unwrap();
    assert_eq!(after, [O::Sending, O::Delivered, O::Claimed]);

    // Two owners claiming the same keys at once (two connections): one wins each.
    let keys: Vec<[u8; 32]> = (0..40u8).map(|i| [i.wrapping_add(100); 32]).collect();
    let claims = |owner: &'static str| {
        let store = store.clone();
        let keys = keys.clone();
        async move {
            let mut won = Vec::new();
            for key in keys {
                let op = PushClaimOp::Claim {
                    key,
                    owner: owner.into(),
                    now: T0,
                    until: window_end,
                };
                won.push(store.apply_push_claims(&[op]).await.unwrap()[0] == O::Claimed);
            }
            won
        }
    };
    let (x, y) = tokio::join!(tokio::spawn(claims("x")), tokio::spawn(claims("y")));
    let (x, y) = (x.unwrap(), y.unwrap());
    for (i, (x, y)) in x.iter().zip(&y).enumerate() {
        assert!(x ^ y, "key {i}: x {x}, y {y}");
    }

    // The purge reaches the first and the last slice of the keys, and only what ran out.
    let soon = T0.after(std::time::Duration::from_millis(5));
    for key in [[0u8; 32], [255u8; 32]] {
        let op = PushClaimOp::Claim {
            key,
            owner: "u".into(),
            now: T0,
            until: soon,
        };
        assert_eq!(store.apply_push_claims(&[op]).await.unwrap(), [O::Claimed]);
    }
    assert_eq!(store.purge_push_claims(soon).await.unwrap(), 0);
    assert_eq!(
        store
            .purge_push_claims(soon.after(std::time::Duration::from_millis(1)))
            .await
            .unwrap(),
        2
    );
}
