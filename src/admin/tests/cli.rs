//! The CLI clients (`holds`, `tickets`) against the router served on port 0, and what
//! their text output makes of terminal control characters in stored strings.

use super::*;
use crate::commands::client::{CliError, ClientArgs, OutputFormat};
use crate::commands::{holds, tickets, EXIT_REFUSED};

fn client(addr: SocketAddr, token: &str) -> ClientArgs {
    ClientArgs {
        admin: format!("http://{addr}"),
        token: Some(token.into()),
        format: OutputFormat::Json,
    }
}

#[tokio::test]
async fn tickets_create_sends_the_statement_fingerprints() {
    let f = fixture();
    let shutdown = CancellationToken::new();
    let (addr, task) = spawn_server(&f, None, shutdown.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let migration = dir.path().join("V7__orders.sql");
    let sql = "ALTER TABLE orders ADD note text;\nUPDATE orders SET note = 'x' WHERE id = 1;\nUPDATE orders SET note = 'y' WHERE id = 2;\n";
    std::fs::write(&migration, sql).unwrap();

    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        c: tickets::TicketsCommand,
    }
    let cmd = Cli::try_parse_from([
        "t",
        "create",
        "CHG-7",
        "--title",
        "orders.note",
        "--valid-for",
        "2h",
        "--database",
        "shop",
        "--env",
        "production",
        "--statements",
        migration.to_str().unwrap(),
    ])
    .unwrap()
    .c;
    tickets::tickets(tickets::TicketsArgs {
        command: Some(cmd),
        client: client(addr, &f.approver),
    })
    .await
    .unwrap();

    let t = f.state.approvals().ticket("CHG-7").await.unwrap().unwrap();
    let want = crate::sql::fingerprints(sql, crate::sql::ReadAs::default()).unwrap();
    assert_eq!(
        t.scope.statements,
        vec![want[0].clone(), want[1].clone()],
        "each once, in order"
    );
    assert_eq!(want[1], want[2]);
    assert_eq!(t.scope.databases, vec!["shop".to_string()]);
    let left = t
        .valid_until
        .unwrap()
        .duration_since(jiff::Timestamp::now());
    assert!(left > jiff::SignedDuration::from_secs(3500), "{left:?}");

    // The API's refusal is exit 1 with its message: alice approving her own ticket.
    let err = tickets::tickets(tickets::TicketsArgs {
        command: Some(tickets::TicketsCommand::Approve {
            id: "CHG-7".into(),
            comment: None,
        }),
        client: client(addr, &f.approver),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, CliError::Refused { status: 409, .. }),
        "{err}"
    );
    assert_eq!(err.exit_code(), EXIT_REFUSED);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn holds_list_shows_what_waits() {
    let f = fixture();
    let _g = f
        .state
        .approvals()
        .open_hold(new_hold("carol"))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let (addr, task) = spawn_server(&f, None, shutdown.clone()).await;
    let c = crate::commands::client::AdminClient::new(&client(addr, &f.viewer)).unwrap();
    let a: crate::commands::client::Answer<Vec<crate::approval::model::Hold>> =
        c.get("/api/holds?status=pending").await.unwrap();
    let text = holds::list(&a.value);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    for col in [
        "ID",
        "STATUS",
        "USER",
        "DATABASE",
        "APPLICATION",
        "RULES",
        "APPROVALS",
        "OPENED",
        "EXPIRES",
        "SQL",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines.next().unwrap();
    for cell in [
        "pending",
        "carol",
        "shop",
        "psql",
        "ddl.drop-table",
        "0/1",
        "DROP TABLE orders",
    ] {
        assert!(row.contains(cell), "{row}");
    }
    // A viewer's approval is refused by the API: exit 1.
    let err = holds::holds(holds::HoldsArgs {
        command: Some(holds::HoldsCommand::Approve {
            id: a.value[0].id,
            comment: None,
        }),
        status: None,
        client: client(addr, &f.viewer),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, CliError::Refused { status: 403, .. }),
        "{err}"
    );

    shutdown.cancel();
    task.await.unwrap().unwrap();
    // Nothing listens now: a connection error is exit 2.
    let err = holds::holds(holds::HoldsArgs {
        command: None,
        status: None,
        client: client(addr, &f.viewer),
    })
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), crate::commands::EXIT_ERROR);
}

#[tokio::test]
async fn text_output_escapes_terminal_controls_in_stored_strings() {
    let f = fixture();
    // SQL whose comments would hide `or id > 0` from the approver's terminal.
    let sql = "DELETE FROM orders WHERE id = 1 /*\x1b[8m*/ or id > 0 /*\x1b[0m*/";
    let _g = f
        .state
        .approvals()
        .open_hold(NewHold {
            sql: sql.into(),
            application_name: "psql\x1b]0;hi\x07".into(),
            ..new_hold("carol")
        })
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let (addr, task) = spawn_server(&f, None, shutdown.clone()).await;
    // A ticket titled with an escape sequence and a bidi override, made by the CLI.
    tickets::tickets(tickets::TicketsArgs {
        command: Some(tickets::TicketsCommand::Create(Box::new(
            tickets::CreateArgs {
                id: "CHG-9".into(),
                title: "fix \x1b[2Jorders\u{202e}".into(),
                approvals: None,
                approver_groups: vec![],
                valid_from: None,
                valid_until: None,
                valid_for: None,
                max_uses: None,
                environments: vec![],
                databases: vec![],
                users: vec![],
                rules: vec![],
                tags: vec![],
                objects: vec![],
                statements: None,
            },
        ))),
        client: client(addr, &f.approver),
    })
    .await
    .unwrap();

    let c = crate::commands::client::AdminClient::new(&client(addr, &f.viewer)).unwrap();
    let holds: crate::commands::client::Answer<Vec<crate::approval::model::Hold>> =
        c.get("/api/holds?status=pending").await.unwrap();
    // The JSON (what --format json prints) keeps the stored text.
    assert_eq!(holds.value[0].sql, sql);
    assert!(holds.text.contains("\\u001b[8m"), "{}", holds.text);
    let tickets: crate::commands::client::Answer<Vec<crate::approval::model::Ticket>> =
        c.get("/api/tickets").await.unwrap();
    let texts = [
        holds::list(&holds.value),
        holds::show(&holds.value[0]),
        tickets::list(&tickets.value),
        tickets::show(&tickets.value[0]),
    ];
    for t in &texts {
        assert!(
            !t.chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{t:?}"
        );
    }
    let [hl, hs, tl, ts] = &texts;
    let seen = "/*\\u{1b}[8m*/ or id > 0 /*\\u{1b}[0m*/";
    assert!(hl.contains(seen), "{hl}");
    assert!(hs.contains(seen), "{hs}");
    assert!(hl.contains("psql\\u{1b}]0;hi\\u{7}"), "{hl}");
    assert!(hs.contains("application  psql\\u{1b}]0;hi\\u{7}\n"), "{hs}");
    assert!(tl.contains("fix \\u{1b}[2Jorders\\u{202e}"), "{tl}");
    assert!(
        ts.contains("title          fix \\u{1b}[2Jorders\\u{202e}\n"),
        "{ts}"
    );

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
