//! The ledger on its own: inspections of forwarded statements in, ReadyForQuery numbers in,
//! the session facts decisions read out.

use super::*;
use crate::sql::{inspect, ReadAs};

fn ins(sql: &str) -> Arc<Inspection> {
    Arc::new(inspect(sql, ReadAs::default()))
}

/// A fresh session whose startup ReadyForQuery (number 1) has arrived.
fn ledger() -> Ledger {
    let mut l = Ledger::new(None, false, Default::default());
    l.on_ready(false, TxStatus::Idle, 1);
    l
}

/// Forwards `sql` as its own batch (ended by ReadyForQuery `n`) that ends as `failed`, `tx`.
fn batch(l: &mut Ledger, sql: &str, n: u64, failed: bool, tx: TxStatus) {
    l.remember(&ins(sql), n);
    l.on_ready(failed, tx, n);
}

#[test]
fn a_created_table_counts_once_its_batch_succeeded() {
    let mut l = ledger();
    l.remember(&ins("CREATE TABLE t (id int)"), 2);
    assert!(!l.created().contains("t"), "not before its batch ends");
    l.on_ready(false, TxStatus::Idle, 2);
    assert!(l.created().contains("t"));
    batch(&mut l, "CREATE TABLE u (id int)", 3, true, TxStatus::Idle);
    assert!(!l.created().contains("u"), "a failed batch created nothing");
}

#[test]
fn creations_in_a_transaction_count_when_it_commits_and_go_when_it_rolls_back() {
    let mut l = ledger();
    batch(&mut l, "BEGIN", 2, false, TxStatus::InBlock);
    batch(
        &mut l,
        "CREATE TABLE t (id int)",
        3,
        false,
        TxStatus::InBlock,
    );
    assert!(l.created().contains("t"), "seen inside its transaction");
    batch(&mut l, "COMMIT", 4, false, TxStatus::Idle);
    assert!(l.created().contains("t"));

    batch(&mut l, "BEGIN", 5, false, TxStatus::InBlock);
    batch(
        &mut l,
        "CREATE TABLE r (id int)",
        6,
        false,
        TxStatus::InBlock,
    );
    batch(&mut l, "ROLLBACK", 7, false, TxStatus::Idle);
    assert!(!l.created().contains("r"));
    assert!(l.created().contains("t"));
}

#[test]
fn a_batch_ending_later_does_not_count_early() {
    let mut l = ledger();
    // Pipelined: the creation's batch ends with ReadyForQuery 3, after another batch (2).
    l.remember(&ins("CREATE TABLE t (id int)"), 3);
    l.on_ready(false, TxStatus::Idle, 2);
    assert!(!l.created().contains("t"));
    l.on_ready(false, TxStatus::Idle, 3);
    assert!(l.created().contains("t"));
}

#[test]
fn drop_rename_and_search_path_forget_creations() {
    let mut l = ledger();
    batch(
        &mut l,
        "CREATE TABLE a (id int); CREATE TABLE public.b (id int); CREATE TABLE c (id int)",
        2,
        false,
        TxStatus::Idle,
    );
    batch(
        &mut l,
        "CREATE INDEX c_i ON c (id)",
        3,
        false,
        TxStatus::Idle,
    );
    assert!(
        l.created().contains("c_i"),
        "an index on a new table is new"
    );
    batch(&mut l, "DROP TABLE a", 4, false, TxStatus::Idle);
    assert!(!l.created().contains("a"));
    batch(&mut l, "DROP TABLE c", 5, false, TxStatus::Idle);
    assert!(!l.created().contains("c_i"), "indexes go with their table");
    batch(&mut l, "CREATE TABLE d (id int)", 6, false, TxStatus::Idle);
    batch(&mut l, "SET search_path = other", 7, false, TxStatus::Idle);
    assert!(
        !l.created().contains("d"),
        "an unqualified name may mean another table now"
    );
    assert!(
        l.created().contains("public.b"),
        "a qualified one still means the same"
    );
    assert_eq!(l.search_path(), Some("other"));
}

