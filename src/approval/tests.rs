//! Tests of the approvals handle, each over a real SQLite file and over a real PostgreSQL
//! control schema (the shared suite both stores pass): ticket and hold
//! lifecycles, permissions, use counting, races, expiry on tokio's paused clock, guards,
//! and what survives a reopen.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::events::{Emitted, Event, EventSink};
use super::store::{PgStore, PgTarget, SqliteStore, Store};
use super::*;

fn actor(name: &str, role: Role, db_user: Option<&str>) -> Actor {
    Actor {
        name: name.into(),
        role,
        groups: vec![],
        db_user: db_user.map(Into::into),
    }
}

fn alice() -> Actor {
    actor("alice", Role::Approver, Some("alice_db"))
}
fn bob() -> Actor {
    actor("bob", Role::Approver, Some("bob_db"))
}
fn carol() -> Actor {
    actor("carol", Role::Approver, None)
}
fn admin() -> Actor {
    actor("root", Role::Admin, Some("root_db"))
}
fn viewer() -> Actor {
    actor("vic", Role::Viewer, None)
}

/// Where a test's store lives: a SQLite file in a temp dir, or a control schema of its own
/// in the local PostgreSQL (`PGWARDEN_TEST_STATE_DSN`, default the `test` database),
/// dropped afterwards. Every test of the approvals handle runs on both ([`both!`]).
struct Place {
    dir: tempfile::TempDir,
    pg: Option<PgTarget>,
}

fn test_dsn() -> String {
    std::env::var("PGWARDEN_TEST_STATE_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

impl Place {
    fn sqlite() -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    fn postgres() -> Place {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nonce = jiff::Timestamp::now().as_nanosecond() % 1_000_000_000;
        Place {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(PgTarget {
                dsn: test_dsn(),
                schema: format!("pgwarden_t{}_{n}_{nonce}", std::process::id()),
                instance: "test-instance".into(),
            }),
        }
    }

    /// Runs `sql` on the test database (its own thread: the client blocks) and returns
    /// the first column of the first row, as text.
    fn sql(&self, sql: &str) -> String {
        let sql = sql.to_owned();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&test_dsn(), postgres::NoTls).unwrap();
            c.simple_query(&sql)
                .unwrap()
                .into_iter()
                .find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
                    _ => None,
                })
                .unwrap_or_default()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(t) = &self.pg {
            self.sql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", t.schema));
        }
    }
}

