//! Scenario tests of the session against the mock server, named after what a client does.

use super::sim::{client, login_params, messages, transaction_config, Harness, MockServer};
use super::*;
use crate::protocol::frame::body;
use crate::protocol::{ErrorFields, FrameError, FrameLimits};

fn harness() -> Harness {
    Harness::new(transaction_config(), login_params())
}

fn send(h: &mut Harness, messages: &[Vec<u8>]) {
    h.client_sends(&messages.concat()).unwrap();
}

/// Prepares `name` as `query` in its own transaction and lets the server go back to the pool.
fn prepare(h: &mut Harness, name: &str, query: &str) {
    send(h, &[client::parse(name, query), client::sync()]);
    h.settle().unwrap();
    assert!(!h.session.has_server());
}

#[test]
fn a_query_borrows_a_server_and_idle_ready_for_query_returns_it() {
    let mut h = harness();
    send(&mut h, &[client::query("SELECT 1")]);
    assert!(h.session.has_server());
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "TDCZ");
    assert_eq!((h.attaches, h.releases), (1, 1));
    assert_eq!(h.session.transaction_status(), TransactionStatus::Idle);
}

#[test]
fn a_transaction_block_keeps_its_server_until_commit() {
    let mut h = harness();
    send(&mut h, &[client::query("BEGIN")]);
    h.settle().unwrap();
    assert!(h.session.has_server());
    assert_eq!(h.session.transaction_status(), TransactionStatus::InTransaction);
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.releases, 0);
    send(&mut h, &[client::query("COMMIT")]);
    h.settle().unwrap();
    assert_eq!((h.attaches, h.releases), (1, 1));
}

#[test]
fn pipelined_syncs_release_only_after_the_last_answer() {
    let mut h = harness();
    let batch = [client::parse("", "SELECT 1"), client::bind(""), client::execute(), client::sync()].concat();
    send(&mut h, &[batch.clone(), batch.clone(), batch]);
    // One byte of answers at a time: the harness asserts at release that every Sync was answered.
    for _ in 0..200 {
        h.server_answers(1).unwrap();
    }
    assert_eq!(h.new_tags(), "12DCZ12DCZ12DCZ");
    assert_eq!(h.releases, 1);
}

#[test]
fn parse_of_a_statement_the_server_has_is_answered_by_the_pooler_in_order() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    // Same definition under another client name, pipelined behind a real Parse.
    send(
        &mut h,
        &[
            client::parse("s2", "SELECT 2"),
            client::bind("s2"),
            client::parse("s3", "SELECT 1"),
            client::bind("s3"),
            client::execute(),
            client::sync(),
        ],
    );
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "1212DCZ");
    assert_eq!(h.pool[0].1.statements.len(), 2, "SELECT 1 was not prepared twice");
    assert_eq!(h.bound, vec![b"SELECT 2".to_vec(), b"SELECT 1".to_vec()]);
}

#[test]
fn bind_on_another_server_prepares_the_statement_there_first() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    h.picks.push_back(1); // a new server connection
    send(&mut h, &[client::bind("s1"), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.attaches, 2);
    assert_eq!(h.new_tags(), "2DCZ", "the re-Parse's ParseComplete is not the client's");
    assert_eq!(h.bound, vec![b"SELECT 1".to_vec()]);
}

#[test]
fn describe_on_another_server_prepares_the_statement_there_first() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    h.picks.push_back(1);
    send(&mut h, &[client::describe_statement("s1"), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "tTZ");
}

#[test]
fn close_forgets_the_client_name_and_is_answered_by_the_pooler() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    // No server needed to close.
    send(&mut h, &[client::close_statement("s1"), client::sync()]);
    assert_eq!(h.attaches, 1);
    assert_eq!(h.new_tags(), "3Z");
    assert_eq!(h.session.prepared_statements(), 0);
    // The server keeps it for others; the client's name is gone.
    assert_eq!(h.pool[0].0.prepared_statements(), 1);
    let error = h.client_sends(&client::bind("s1")).unwrap_err();
    assert!(matches!(error, SessionError::UnknownStatement { ref name } if name == "s1"));
    let response = error.to_error_response();
    assert_eq!(ErrorFields::parse(body(&response)).unwrap().code, "26000");
}