#[test]
fn settings_stand_when_committed_and_are_undone_otherwise() {
    let mut l = ledger();
    batch(
        &mut l,
        "SET pgwarden.ticket = 'CHG-1'",
        2,
        false,
        TxStatus::Idle,
    );
    assert_eq!(l.ticket(), Some("CHG-1"));
    // A SET in a batch that fails is undone by the server.
    batch(
        &mut l,
        "SET pgwarden.ticket = 'CHG-2'; SELECT 1/0",
        3,
        true,
        TxStatus::Idle,
    );
    assert_eq!(l.ticket(), Some("CHG-1"));
    // And in a transaction rolled back.
    batch(&mut l, "BEGIN", 4, false, TxStatus::InBlock);
    batch(
        &mut l,
        "SET pgwarden.break_glass = 'incident'",
        5,
        false,
        TxStatus::InBlock,
    );
    assert_eq!(
        l.break_glass(),
        Some("incident"),
        "in effect inside the transaction"
    );
    batch(&mut l, "ROLLBACK", 6, false, TxStatus::Idle);
    assert_eq!(l.break_glass(), None);
    batch(&mut l, "RESET pgwarden.ticket", 7, false, TxStatus::Idle);
    assert_eq!(l.ticket(), None);
}

#[test]
fn reset_all_and_discard_all_clear_the_ticket_and_break_glass() {
    for clear in ["RESET ALL", "DISCARD ALL"] {
        let mut l = ledger();
        batch(
            &mut l,
            "SET pgwarden.ticket = 'CHG-1'; SET pgwarden.break_glass = 'why'; SET ROLE admin",
            2,
            false,
            TxStatus::Idle,
        );
        assert_eq!(l.role().as_deref(), Some("admin"));
        batch(&mut l, clear, 3, false, TxStatus::Idle);
        assert_eq!(l.ticket(), None, "{clear}");
        assert_eq!(l.break_glass(), None, "{clear}");
        assert_eq!(l.role(), None, "{clear}");
    }
}

#[test]
fn set_local_lasts_until_the_transaction_ends() {
    let mut l = ledger();
    batch(&mut l, "BEGIN", 2, false, TxStatus::InBlock);
    batch(
        &mut l,
        "SET LOCAL lock_timeout = '2s'; SET LOCAL ROLE deployer",
        3,
        false,
        TxStatus::InBlock,
    );
    assert!(l.lock_timeout_set());
    assert_eq!(l.role().as_deref(), Some("deployer"));
    batch(&mut l, "COMMIT", 4, false, TxStatus::Idle);
    assert!(!l.lock_timeout_set());
    assert_eq!(l.role(), None);
    batch(&mut l, "SET lock_timeout = 0", 5, false, TxStatus::Idle);
    assert!(!l.lock_timeout_set(), "0 turns it off");
}

#[test]
fn prepared_statements_are_kept_for_execute_until_deallocated() {
    let mut l = ledger();
    batch(
        &mut l,
        "PREPARE p AS DELETE FROM t",
        2,
        false,
        TxStatus::Idle,
    );
    assert!(l.prepared("p").is_some());
    batch(&mut l, "DEALLOCATE ALL", 3, false, TxStatus::Idle);
    assert!(l.prepared("p").is_none());
}

#[test]
fn a_set_queued_behind_a_failing_batch_survives_its_failure() {
    let mut l = ledger();
    // Pipelined: a batch that will fail (2), then a SET in its own batch (3).
    l.remember(&ins("SELECT 1/0"), 2);
    l.remember(&ins("SET pgwarden.ticket = 'CHG-9'"), 3);
    l.on_ready(true, TxStatus::Idle, 2);
    assert_eq!(
        l.ticket(),
        Some("CHG-9"),
        "the failure was the earlier batch's"
    );
    l.on_ready(false, TxStatus::Idle, 3);
    assert_eq!(l.ticket(), Some("CHG-9"));
}

#[test]
fn a_reset_queued_behind_a_failing_batch_still_ends_break_glass() {
    let mut l = ledger();
    batch(
        &mut l,
        "SET pgwarden.break_glass = 'incident'",
        2,
        false,
        TxStatus::Idle,
    );
    l.remember(&ins("DROP TABLE x"), 3);
    l.remember(&ins("RESET pgwarden.break_glass"), 4);
    l.on_ready(true, TxStatus::Idle, 3);
    assert_eq!(l.break_glass(), None, "the RESET is already on its way");
    l.on_ready(false, TxStatus::Idle, 4);
    assert_eq!(l.break_glass(), None);
}