/// Runs one test body on each store: `NAME::sqlite` and `NAME::postgres`.
macro_rules! both {
    ($(#[$m:meta])* async fn $name:ident($place:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($place: Place) $body

            $(#[$m])*
            async fn sqlite() {
                run(Place::sqlite()).await
            }

            $(#[$m])*
            async fn postgres() {
                run(Place::postgres()).await
            }
        }
    };
}

async fn open(place: &Place) -> (Approvals, broadcast::Receiver<Arc<Emitted>>) {
    let sink = EventSink::new();
    let rx = sink.subscribe();
    let (dir, pg) = (place.dir.path().to_owned(), place.pg.clone());
    let a = tokio::task::spawn_blocking(move || {
        let store: Box<dyn Store> = match pg {
            None => Box::new(SqliteStore::open(&dir).unwrap()),
            Some(t) => Box::new(PgStore::open(t).unwrap()),
        };
        Approvals::on_tokio_clock(store, sink).unwrap()
    })
    .await
    .unwrap();
    (a, rx)
}

fn kinds(rx: &mut broadcast::Receiver<Arc<Emitted>>) -> Vec<&'static str> {
    let mut out = vec![];
    while let Ok(e) = rx.try_recv() {
        out.push(e.event.kind());
    }
    out
}

fn new_ticket(title: &str) -> NewTicket {
    NewTicket {
        title: title.into(),
        ..NewTicket::default()
    }
}

fn new_hold(user: &str, required: u32, timeout: Duration) -> NewHold {
    NewHold {
        sql: "DROP TABLE orders".into(),
        user: user.into(),
        database: "shop".into(),
        client_addr: Some("10.0.0.1".into()),
        application_name: "psql".into(),
        rules: vec![HeldRule {
            id: "ddl.drop-table".into(),
            message: "dropping a table".into(),
            hint: None,
        }],
        approvals_required: required,
        approver_groups: vec![],
        timeout,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

struct Stmt {
    rules: Vec<String>,
    tags: Vec<String>,
    objects: Vec<String>,
    fingerprints: Vec<String>,
}

fn stmt() -> Stmt {
    Stmt {
        rules: vec!["ddl.drop-column".into()],
        tags: vec!["ALTER TABLE".into()],
        objects: vec!["public.orders".into()],
        fingerprints: vec!["fp".into()],
    }
}

fn presented(s: &Stmt, now: jiff::Timestamp) -> Presented<'_> {
    Presented {
        environment: "prod",
        database: "shop",
        user: "deploy",
        rules: &s.rules,
        tags: &s.tags,
        objects: &s.objects,
        fingerprints: &s.fingerprints,
        now,
    }
}

fn refused(r: Result<impl std::fmt::Debug>) -> Refused {
    match r {
        Err(ApprovalError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

both! {
    #[tokio::test]
    async fn tickets_need_every_approval_from_distinct_approvers(place) {
        let (a, mut rx) = open(&place).await;
        let t = a
            .create_ticket(
                NewTicket {
                    approvals_required: Some(2),
                    ..new_ticket("drop the old column")
                },
                &alice(),
            )
            .await
            .unwrap();
        assert_eq!(t.id, "CHG-1");
        assert_eq!(t.status, TicketStatus::Pending);
        assert_eq!(t.requester.token.as_deref(), Some("alice"));

        let t = a
            .approve_ticket("CHG-1", &bob(), Some("ok".into()))
            .await
            .unwrap();
        assert_eq!((t.status, t.approvals.len()), (TicketStatus::Pending, 1));
        // The same approver again, or another token of the same database user: not distinct.
        let again = a.approve_ticket("CHG-1", &bob(), None).await;
        assert!(matches!(refused(again), Refused::Conflict(_)));
        let bob2 = actor("bob-ci", Role::Approver, Some("bob_db"));
        assert!(matches!(
            refused(a.approve_ticket("CHG-1", &bob2, None).await),
            Refused::Conflict(_)
        ));

        let t = a.approve_ticket("CHG-1", &carol(), None).await.unwrap();
        assert_eq!(t.status, TicketStatus::Approved);
        assert_eq!(t.approvals[0].comment.as_deref(), Some("ok"));
        // Approved is final for approving.
        let more = a.approve_ticket("CHG-1", &admin(), None).await;
        assert!(matches!(refused(more), Refused::Conflict(_)));
        assert_eq!(
            kinds(&mut rx),
            ["ticket_created", "ticket_approved", "ticket_approved"]
        );

        let second = a.create_ticket(new_ticket("next"), &bob()).await.unwrap();
        assert_eq!(second.id, "CHG-2");
        assert_eq!(a.tickets().await.unwrap().len(), 2);
    }
}

both! {
    #[tokio::test]
    async fn creating_tickets_validates_and_refuses_taken_ids(place) {
        let (a, _rx) = open(&place).await;
        let given = NewTicket {
            id: Some("CHG-1".into()),
            ..new_ticket("given")
        };
        a.create_ticket(given.clone(), &alice()).await.unwrap();
        assert!(matches!(
            refused(a.create_ticket(given, &bob()).await),
            Refused::Conflict(_)
        ));
        // A generated id skips one given by hand.
        assert_eq!(
            a.create_ticket(new_ticket("g"), &alice()).await.unwrap().id,
            "CHG-2"
        );

        for bad in ["", "has space", "ü", &"x".repeat(65)] {
            let n = NewTicket {
                id: Some(bad.into()),
                ..new_ticket("t")
            };
            assert!(
                matches!(
                    refused(a.create_ticket(n, &alice()).await),
                    Refused::Invalid(_)
                ),
                "{bad:?}"
            );
        }
        let ok = NewTicket {
            id: Some("ops_2024.1-a".into()),
            ..new_ticket("t")
        };
        a.create_ticket(ok, &alice()).await.unwrap();

        let zero = NewTicket {
            approvals_required: Some(0),
            scope: Scope {
                tags: vec!["a[".into()],
                ..Scope::default()
            },
            ..new_ticket("")
        };
        let Refused::Invalid(msg) = refused(a.create_ticket(zero, &alice()).await) else {
            panic!("not invalid")
        };
        assert!(
            msg.contains("title") && msg.contains("approvals_required") && msg.contains("scope.tags"),
            "{msg}"
        );
        assert!(matches!(
            refused(a.create_ticket(new_ticket("t"), &viewer()).await),
            Refused::Forbidden(_)
        ));
    }
}

both! {
    #[tokio::test]
    async fn self_approval_is_refused_by_token_and_by_database_user(place) {
        let (a, _rx) = open(&place).await;
        a.create_ticket(new_ticket("mine"), &alice()).await.unwrap();
        assert!(matches!(
            refused(a.approve_ticket("CHG-1", &alice(), None).await),
            Refused::Conflict(_)
        ));
        let same_db_user = actor("alice-admin", Role::Admin, Some("alice_db"));
        assert!(matches!(
            refused(a.approve_ticket("CHG-1", &same_db_user, None).await),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            refused(a.reject_ticket("CHG-1", &alice(), "no".into()).await),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            refused(a.approve_ticket("CHG-1", &viewer(), None).await),
            Refused::Forbidden(_)
        ));
        assert!(matches!(
            refused(a.approve_ticket("CHG-9", &bob(), None).await),
            Refused::NotFound(_)
        ));

        // A hold's requester is its database user.
        let g = a.open_hold(new_hold("bob_db", 1, HOUR)).await.unwrap();
        assert!(matches!(
            refused(a.approve_hold(g.id(), &bob(), None).await),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            refused(a.deny_hold(g.id(), &bob(), "no".into()).await),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            refused(a.approve_hold(g.id(), &viewer(), None).await),
            Refused::Forbidden(_)
        ));
        assert_eq!(
            a.approve_hold(g.id(), &carol(), None).await.unwrap().status,
            HoldStatus::Approved
        );
    }
}

fn conflict(r: Result<impl std::fmt::Debug>) -> bool {
    matches!(refused(r), Refused::Conflict(_))
}

both! {
    #[tokio::test]
    async fn a_token_named_like_the_database_user_is_the_requester(place) {
        let (a, _rx) = open(&place).await;

        // A hold of database user `root`: token `root` (no db_user) may not decide it.
        let g = a.open_hold(new_hold("root", 2, HOUR)).await.unwrap();
        let root = actor("root", Role::Admin, None);
        assert!(conflict(a.approve_hold(g.id(), &root, None).await));
        assert!(conflict(a.deny_hold(g.id(), &root, "no".into()).await));
        // Nor a token with that db_user (as before).
        let ops = actor("ops", Role::Approver, Some("root"));
        assert!(conflict(a.approve_hold(g.id(), &ops, None).await));
        // Distinct approvers: token `bob` and a token named after bob's database user are one.
        let h = a.approve_hold(g.id(), &bob(), None).await.unwrap();
        assert_eq!((h.status, h.approvals.len()), (HoldStatus::Pending, 1));
        let bob_db = actor("bob_db", Role::Approver, None);
        assert!(conflict(a.approve_hold(g.id(), &bob_db, None).await));
        let h = a.approve_hold(g.id(), &carol(), None).await.unwrap();
        assert_eq!(h.status, HoldStatus::Approved);

        // A ticket of token alice (database user alice_db): the same token name, a token named
        // alice_db, or a token with db_user alice_db is alice.
        a.create_ticket(new_ticket("mine"), &alice()).await.unwrap();
        let alice_admin = actor("alice", Role::Admin, Some("other_db"));
        assert!(conflict(
            a.approve_ticket("CHG-1", &alice_admin, None).await
        ));
        let alice_db = actor("alice_db", Role::Approver, None);
        assert!(conflict(a.approve_ticket("CHG-1", &alice_db, None).await));
        assert!(conflict(
            a.reject_ticket("CHG-1", &alice_db, "no".into()).await
        ));
        let linked = actor("a2", Role::Approver, Some("alice_db"));
        assert!(conflict(a.approve_ticket("CHG-1", &linked, None).await));
        // A ticket of token `deploy` (no db_user): a token whose db_user is `deploy` is deploy.
        let deploy = actor("deploy", Role::Approver, None);
        a.create_ticket(new_ticket("ci"), &deploy).await.unwrap();
        let as_deploy = actor("d2", Role::Approver, Some("deploy"));
        assert!(conflict(a.approve_ticket("CHG-2", &as_deploy, None).await));
        // Anyone else may.
        let t = a.approve_ticket("CHG-1", &bob(), None).await.unwrap();
        assert_eq!(t.status, TicketStatus::Approved);
        let t = a.approve_ticket("CHG-2", &carol(), None).await.unwrap();
        assert_eq!(t.status, TicketStatus::Approved);

        // A break-glass use of database user alice_db: token alice_db may not review it.
        let r = a
            .record_break_glass(NewReview {
                user: "alice_db".into(),
                database: "shop".into(),
                client_addr: None,
                reason: "outage".into(),
                sql: "DELETE FROM locks".into(),
                rules: vec![],
            })
            .await
            .unwrap();
        assert!(conflict(a.mark_reviewed(r.id, &alice_db, None).await));
        assert!(a.mark_reviewed(r.id, &carol(), None).await.is_ok());
    }
}

both! {
    #[tokio::test]
    async fn approver_groups_are_required_when_given(place) {
        let (a, _rx) = open(&place).await;
        let n = NewTicket {
            approver_groups: vec!["dba".into()],
            ..new_ticket("t")
        };
        a.create_ticket(n, &alice()).await.unwrap();
        assert!(matches!(
            refused(a.approve_ticket("CHG-1", &bob(), None).await),
            Refused::Forbidden(_)
        ));
        let dba = Actor {
            groups: vec!["dba".into()],
            ..carol()
        };
        assert_eq!(
            a.approve_ticket("CHG-1", &dba, None).await.unwrap().status,
            TicketStatus::Approved
        );
    }
}

both! {
    #[tokio::test]
    async fn reject_and_revoke_end_tickets(place) {
        let (a, mut rx) = open(&place).await;
        a.create_ticket(new_ticket("one"), &alice()).await.unwrap();
        a.create_ticket(new_ticket("two"), &alice()).await.unwrap();

        assert!(matches!(
            refused(a.reject_ticket("CHG-1", &bob(), " ".into()).await),
            Refused::Invalid(_)
        ));
        let t = a
            .reject_ticket("CHG-1", &bob(), "too risky".into())
            .await
            .unwrap();
        assert_eq!(t.status, TicketStatus::Rejected);
        assert_eq!(
            (t.closed_by.as_deref(), t.reason.as_deref()),
            (Some("bob"), Some("too risky"))
        );
        assert!(matches!(
            refused(a.approve_ticket("CHG-1", &carol(), None).await),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            refused(a.revoke_ticket("CHG-1", &admin(), "x".into()).await),
            Refused::Conflict(_)
        ));

        a.approve_ticket("CHG-2", &bob(), None).await.unwrap();
        assert!(matches!(
            refused(a.revoke_ticket("CHG-2", &bob(), "x".into()).await),
            Refused::Forbidden(_)
        ));
        let t = a
            .revoke_ticket("CHG-2", &admin(), "incident".into())
            .await
            .unwrap();
        assert_eq!(t.status, TicketStatus::Revoked);
        let s = stmt();
        let used = a.use_ticket("CHG-2", &presented(&s, a.now())).await;
        assert!(matches!(
            used,
            Err(UseError::Uncovered(Uncovered::Status(
                TicketStatus::Revoked
            )))
        ));
        assert_eq!(
            kinds(&mut rx),
            [
                "ticket_created",
                "ticket_created",
                "ticket_rejected",
                "ticket_approved",
                "ticket_revoked"
            ]
        );
    }
}

both! {
    #[tokio::test]
    async fn uses_are_counted_until_used_up_and_checks_count_nothing(place) {
        let (a, mut rx) = open(&place).await;
        let n = NewTicket {
            max_uses: Some(2),
            scope: Scope {
                objects: vec!["public.orders".into()],
                ..Scope::default()
            },
            ..new_ticket("t")
        };
        a.create_ticket(n, &alice()).await.unwrap();
        let s = stmt();
        let p = presented(&s, a.now());
        assert!(matches!(
            a.use_ticket("CHG-1", &p).await,
            Err(UseError::Uncovered(Uncovered::Status(
                TicketStatus::Pending
            )))
        ));
        a.approve_ticket("CHG-1", &bob(), None).await.unwrap();
        kinds(&mut rx);

        assert_eq!(a.check_ticket("CHG-1", &p).await.unwrap().uses, 0);
        assert_eq!(
            a.use_ticket_in_session("CHG-1", 7, &p).await.unwrap().uses,
            1
        );
        assert_eq!(a.use_ticket("CHG-1", &p).await.unwrap().uses, 2);
        let e = a.use_ticket("CHG-1", &p).await.unwrap_err();
        assert!(matches!(
            e,
            UseError::Uncovered(Uncovered::UsedUp { uses: 2, max: 2 })
        ));
        assert_eq!(e.to_string(), "it is used up (2 of 2 uses)");
        assert!(matches!(
            a.check_ticket("CHG-1", &p).await,
            Err(UseError::Uncovered(Uncovered::UsedUp { .. }))
        ));
        assert_eq!(a.ticket("CHG-1").await.unwrap().unwrap().uses, 2);

        let mut sessions = vec![];
        while let Ok(e) = rx.try_recv() {
            match &e.event {
                Event::TicketUsed { session, .. } => sessions.push(*session),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sessions, [7, 0]);

        let other = Stmt {
            objects: vec!["public.users".into()],
            ..stmt()
        };
        a.create_ticket(
            NewTicket {
                scope: Scope {
                    objects: vec!["public.orders".into()],
                    ..Scope::default()
                },
                ..new_ticket("u")
            },
            &alice(),
        )
        .await
        .unwrap();
        a.approve_ticket("CHG-2", &bob(), None).await.unwrap();
        assert!(matches!(
            a.use_ticket("CHG-2", &presented(&other, a.now())).await,
            Err(UseError::Uncovered(Uncovered::OutOfScope {
                part: "object",
                ..
            }))
        ));
        assert_eq!(a.ticket("CHG-2").await.unwrap().unwrap().uses, 0);
        assert!(matches!(
            a.use_ticket("nope", &p).await,
            Err(UseError::Uncovered(Uncovered::Unknown))
        ));
    }
}

both! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_uses_never_exceed_max_uses(place) {
        let (a, _rx) = open(&place).await;
        let n = NewTicket {
            max_uses: Some(5),
            ..new_ticket("t")
        };
        a.create_ticket(n, &alice()).await.unwrap();
        a.approve_ticket("CHG-1", &bob(), None).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let s = stmt();
                    a.use_ticket("CHG-1", &presented(&s, a.now())).await.is_ok()
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(ok, 5);
        assert_eq!(a.ticket("CHG-1").await.unwrap().unwrap().uses, 5);
    }
}

both! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_racing_approvals_of_a_one_approval_hold_have_one_winner(place) {
        let (a, mut rx) = open(&place).await;
        for _ in 0..10 {
            let mut g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
            let id = g.id();
            let (a1, a2) = (a.clone(), a.clone());
            let t1 = tokio::spawn(async move { a1.approve_hold(id, &bob(), None).await });
            let t2 = tokio::spawn(async move { a2.approve_hold(id, &carol(), None).await });
            let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
            assert!(r1.is_ok() != r2.is_ok(), "{r1:?} {r2:?}");
            let loser = if r1.is_ok() { r2 } else { r1 };
            assert!(matches!(refused(loser), Refused::Conflict(_)));
            let h = g.ended().await;
            assert_eq!((h.status, h.approvals.len()), (HoldStatus::Approved, 1));
        }
        let k = kinds(&mut rx);
        assert_eq!(k.iter().filter(|k| **k == "hold_approved").count(), 10);
    }
}

#[test]
fn two_processes_racing_on_one_file_have_one_winner() {
    // Two stores (two connections, as two processes would have) on the same file: the
    // BEGIN IMMEDIATE transaction is what decides.
    let dir = tempfile::tempdir().unwrap();
    let s1 = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let s2 = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let now = jiff::Timestamp::now();
    for _ in 0..10 {
        let h = s1
            .insert_hold(lifecycle::new_hold(new_hold("dev", 1, HOUR), now))
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let race = |s: Arc<SqliteStore>, by: Actor| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                s.update_hold(h.id, &mut |h| lifecycle::approve_hold(h, &by, None, now))
            })
        };
        let t1 = race(s1.clone(), bob());
        let t2 = race(s2.clone(), carol());
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        assert!(r1.is_ok() != r2.is_ok(), "{r1:?} {r2:?}");
        let stored = s1.hold(h.id).unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.approvals.len()),
            (HoldStatus::Approved, 1)
        );
    }
}