#[test]
fn close_inside_a_pipeline_is_answered_in_order() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    send(&mut h, &[client::bind("s1"), client::execute(), client::close_statement("s1"), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "2DC3Z");
}

/// PgBouncer's SHOW STATS counters: client_parse_count counts the client's named Parses,
/// server_parse_count the Parses the pooler sends (a first prepare, a re-prepare on another
/// connection), bind_count the Binds of named statements; unnamed ones are not counted.
#[test]
fn named_statement_work_is_counted_as_pgbouncer_counts_it() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    // The same definition under another name: the server has it, the pooler answers.
    prepare(&mut h, "s2", "SELECT 1");
    send(&mut h, &[client::bind("s1"), client::execute(), client::sync()]);
    h.settle().unwrap();
    // A new server connection lacks the statement: prepared there first.
    h.picks.push_back(1);
    send(&mut h, &[client::bind("s2"), client::execute(), client::sync()]);
    h.settle().unwrap();
    send(&mut h, &[client::parse("", "SELECT 2"), client::bind(""), client::execute(), client::sync()]);
    h.settle().unwrap();
    let counts = h.session.take_prepared_counts();
    assert_eq!(counts, PreparedCounts { client_parse: 2, server_parse: 2, bind: 2 });
    assert!(h.session.take_prepared_counts().is_zero(), "taken once");
}

#[test]
fn unnamed_statements_and_portals_pass_through_untouched() {
    let mut h = harness();
    let parse = client::parse("", "SELECT 1");
    let mut actions = Vec::new();
    h.session.on_client_input(&parse, &mut actions).unwrap();
    assert!(matches!(actions.as_slice(), [Action::NeedServer]));
    actions.clear();
    h.session.attach_server(MockServer::new().state(), &mut actions).unwrap();
    h.session.on_client_input(&parse, &mut actions).unwrap();
    assert!(matches!(actions.as_slice(), [Action::Forward(n)] if *n == parse.len()));
}