#[test]
fn a_set_in_a_batch_that_fails_behind_a_good_one_is_undone() {
    let mut l = ledger();
    l.remember(&ins("SET pgwarden.ticket = 'CHG-1'"), 2);
    l.remember(&ins("SET pgwarden.ticket = 'CHG-2'; SELECT 1/0"), 3);
    l.on_ready(false, TxStatus::Idle, 2);
    assert_eq!(
        l.ticket(),
        Some("CHG-2"),
        "still in effect until its batch ends"
    );
    l.on_ready(true, TxStatus::Idle, 3);
    assert_eq!(
        l.ticket(),
        Some("CHG-1"),
        "the failed batch's SET is undone, the first stands"
    );
}

#[test]
fn set_local_ticket_and_break_glass_end_with_their_transaction() {
    let mut l = ledger();
    batch(
        &mut l,
        "SET pgwarden.ticket = 'CHG-1'",
        2,
        false,
        TxStatus::Idle,
    );
    batch(&mut l, "BEGIN", 3, false, TxStatus::InBlock);
    batch(
        &mut l,
        "SET LOCAL pgwarden.ticket = 'CHG-2'; SET LOCAL pgwarden.break_glass = 'why'",
        4,
        false,
        TxStatus::InBlock,
    );
    assert_eq!(l.ticket(), Some("CHG-2"));
    assert_eq!(l.break_glass(), Some("why"));
    batch(&mut l, "COMMIT", 5, false, TxStatus::Idle);
    assert_eq!(l.ticket(), Some("CHG-1"), "the session's ticket again");
    assert_eq!(l.break_glass(), None);
}

#[test]
fn the_encoding_is_known_unless_an_unanswered_statement_may_change_it() {
    let mut l = ledger();
    l.remember(&ins("INSERT INTO t VALUES (1)"), 2);
    assert!(
        l.encoding_known(),
        "a plain insert cannot change client_encoding"
    );
    for risky in [
        "SET client_encoding = 'LATIN1'",
        "SET NAMES 'LATIN1'",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('client_encoding', 'LATIN1', false)",
        "SELECT my_function()",
        "DO $$BEGIN PERFORM 1; END$$",
        "EXECUTE p",
    ] {
        let mut l = ledger();
        l.remember(&ins(risky), 2);
        assert!(!l.encoding_known(), "{risky}");
        l.on_ready(false, TxStatus::Idle, 2);
        assert!(l.encoding_known(), "{risky}: answered");
    }
}

#[test]
fn attaching_or_inheriting_an_old_table_ends_the_parents_exemption() {
    let mut l = ledger();
    batch(
        &mut l,
        "CREATE TABLE np (a int) PARTITION BY LIST (a)",
        2,
        false,
        TxStatus::Idle,
    );
    batch(&mut l, "CREATE TABLE p2 (a int)", 3, false, TxStatus::Idle);
    assert!(l.created().contains("np"));
    let g = l.generation();
    batch(
        &mut l,
        "ALTER TABLE np ATTACH PARTITION old FOR VALUES IN (1)",
        4,
        false,
        TxStatus::Idle,
    );
    assert!(!l.created().contains("np"), "np now owns old data");
    assert!(l.created().contains("p2"));
    assert_ne!(l.generation(), g, "decisions made before are made again");
    batch(
        &mut l,
        "ALTER TABLE old INHERIT p2",
        5,
        false,
        TxStatus::Idle,
    );
    assert!(
        !l.created().contains("p2"),
        "the parent is not named: none stays exempt"
    );
    // CREATE TABLE ... PARTITION OF is a new table, and its parent keeps its standing.
    batch(
        &mut l,
        "CREATE TABLE q (a int) PARTITION BY LIST (a)",
        6,
        false,
        TxStatus::Idle,
    );
    batch(
        &mut l,
        "CREATE TABLE q1 PARTITION OF q FOR VALUES IN (1)",
        7,
        false,
        TxStatus::Idle,
    );
    assert!(l.created().contains("q") && l.created().contains("q1"));
}