both! {
    #[tokio::test]
    async fn ended_resolves_on_approval_and_sees_partial_approvals(place) {
        let (a, mut rx) = open(&place).await;
        let mut g = a.open_hold(new_hold("dev", 2, HOUR)).await.unwrap();
        assert_eq!(g.hold().status, HoldStatus::Pending);
        let id = g.id();
        let approver = a.clone();
        let approving = tokio::spawn(async move {
            approver.approve_hold(id, &bob(), None).await.unwrap();
            approver
                .approve_hold(id, &carol(), Some("go".into()))
                .await
                .unwrap()
        });
        let h = g.ended().await;
        assert_eq!(h.status, HoldStatus::Approved);
        assert_eq!(h.approvals.len(), 2);
        assert_eq!(h.closed_by.as_deref(), Some("carol"));
        assert_eq!(approving.await.unwrap(), h);
        assert_eq!(a.hold(id).await.unwrap().unwrap(), h);
        // Ending states are final.
        assert!(matches!(
            refused(a.deny_hold(id, &admin(), "late".into()).await),
            Refused::Conflict(_)
        ));
        drop(g);
        assert_eq!(
            a.hold(id).await.unwrap().unwrap().status,
            HoldStatus::Approved
        );
        assert_eq!(
            kinds(&mut rx),
            ["hold_opened", "hold_approved", "hold_approved"]
        );
    }
}