#[test]
fn a_full_server_closes_its_least_recently_used_statement() {
    let mut h = Harness::new(SessionConfig { max_prepared_statements: 2, ..transaction_config() }, login_params());
    prepare(&mut h, "a", "SELECT a");
    prepare(&mut h, "b", "SELECT b");
    send(&mut h, &[client::bind("a"), client::execute(), client::sync()]);
    h.settle().unwrap();
    prepare(&mut h, "c", "SELECT c");
    let server = &h.pool[0].1;
    assert_eq!(server.statements.len(), 2);
    assert!(server.statements.values().all(|q| q != b"SELECT b"), "b was the least recently used");
    h.mark();
    send(&mut h, &[client::bind("b"), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "2DCZ");
    assert_eq!(h.pool[0].0.prepared_statements(), 2);
}

/// psycopg's `DEALLOCATE _pg3_N` when its cache evicts a statement: the extended protocol
/// with the unnamed statement, as libpq's PQsendQueryParams sends it. The pooler answers it,
/// without a server connection, and the client's name is gone; the server keeps the
/// statement for the clients that share it.
#[test]
fn a_deallocate_of_a_client_statement_is_answered_by_the_pooler() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    let deallocate = |sql: &str| {
        [client::parse("", sql), client::bind(""), client::describe_portal(), client::execute(), client::sync()]
    };
    send(&mut h, &deallocate("DEALLOCATE s1"));
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12nCZ");
    assert_eq!(h.attaches, 1, "no server connection was needed");
    assert_eq!(h.session.prepared_statements(), 0);
    assert_eq!(h.pool[0].0.prepared_statements(), 1);
    // The next unnamed statement replaces the DEALLOCATE: it goes to a server and is its own.
    h.mark();
    send(&mut h, &[client::parse("", "SELECT 1"), client::bind(""), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12DCZ");
    assert_eq!(h.attaches, 2);
    assert!(matches!(h.client_sends(&client::bind("s1")), Err(SessionError::UnknownStatement { .. })));

    // Inside a transaction (a server attached), DEALLOCATE ALL in the simple protocol: the
    // answers come in order after the server's, and the server's statements stay.
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    prepare(&mut h, "s2", "SELECT 2");
    send(&mut h, &[client::query("BEGIN")]);
    h.settle().unwrap();
    h.mark();
    send(&mut h, &[client::query("deallocate prepare all;")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "CZ");
    let messages = messages(&h.to_client);
    let (_, complete) = &messages[messages.len() - 2];
    assert_eq!(complete, b"DEALLOCATE ALL\0");
    assert_eq!(messages.last().unwrap().1, b"T", "ReadyForQuery in a transaction");
    assert_eq!(h.session.prepared_statements(), 0);
    assert_eq!(h.attached().unwrap().statements.len(), 2, "the server's statements stay");
    send(&mut h, &[client::query("COMMIT")]);
    h.settle().unwrap();

    // A name the pooler does not track (SQL-level PREPARE) is the server's business.
    h.mark();
    let before = h.attaches;
    send(&mut h, &deallocate("DEALLOCATE from_sql"));
    h.settle().unwrap();
    assert_eq!(h.attaches, before + 1, "passed on to a server");
}

/// A DEALLOCATE queued behind a request the server fails is skipped with it, as PostgreSQL
/// skips to Sync: the client's name stays.
#[test]
fn a_deallocate_skipped_after_an_error_keeps_the_name() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    send(
        &mut h,
        &[
            client::parse("s2", "bad query"),
            client::parse("", "DEALLOCATE s1"),
            client::bind(""),
            client::execute(),
            client::sync(),
        ],
    );
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "EZ");
    assert_eq!(h.session.prepared_statements(), 1);
}

#[test]
fn a_failed_parse_leaves_no_name_behind() {
    let mut h = harness();
    send(&mut h, &[client::parse("s1", "bad query"), client::bind("s1"), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "EZ");
    assert_eq!(h.session.prepared_statements(), 0);
    assert_eq!(h.pool[0].0.prepared_statements(), 0);
    assert!(matches!(h.client_sends(&client::bind("s1")), Err(SessionError::UnknownStatement { .. })));
}

#[test]
fn an_error_skips_the_rest_of_the_pipeline_and_its_pooler_answers() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    send(
        &mut h,
        &[
            client::parse("s2", "bad"),
            client::parse("s3", "SELECT 1"), // the server has it: the pooler would answer
            client::close_statement("s1"),   // answered by the pooler too, but skipped
            client::bind("s3"),
            client::execute(),
            client::sync(),
        ],
    );
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "EZ");
    assert!(h.bound.is_empty());
    // As in PostgreSQL: s3 was never defined, s1 never closed.
    assert_eq!(h.session.prepared_statements(), 1);
    send(&mut h, &[client::bind("s1"), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "EZ2DCZ");
}

#[test]
fn discard_all_forgets_every_prepared_statement() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    send(&mut h, &[client::query("DISCARD ALL")]);
    h.settle().unwrap();
    assert_eq!(h.session.prepared_statements(), 0);
    assert_eq!(h.pool[0].0.prepared_statements(), 0);
    // Preparing again sends a real Parse (the mock refuses a duplicate name).
    prepare(&mut h, "s1", "SELECT 1");
    assert_eq!(h.pool[0].1.statements.len(), 1);
}

#[test]
fn client_parameters_follow_it_to_every_server() {
    let mut params = login_params();
    params.set(TrackedParam::ApplicationName, "billing");
    let mut h = Harness::new(transaction_config(), params);
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "TDCZ", "the SET and its answers stay between pooler and server");
    assert_eq!(h.pool[0].1.params["application_name"], "billing");
    assert_eq!(h.pool[0].0.params().get(TrackedParam::ApplicationName), Some("billing"));

    h.mark();
    send(&mut h, &[client::query("SET TimeZone = 'europe/paris'")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "SCZ", "the client sees its own change");
    assert_eq!(h.session.client_params().get(TrackedParam::TimeZone), Some("EUROPE/PARIS"));

    h.picks.push_back(1);
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    let second = &h.pool[1].1;
    assert_eq!(second.params["TimeZone"], "EUROPE/PARIS");
    assert_eq!(second.params["application_name"], "billing");
}