#[test]
fn dropping_or_renaming_a_schema_forgets_what_was_created_through_it() {
    let mut l = ledger();
    batch(&mut l, "CREATE TABLE s.t (a int)", 2, false, TxStatus::Idle);
    batch(
        &mut l,
        "CREATE TABLE s2.t (a int)",
        3,
        false,
        TxStatus::Idle,
    );
    batch(&mut l, "CREATE TABLE u (a int)", 4, false, TxStatus::Idle);
    batch(
        &mut l,
        "ALTER SCHEMA s RENAME TO gone",
        5,
        false,
        TxStatus::Idle,
    );
    assert!(!l.created().contains("s.t"));
    assert!(
        !l.created().contains("u"),
        "unqualified names may resolve elsewhere now"
    );
    assert!(l.created().contains("s2.t"));
    batch(&mut l, "DROP SCHEMA s2 CASCADE", 6, false, TxStatus::Idle);
    assert!(!l.created().contains("s2.t"));
    batch(&mut l, "CREATE TABLE v (a int)", 7, false, TxStatus::Idle);
    batch(&mut l, "DROP OWNED BY someone", 8, false, TxStatus::Idle);
    assert!(l.created().is_empty());
}

#[test]
fn names_are_the_names_postgresql_folds_to() {
    let mut l = ledger();
    batch(
        &mut l,
        "CREATE TABLE \"T\" (a int)",
        2,
        false,
        TxStatus::Idle,
    );
    assert!(l.created().contains("T"));
    assert!(
        !l.created().contains("t"),
        "\"T\" and t are different tables"
    );
    batch(
        &mut l,
        "CREATE TABLE MiXed (a int)",
        3,
        false,
        TxStatus::Idle,
    );
    assert!(l.created().contains("mixed"));
}

#[test]
fn an_old_table_renamed_into_a_dropped_creations_name_is_not_exempt() {
    let mut l = ledger();
    batch(&mut l, "CREATE TABLE n (a int)", 2, false, TxStatus::Idle);
    batch(&mut l, "DROP TABLE n", 3, false, TxStatus::Idle);
    batch(
        &mut l,
        "ALTER TABLE old RENAME TO n",
        4,
        false,
        TxStatus::Idle,
    );
    assert!(!l.created().contains("n"));
}

#[test]
fn under_a_one_schema_search_path_both_spellings_name_the_creation() {
    let mut l = ledger();
    batch(&mut l, "SET search_path = app", 2, false, TxStatus::Idle);
    batch(&mut l, "CREATE TABLE t (a int)", 3, false, TxStatus::Idle);
    batch(
        &mut l,
        "CREATE TABLE app.u (a int)",
        4,
        false,
        TxStatus::Idle,
    );
    assert!(l.created().contains("t") && l.created().contains("app.t"));
    assert!(l.created().contains("u") && l.created().contains("app.u"));
    // Dropped under one spelling, gone under both.
    batch(&mut l, "DROP TABLE app.t", 5, false, TxStatus::Idle);
    assert!(!l.created().contains("t") && !l.created().contains("app.t"));
    // Another search_path: the unqualified spelling goes, the qualified one stays.
    batch(
        &mut l,
        "SET search_path = other, public",
        6,
        false,
        TxStatus::Idle,
    );
    assert!(!l.created().contains("u"));
    assert!(l.created().contains("app.u"));
    // No alias when the search_path is not one plain schema.
    batch(&mut l, "CREATE TABLE w (a int)", 7, false, TxStatus::Idle);
    assert!(l.created().contains("w"));
    assert!(!l.created().iter().any(|n| n.ends_with(".w")));
}

/// Regression: ALTER DATABASE/ROLE ... SET changed this session's tracked ticket and role.
#[test]
fn settings_for_other_sessions_do_not_change_this_one() {
    let mut l = ledger();
    batch(
        &mut l,
        "SET pgwarden.ticket = 'CHG-1'",
        2,
        false,
        TxStatus::Idle,
    );
    for (sql, n) in [
        ("ALTER DATABASE test SET pgwarden.ticket = 'CHG-2'", 3),
        ("ALTER ROLE app SET pgwarden.ticket = 'CHG-3'", 4),
        (
            "ALTER ROLE app IN DATABASE test SET pgwarden.ticket = 'CHG-4'",
            5,
        ),
        ("ALTER ROLE app SET role = 'admin'", 6),
    ] {
        batch(&mut l, sql, n, false, TxStatus::Idle);
        assert_eq!(l.ticket(), Some("CHG-1"), "{sql}");
        assert_eq!(l.role(), None, "{sql}");
    }
}