both! {
    #[tokio::test(start_paused = true)]
    async fn ended_is_cancel_safe(place) {
        let (a, _rx) = open(&place).await;
        let mut g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
        for _ in 0..3 {
            tokio::select! {
                h = g.ended() => panic!("ended early: {h:?}"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let h = a.deny_hold(g.id(), &bob(), "not now".into()).await.unwrap();
        assert_eq!(g.ended().await, h);
        assert_eq!(g.ended().await.status, HoldStatus::Denied);
        assert_eq!(h.reason.as_deref(), Some("not now"));
    }
}

both! {
    #[tokio::test]
    async fn revoking_a_hold_is_for_admins(place) {
        let (a, _rx) = open(&place).await;
        let mut g = a.open_hold(new_hold("root_db", 1, HOUR)).await.unwrap();
        assert!(matches!(
            refused(a.revoke_hold(g.id(), &bob(), "x".into()).await),
            Refused::Forbidden(_)
        ));
        // An admin may stop their own held statement.
        a.revoke_hold(g.id(), &admin(), "wrong database".into())
            .await
            .unwrap();
        assert_eq!(g.ended().await.status, HoldStatus::Denied);
        assert!(matches!(
            refused(a.approve_hold(99, &bob(), None).await),
            Refused::NotFound(_)
        ));
        assert!(a.hold(99).await.unwrap().is_none());
    }
}

both! {
    #[tokio::test]
    async fn dropping_a_pending_guard_withdraws_the_hold(place) {
        let (a, mut rx) = open(&place).await;
        let g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
        let id = g.id();
        drop(g);
        let h = a.hold(id).await.unwrap().unwrap();
        assert_eq!(h.status, HoldStatus::Withdrawn);
        assert_eq!(h.reason.as_deref(), Some(DISCONNECTED));
        assert_eq!(h.closed_by.as_deref(), Some("pgwarden"));
        assert_eq!(kinds(&mut rx), ["hold_opened", "hold_withdrawn"]);
        assert!(matches!(
            refused(a.approve_hold(id, &bob(), None).await),
            Refused::Conflict(_)
        ));
        assert!(a.holds(Some(HoldStatus::Pending)).await.unwrap().is_empty());
    }
}

both! {
    #[tokio::test]
    async fn withdraw_returns_the_final_hold(place) {
        let (a, mut rx) = open(&place).await;
        let g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
        let h = g.withdraw("cancel request").await;
        assert_eq!(
            (h.status, h.reason.as_deref()),
            (HoldStatus::Withdrawn, Some("cancel request"))
        );

        let g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
        a.approve_hold(g.id(), &bob(), None).await.unwrap();
        assert_eq!(g.withdraw("too late").await.status, HoldStatus::Approved);
        assert_eq!(
            kinds(&mut rx),
            [
                "hold_opened",
                "hold_withdrawn",
                "hold_opened",
                "hold_approved"
            ]
        );
        assert_eq!(a.holds(None).await.unwrap().len(), 2);
    }
}

both! {
    #[tokio::test(start_paused = true)]
    async fn a_hold_nobody_decides_expires_at_its_timeout(place) {
        let (a, mut rx) = open(&place).await;
        let expiry = a.spawn_expiry();
        let opened = tokio::time::Instant::now();
        let mut g = a
            .open_hold(new_hold("dev", 1, Duration::from_secs(600)))
            .await
            .unwrap();
        let mut other = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
        let h = g.ended().await;
        assert_eq!(h.status, HoldStatus::Expired);
        assert!(opened.elapsed() >= Duration::from_secs(600));
        assert!(h.closed_at.unwrap() >= h.expires_at);
        assert_eq!(other.hold().status, HoldStatus::Pending);
        assert!(matches!(
            refused(a.approve_hold(h.id, &bob(), None).await),
            Refused::Conflict(_)
        ));
        assert_eq!(other.ended().await.status, HoldStatus::Expired);
        assert_eq!(
            kinds(&mut rx),
            ["hold_opened", "hold_opened", "hold_expired", "hold_expired"]
        );
        drop((g, other));
        drop(a);
        // The task ends with the last handle.
        expiry.await.unwrap();
    }
}

both! {
    #[tokio::test(start_paused = true)]
    async fn tickets_expire_at_valid_until_and_cover_nothing_after_it(place) {
        let (a, mut rx) = open(&place).await;
        let _expiry = a.spawn_expiry();
        let until = lifecycle::after(a.now(), 2 * HOUR);
        let n = NewTicket {
            valid_until: Some(until),
            ..new_ticket("t")
        };
        a.create_ticket(n, &alice()).await.unwrap();
        a.approve_ticket("CHG-1", &bob(), None).await.unwrap();
        let s = stmt();
        // Past valid_until, before the task has run: expired all the same.
        let later = lifecycle::after(until, Duration::from_secs(1));
        assert!(matches!(
            a.check_ticket("CHG-1", &presented(&s, later)).await,
            Err(UseError::Uncovered(Uncovered::Expired(t))) if t == until
        ));
        loop {
            let e = rx.recv().await.unwrap();
            if let Event::TicketExpired { ticket } = &e.event {
                assert_eq!(ticket.status, TicketStatus::Expired);
                break;
            }
        }
        assert!(a.now() >= until);
        let t = a.ticket("CHG-1").await.unwrap().unwrap();
        assert_eq!(t.status, TicketStatus::Expired);
        assert!(matches!(
            refused(a.revoke_ticket("CHG-1", &admin(), "x".into()).await),
            Refused::Conflict(_)
        ));
        let past = NewTicket {
            valid_until: Some(lifecycle::after(jiff::Timestamp::UNIX_EPOCH, HOUR)),
            ..new_ticket("t")
        };
        assert!(matches!(
            refused(a.create_ticket(past, &alice()).await),
            Refused::Invalid(_)
        ));
    }
}

both! {
    #[tokio::test]
    async fn a_reopened_store_keeps_tickets_and_withdraws_holds_left_pending(place) {
        let (first_hold, t) = {
            let (a, _rx) = open(&place).await;
            let n = NewTicket {
                approvals_required: Some(2),
                max_uses: Some(3),
                scope: Scope {
                    databases: vec!["shop".into()],
                    ..Scope::default()
                },
                ..new_ticket("t")
            };
            a.create_ticket(n, &alice()).await.unwrap();
            a.approve_ticket("CHG-1", &bob(), None).await.unwrap();
            let t = a.approve_ticket("CHG-1", &carol(), None).await.unwrap();
            let s = stmt();
            a.use_ticket("CHG-1", &presented(&s, a.now()))
                .await
                .unwrap();
            let g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
            let id = g.id();
            // The process dies with the session still waiting: no guard drop runs.
            std::mem::forget(g);
            (id, t)
        };
        let (a, mut rx) = open(&place).await;
        let e = rx.try_recv().unwrap();
        let Event::HoldWithdrawn { hold } = &e.event else {
            panic!("{e:?}")
        };
        assert_eq!(
            (hold.id, hold.reason.as_deref()),
            (first_hold, Some(RESTARTED))
        );
        let stored = a.ticket("CHG-1").await.unwrap().unwrap();
        assert_eq!(stored, Ticket { uses: 1, ..t });
        assert_eq!(
            a.hold(first_hold).await.unwrap().unwrap().status,
            HoldStatus::Withdrawn
        );
        // Ids are never reused, and generated ticket numbers go on.
        let g = a.open_hold(new_hold("dev", 1, HOUR)).await.unwrap();
        assert!(g.id() > first_hold);
        assert_eq!(
            a.create_ticket(new_ticket("n"), &alice()).await.unwrap().id,
            "CHG-2"
        );
        if place.pg.is_none() {
            assert!(place.dir.path().join("pgwarden.db").exists());
        }
    }
}

#[tokio::test]
async fn the_state_dir_is_created_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let s = SqliteStore::open(&nested).unwrap();
    assert!(s.path().ends_with("a/b/pgwarden.db"));
    drop(s);
    let c = rusqlite::Connection::open(nested.join("pgwarden.db")).unwrap();
    c.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(c);
    let e = Approvals::open(&nested, EventSink::new()).unwrap_err();
    assert!(
        matches!(&e, ApprovalError::Store(m) if m.contains("schema version 99")),
        "{e}"
    );
}

#[tokio::test]
async fn the_control_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let place = Place::postgres();
    let target = place.pg.clone().unwrap();
    // Two instances starting together: one migrates, the other finds it done.
    let (t1, t2) = (target.clone(), target.clone());
    let a = std::thread::spawn(move || PgStore::open(t1).map(drop));
    let b = std::thread::spawn(move || PgStore::open(t2).map(drop));
    a.join().unwrap().unwrap();
    b.join().unwrap().unwrap();
    let versions = place.sql(&format!(
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM {}.schema_migrations",
        target.schema
    ));
    let known = store::MIGRATIONS.last().unwrap().0;
    assert_eq!(
        versions,
        (1..=known)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    place.sql(&format!(
        "INSERT INTO {}.schema_migrations (version, description) VALUES (99, 'future')",
        target.schema
    ));
    let e = tokio::task::spawn_blocking(move || Approvals::open_postgres(target, EventSink::new()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, ApprovalError::Store(m) if m.contains("schema version 99")),
        "{e}"
    );
}

both! {
    #[tokio::test]
    async fn break_glass_uses_are_reviewed_once_by_someone_else(place) {
        let (a, mut rx) = open(&place).await;
        let r = a
            .record_break_glass(NewReview {
                user: "alice_db".into(),
                database: "shop".into(),
                client_addr: None,
                reason: "outage".into(),
                sql: "DELETE FROM locks".into(),
                rules: vec!["dml.delete-all".into()],
            })
            .await
            .unwrap();
        assert_eq!(kinds(&mut rx), ["break_glass_used"]);
        assert_eq!(a.reviews(true).await.unwrap(), std::slice::from_ref(&r));
        assert!(matches!(
            refused(a.mark_reviewed(r.id, &alice(), None).await),
            Refused::Conflict(_)
        ));
        assert!(matches!(
            refused(a.mark_reviewed(r.id, &viewer(), None).await),
            Refused::Forbidden(_)
        ));
        let done = a
            .mark_reviewed(r.id, &bob(), Some("fine".into()))
            .await
            .unwrap();
        assert_eq!(
            (done.reviewed_by.as_deref(), done.comment.as_deref()),
            (Some("bob"), Some("fine"))
        );
        assert!(matches!(
            refused(a.mark_reviewed(r.id, &carol(), None).await),
            Refused::Conflict(_)
        ));
        assert!(a.reviews(true).await.unwrap().is_empty());
        assert_eq!(a.reviews(false).await.unwrap(), [done]);
        assert!(matches!(
            refused(a.mark_reviewed(42, &bob(), None).await),
            Refused::NotFound(_)
        ));
    }
}

#[test]
fn refusals_map_to_http_statuses() {
    let codes: Vec<u16> = [
        ApprovalError::Refused(Refused::NotFound("x".into())),
        ApprovalError::Refused(Refused::Forbidden("x".into())),
        ApprovalError::Refused(Refused::Conflict("x".into())),
        ApprovalError::Refused(Refused::Invalid("x".into())),
        ApprovalError::Store("x".into()),
    ]
    .iter()
    .map(ApprovalError::http_status)
    .collect();
    assert_eq!(codes, [404, 403, 409, 400, 500]);
}