#[test]
fn the_servers_spelling_of_a_value_is_adopted() {
    let mut params = login_params();
    params.set(TrackedParam::TimeZone, "utc");
    let mut h = Harness::new(transaction_config(), params);
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.session.client_params().get(TrackedParam::TimeZone), Some("UTC"));
    // Nothing to set on the next attach of the same server.
    let mut actions = Vec::new();
    let (state, _) = h.pool.remove(0);
    h.session.on_client_input(&client::query("SELECT 1"), &mut actions).unwrap();
    actions.clear();
    h.session.attach_server(state, &mut actions).unwrap();
    assert!(actions.is_empty());
}

#[test]
fn a_server_found_in_line_shares_the_clients_values_until_either_changes() {
    let mut h = Harness::new(transaction_config(), login_params());
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    let shares = |h: &Harness| h.pool[0].0.params().shares_values_with(h.session.client_params());
    assert!(shares(&h), "a server with the client's values was not made to share them");

    // The SET runs on the server, which reports the new value: both sides change, each its
    // own copy, and the values agree again.
    send(&mut h, &[client::query("SET TimeZone = 'europe/paris'")]);
    h.settle().unwrap();
    assert!(!shares(&h));
    assert_eq!(h.pool[0].0.params(), h.session.client_params());

    // Equal values: the next checkout sends no SET and shares them again.
    h.mark();
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "TDCZ");
    assert_eq!(h.attaches, 3);
    assert!(shares(&h));
}

#[test]
fn a_parameter_the_server_rejects_ends_the_session() {
    let mut params = login_params();
    params.set(TrackedParam::DateStyle, "invalid");
    let mut h = Harness::new(transaction_config(), params);
    send(&mut h, &[client::query("SELECT 1")]);
    let error = h.settle().unwrap_err();
    assert!(error.contains("session parameters"), "{error}");
}

#[test]
fn a_pooler_answer_never_lands_inside_a_streamed_server_message() {
    let mut h = harness();
    prepare(&mut h, "s1", "SELECT 1");
    h.mark();
    send(&mut h, &[client::describe_statement("s1")]);
    // ParameterDescription (7 bytes) and the first 6 bytes of RowDescription.
    h.server_answers(13).unwrap();
    assert_eq!(h.session.requests_in_flight(), 0, "RowDescription answered the Describe");
    // The server has this definition: the pooler answers the Parse while RowDescription is
    // half passed on. The answer must wait for its end.
    send(&mut h, &[client::parse("s2", "SELECT 1")]);
    h.server_answers(usize::MAX).unwrap();
    send(&mut h, &[client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "tT1Z");
}

#[test]
fn a_large_bind_is_rewritten_in_place_and_streamed() {
    let limits = FrameLimits { max_message_len: 1 << 20, max_inspected_len: 64 };
    let mut h = Harness::new(SessionConfig { limits, ..transaction_config() }, login_params());
    prepare(&mut h, "s1", "SELECT $1");
    h.mark();
    let value = vec![b'v'; 5000];
    let stream = [client::bind_with_param("s1", Some(&value)), client::execute(), client::sync()].concat();
    for piece in stream.chunks(3) {
        h.client_sends(piece).unwrap();
    }
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "2DCZ");
    assert_eq!(h.bound, vec![b"SELECT $1".to_vec()]);
}

#[test]
fn a_big_row_passes_in_pieces() {
    let mut h = harness();
    send(&mut h, &[client::query("SELECT big")]);
    for _ in 0..100 {
        h.server_answers(4096).unwrap();
    }
    let received = messages(&h.to_client);
    assert_eq!(h.new_tags(), "TDCZ");
    assert_eq!(received[1].1.len(), 100_006);
}

#[test]
fn copy_from_stdin_with_a_simple_query() {
    let mut h = harness();
    send(&mut h, &[client::query("COPY FROM STDIN")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "G");
    send(&mut h, &[client::copy_data(b"1\n"), client::copy_data(b"2\n"), client::copy_done()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "GCZ");
    assert_eq!(h.releases, 1);
}

#[test]
fn copy_from_stdin_in_the_extended_protocol_with_an_early_sync() {
    let mut h = harness();
    send(&mut h, &[client::parse("", "COPY FROM STDIN"), client::bind(""), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12G");
    send(&mut h, &[client::copy_data(b"1\n"), client::copy_done(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12GCZ");
    assert_eq!(h.releases, 1);
}

#[test]
fn copy_data_after_a_failed_copy_is_dropped() {
    let mut h = harness();
    send(&mut h, &[client::query("COPY FROM STDIN")]);
    h.settle().unwrap();
    send(&mut h, &[client::copy_data(b"1\n"), sim_copy_fail()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "GEZ");
    assert_eq!(h.releases, 1);
    // Late data needs no server.
    send(&mut h, &[client::copy_data(b"2\n"), client::copy_done()]);
    h.settle().unwrap();
    assert_eq!(h.attaches, 1);
}

/// asyncpg writes a COPY's data and CopyDone right behind its Query, before the server's
/// CopyInResponse: they reach the server, which copies them in.
#[test]
fn copy_data_sent_ahead_of_the_copy_in_response_reaches_the_server() {
    let mut h = harness();
    send(
        &mut h,
        &[client::query("COPY FROM STDIN"), client::copy_data(b"1\n"), client::copy_data(b"2\n"), client::copy_done()],
    );
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "GCZ");
    assert_eq!(h.releases, 1);
    // The same in the extended protocol, Sync last.
    h.mark();
    send(
        &mut h,
        &[
            client::parse("", "COPY FROM STDIN"),
            client::bind(""),
            client::execute(),
            client::copy_data(b"3\n"),
            client::copy_done(),
            client::sync(),
        ],
    );
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12GCZ");
    assert_eq!(h.releases, 2);
}

/// A COPY that fails before it starts (no such table), its data and CopyDone already sent:
/// the server ignores them, and the session waits for no answer to them.
#[test]
fn copy_data_sent_ahead_of_a_copy_that_fails_is_left_unanswered() {
    let mut h = harness();
    send(&mut h, &[client::query("COPY MISSING FROM STDIN"), client::copy_data(b"1\n"), client::copy_done()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "EZ");
    assert_eq!(h.releases, 1);
    h.mark();
    send(
        &mut h,
        &[
            client::parse("", "COPY MISSING FROM STDIN"),
            client::bind(""),
            client::execute(),
            client::copy_data(b"1\n"),
            sim_copy_fail(),
            client::sync(),
        ],
    );
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12EZ");
    assert_eq!(h.releases, 2);
    // The connection serves the next query as usual.
    h.mark();
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "TDCZ");
}

fn sim_copy_fail() -> Vec<u8> {
    super::sim::msg(b'f', b"client gave up\0")
}

#[test]
fn statement_mode_refuses_transaction_blocks() {
    let config = SessionConfig { pool_mode: PoolMode::Statement, ..transaction_config() };
    let mut h = Harness::new(config, login_params());
    send(&mut h, &[client::query("BEGIN")]);
    let error = h.settle().unwrap_err();
    assert!(error.contains("statement pooling"), "{error}");
}

/// disable_pqexec: the extended protocol is served as usual, and a simple Query, even one
/// pipelined behind it, ends the session with the setting's name.
#[test]
fn disable_pqexec_refuses_a_simple_query_and_serves_the_extended_protocol() {
    let config = SessionConfig { disable_pqexec: true, ..transaction_config() };
    let mut h = Harness::new(config, login_params());
    send(&mut h, &[client::parse("", "SELECT 1"), client::bind(""), client::execute(), client::sync()]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "12DCZ");
    h.mark();
    let pipelined =
        [client::parse("", "SELECT 1"), client::bind(""), client::execute(), client::sync(), client::query("SELECT 1")];
    let error = h.client_sends(&pipelined.concat()).unwrap_err();
    assert!(error.to_string().contains("disable_pqexec"), "{error}");
    assert_eq!(error.sqlstate(), "08P01");
    let mut h = Harness::new(transaction_config(), login_params());
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "TDCZ", "allowed by default");
}

#[test]
fn session_mode_keeps_its_server_and_names_statements_as_the_client_did() {
    let config = SessionConfig { pool_mode: PoolMode::Session, ..transaction_config() };
    let mut h = Harness::new(config, login_params());
    prepare_without_release(&mut h);
    assert!(h.attached().unwrap().statements.contains_key(&b"s1"[..]));
    assert_eq!(h.releases, 0);
}

fn prepare_without_release(h: &mut Harness) {
    send(h, &[client::parse("s1", "SELECT 1"), client::sync()]);
    h.settle().unwrap();
    assert!(h.session.has_server());
}

#[test]
fn sync_flush_and_close_need_no_server() {
    let mut h = harness();
    send(&mut h, &[client::flush(), client::close_statement("nope"), client::sync()]);
    assert_eq!(h.attaches, 0);
    assert_eq!(h.new_tags(), "3Z");
}

#[test]
fn terminate_ends_the_session() {
    let mut h = harness();
    send(&mut h, &[client::terminate(), client::query("SELECT 1")]);
    assert!(h.terminated);
    assert_eq!(h.attaches, 0);
}

#[test]
fn a_client_leaving_mid_transaction_leaves_an_unusable_server() {
    let mut h = harness();
    send(&mut h, &[client::query("BEGIN")]);
    h.settle().unwrap();
    assert!(!h.session.server_is_reusable());
    send(&mut h, &[client::query("COMMIT")]);
    h.settle().unwrap();
    send(&mut h, &[client::query("SELECT 1")]);
    assert!(!h.session.server_is_reusable(), "a query is in flight");
}

#[test]
fn malformed_client_lengths_are_errors() {
    let mut session = Session::new(transaction_config(), login_params());
    let mut actions = Vec::new();
    let short = [b'Q', 0, 0, 0, 3];
    assert!(matches!(
        session.on_client_input(&short, &mut actions),
        Err(SessionError::ClientFrame(FrameError::LengthTooShort { .. }))
    ));
    let mut session = Session::new(transaction_config(), login_params());
    let sync_with_body = super::sim::msg(b'S', b"xx");
    assert!(matches!(
        session.on_client_input(&sync_with_body, &mut actions),
        Err(SessionError::UnexpectedClientMessage { tag: b'S', .. })
    ));
    let limits = FrameLimits { max_message_len: 1 << 20, max_inspected_len: 100 };
    let mut session = Session::new(SessionConfig { limits, ..transaction_config() }, login_params());
    let huge_parse = client::parse("s1", &"x".repeat(200));
    let error = session.on_client_input(&huge_parse, &mut actions).unwrap_err();
    assert_eq!(error.sqlstate(), "54000");
    let mut session = Session::new(transaction_config(), login_params());
    let error = session.on_client_input(&super::sim::msg(b'?', b""), &mut actions).unwrap_err();
    assert_eq!(error.sqlstate(), "08P01");
}

#[test]
fn malformed_server_messages_are_errors() {
    let mut actions = Vec::new();
    for bad in
        [vec![b'Z', 0, 0, 0, 2], super::sim::msg(b'Z', b"X"), super::sim::msg(b'1', b""), super::sim::msg(b'K', b"")]
    {
        let mut session = Session::new(transaction_config(), login_params());
        session.on_client_input(&client::query("SELECT 1"), &mut actions).unwrap();
        session.attach_server(MockServer::new().state(), &mut actions).unwrap();
        session.on_client_input(&client::query("SELECT 1"), &mut actions).unwrap();
        let error = session.on_server_input(&bad, &mut actions).unwrap_err();
        assert_eq!(error.sqlstate(), "08006", "{error}");
        assert!(!error.client_message().contains("expected"), "internals stay in the log");
    }
}

#[test]
fn server_input_without_a_server_is_a_caller_error() {
    let mut session = Session::new(transaction_config(), login_params());
    assert!(matches!(session.on_server_input(b"", &mut Vec::new()), Err(SessionError::NoServer)));
}

#[test]
fn a_session_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Session>();
    assert_send::<Action>();
    assert_send::<SessionError>();
}

/// Counts heap allocations made by the current thread.
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub(super) struct Counting;

    thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            COUNT.with(|count| count.set(count.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            COUNT.with(|count| count.set(count.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    pub(super) fn count() -> usize {
        COUNT.with(Cell::get)
    }
}

/// One transaction through the session as a thin I/O loop would drive it, without buffers of
/// its own: the pooled server state goes out and comes back.
fn transaction(
    session: &mut Session,
    pooled: &mut Option<Box<ServerState>>,
    client_bytes: &[u8],
    server_bytes: &[u8],
    actions: &mut Vec<Action>,
) {
    session.on_client_input(client_bytes, actions).unwrap();
    assert!(matches!(actions.last(), Some(Action::NeedServer)));
    actions.clear();
    session.attach_server(pooled.take().unwrap(), actions).unwrap();
    session.on_client_input(client_bytes, actions).unwrap();
    actions.clear();
    session.on_server_input(server_bytes, actions).unwrap();
    for action in actions.drain(..) {
        if let Action::ReleaseServer(state) = action {
            *pooled = Some(state);
        }
    }
    assert!(pooled.is_some(), "released at the end of the transaction");
}

#[test]
fn the_steady_state_allocates_nothing() {
    use super::sim::msg;
    let mut session = Session::new(transaction_config(), login_params());
    let mut pooled = Some(MockServer::new().state());
    let mut actions = Vec::with_capacity(16);
    let prepare = [client::parse("s1", "SELECT 1"), client::sync()].concat();
    let prepared = [msg(b'1', b""), msg(b'Z', b"I")].concat();
    transaction(&mut session, &mut pooled, &prepare, &prepared, &mut actions);
    // Bind with a rewritten name, rows streamed back, release, attach again.
    let execute = [client::bind_with_param("s1", Some(b"42")), client::execute(), client::sync()].concat();
    let row = [0, 1, 0, 0, 0, 2, b'4', b'2'];
    let rows = [msg(b'2', b""), msg(b'D', &row), msg(b'D', &row), msg(b'C', b"SELECT 2\0"), msg(b'Z', b"I")].concat();
    for _ in 0..10 {
        transaction(&mut session, &mut pooled, &execute, &rows, &mut actions);
    }
    let probe = allocations::count();
    drop(std::hint::black_box(vec![0u8; 8]));
    assert_eq!(allocations::count(), probe + 1, "the counter sees allocations");
    let before = allocations::count();
    for _ in 0..100 {
        transaction(&mut session, &mut pooled, &execute, &rows, &mut actions);
    }
    assert_eq!(allocations::count() - before, 0);
}

#[test]
fn a_query_or_an_extended_step_needs_a_server_first_but_a_sync_a_partial_header_or_an_attached_client_does_not() {
    let mut h = harness();
    for message in [client::query("SELECT 1"), client::parse("s", "SELECT 1"), client::bind("s"), client::execute()] {
        assert!(h.session.needs_server_first(&message), "{:?}", message.first().map(|t| *t as char));
    }
    assert!(!h.session.needs_server_first(&client::sync()));
    assert!(!h.session.needs_server_first(&client::flush()));
    assert!(!h.session.needs_server_first(&client::close_statement("s")));
    assert!(!h.session.needs_server_first(&client::query("SELECT 1")[..4]));
    send(&mut h, &[client::query("BEGIN")]);
    assert!(h.session.has_server());
    assert!(!h.session.needs_server_first(&client::query("SELECT 1")));
}

/// The queue of pending requests travels with the server connection: a new client's first
/// query takes the queue the connection's previous client left with it, allocating none.
#[test]
fn a_new_client_takes_the_pending_queue_its_server_connection_carries() {
    let mut h = harness();
    send(&mut h, &[client::query("SELECT 1")]);
    h.settle().unwrap();
    assert_eq!(h.pool.len(), 1);
    assert!(h.pool[0].0.spare_pending.has_room(), "the released connection carries no queue");
    // A new client (a new session) on the same pool.
    h.session = Session::new(transaction_config(), login_params());
    assert!(!h.session.pending.has_room());
    send(&mut h, &[client::query("SELECT 2")]);
    assert!(h.session.has_server());
    assert!(h.session.pending.has_room(), "the session did not take the connection's queue");
    h.settle().unwrap();
    assert_eq!(h.new_tags(), "TDCZTDCZ");
    assert!(h.pool[0].0.spare_pending.has_room());
}
