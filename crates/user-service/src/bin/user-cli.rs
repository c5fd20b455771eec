//! `user-cli`: create, read, update, delete and list users of a running
//! user-service over gRPC, through the same resilient client task-worker
//! uses (deadline, retries, circuit breaker).
//!
//! ```text
//! user-cli create u-1001 --name Alice --age 30 --email alice@example.com
//! user-cli get u-1001 [--json]
//! user-cli update u-1001 --name "Alice L." --age 31
//! user-cli delete u-1001
//! user-cli list [--page-size 50] [--page-token TOKEN] [--all]
//! ```
//!
//! The server is `--url` or `USER_SERVICE_URL` (default
//! `http://127.0.0.1:50051`). For an `https://` URL, `--ca` names the PEM
//! file of the CA that signed the server's certificate (else the operating
//! system's trust store is used), and `--cert` with `--key` a client
//! certificate for mutual TLS (also `USER_SERVICE_TLS_CA`,
//! `USER_SERVICE_TLS_CERT`, `USER_SERVICE_TLS_KEY`, as task-worker reads them). Output is a readable block or table, or JSON
//! with `--json` (the JSON gateway's shapes). Exit codes: 0 success,
//! 1 user-service unreachable or failing (a failed TLS handshake too),
//! 2 bad command line (an unreadable `--ca`, `--cert` or `--key` too), 3 not found,
//! 4 rejected (invalid argument or already exists).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use common::proto::user::v1::{CreateUserRequest, GetUserResponse, UpdateUserRequest};
use serde_json::json;
use user_client::{ClientConfig, ClientError, UserClient};

/// Manage the users of a user-service.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The user-service gRPC endpoint.
    #[arg(
        long,
        env = "USER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    url: String,
    /// https:// only: PEM file of the CA the server's certificate must chain
    /// to (default: the operating system's trust store).
    #[arg(long, env = "USER_SERVICE_TLS_CA", global = true)]
    ca: Option<PathBuf>,
    /// https:// only: PEM client certificate for mutual TLS (with --key).
    #[arg(long, env = "USER_SERVICE_TLS_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// https:// only: PEM private key of --cert.
    #[arg(long, env = "USER_SERVICE_TLS_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Overall deadline of each call, retries included, with its unit
    /// (`500ms`, `5s`).
    #[arg(long, default_value = "5s", value_parser = common::config::duration::parse, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a user.
    Create {
        /// The new user's id (letters, digits, '.', '_', '-').
        user_id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Age in years, 0 to 150.
        #[arg(long)]
        age: i32,
        /// Contact address (optional).
        #[arg(long, default_value = "")]
        email: String,
    },
    /// Show one user.
    Get {
        /// The user's id.
        user_id: String,
    },
    /// Replace a user's name, age and email.
    Update {
        /// The user's id.
        user_id: String,
        /// New display name.
        #[arg(long)]
        name: String,
        /// New age in years, 0 to 150.
        #[arg(long)]
        age: i32,
        /// New contact address (empty when omitted).
        #[arg(long, default_value = "")]
        email: String,
    },
    /// Delete a user.
    Delete {
        /// The user's id.
        user_id: String,
    },
    /// List users ordered by id, a page at a time.
    List {
        /// Users per page (0: the server's default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Continue from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow every page to the end.
        #[arg(long)]
        all: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match UserClient::connect_lazy(ClientConfig {
        url: cli.url.clone(),
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        timeout: cli.timeout,
        ..ClientConfig::default()
    }) {
        Ok(client) => client,
        // Only the URL and the TLS files are checked here: all command line.
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match execute(&client, cli.command, cli.json).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

/// Runs one command and renders its result.
async fn execute(
    client: &UserClient,
    command: Command,
    as_json: bool,
) -> Result<String, ClientError> {
    Ok(match command {
        Command::Create {
            user_id,
            name,
            age,
            email,
        } => {
            let user = client
                .create_user(CreateUserRequest {
                    user_id,
                    name,
                    age,
                    email,
                })
                .await?;
            render_user(&user, as_json)
        }
        Command::Get { user_id } => render_user(&client.get_user(&user_id).await?, as_json),
        Command::Update {
            user_id,
            name,
            age,
            email,
        } => {
            let user = client
                .update_user(UpdateUserRequest {
                    user_id,
                    name,
                    age,
                    email,
                })
                .await?;
            render_user(&user, as_json)
        }
        Command::Delete { user_id } => {
            client.delete_user(&user_id).await?;
            if as_json {
                json!({ "deleted": user_id }).to_string()
            } else {
                format!("deleted user {user_id}")
            }
        }
        Command::List {
            page_size,
            page_token,
            all,
        } => {
            let mut users = Vec::new();
            let mut token = page_token;
            loop {
                let page = client.list_users(page_size, &token).await?;
                users.extend(page.users);
                token = page.next_page_token;
                if !all || token.is_empty() {
                    break;
                }
            }
            render_list(&users, &token, as_json)
        }
    })
}

/// Prints the error on stderr and picks the exit code.
fn fail(error: &ClientError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(match error {
        ClientError::NotFound(_) => 3,
        ClientError::InvalidArgument(_) | ClientError::AlreadyExists(_) => 4,
        ClientError::InvalidUrl(_) => 2,
        _ => 1,
    })
}

fn user_json(user: &GetUserResponse) -> serde_json::Value {
    json!({
        "user_id": user.user_id,
        "name": user.name,
        "age": user.age,
        "email": user.email,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    })
}

fn render_user(user: &GetUserResponse, as_json: bool) -> String {
    if as_json {
        return user_json(user).to_string();
    }
    let email = if user.email.is_empty() {
        "-"
    } else {
        &user.email
    };
    format!(
        "user_id:    {}\nname:       {}\nage:        {}\nemail:      {}\ncreated_at: {}\nupdated_at: {}",
        user.user_id,
        user.name,
        user.age,
        email,
        format_unix_ms(user.created_at),
        format_unix_ms(user.updated_at),
    )
}

fn render_list(users: &[GetUserResponse], next_page_token: &str, as_json: bool) -> String {
    if as_json {
        return json!({
            "users": users.iter().map(user_json).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        })
        .to_string();
    }
    let width = |header: &str, column: fn(&GetUserResponse) -> String| {
        users
            .iter()
            .map(|u| column(u).chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or(0)
    };
    let id_width = width("USER_ID", |u| u.user_id.clone());
    let name_width = width("NAME", |u| u.name.clone());
    let mut out = format!(
        "{:id_width$}  {:name_width$}  {:>3}  EMAIL",
        "USER_ID", "NAME", "AGE"
    );
    for user in users {
        let email = if user.email.is_empty() {
            "-"
        } else {
            &user.email
        };
        out.push_str(&format!(
            "\n{:id_width$}  {:name_width$}  {:>3}  {email}",
            user.user_id, user.name, user.age
        ));
    }
    let count = match users.len() {
        1 => "1 user".to_string(),
        n => format!("{n} users"),
    };
    if next_page_token.is_empty() {
        out.push_str(&format!("\n({count})"));
    } else {
        out.push_str(&format!(
            "\n({count}; more with --page-token {next_page_token})"
        ));
    }
    out
}

/// Unix milliseconds as an RFC 3339 UTC time (`2026-11-27T00:12:34.567Z`).
fn format_unix_ms(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str, email: &str) -> GetUserResponse {
        GetUserResponse {
            name: name.into(),
            age: 30,
            user_id: id.into(),
            email: email.into(),
            created_at: 0,
            updated_at: 1_764_201_600_123,
        }
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_764_201_600_123),
            "2025-11-27T00:00:00.123Z"
        );
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_user_prints_as_a_block_or_json() {
        let alice = user("u-1", "Alice", "");
        let text = render_user(&alice, false);
        assert!(text.contains("name:       Alice"), "{text}");
        assert!(text.contains("email:      -"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&render_user(&alice, true)).unwrap();
        assert_eq!(parsed["user_id"], "u-1");
        assert_eq!(parsed["age"], 30);
    }

    #[test]
    fn a_list_prints_as_an_aligned_table() {
        let users = [
            user("u-1", "Alice", "a@example.com"),
            user("u-1002", "Bob", ""),
        ];
        let table = render_list(&users, "p1.7531", false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "USER_ID  NAME   AGE  EMAIL");
        assert_eq!(lines[1], "u-1      Alice   30  a@example.com");
        assert_eq!(lines[2], "u-1002   Bob     30  -");
        assert_eq!(lines[3], "(2 users; more with --page-token p1.7531)");
        let parsed: serde_json::Value =
            serde_json::from_str(&render_list(&users, "", true)).unwrap();
        assert_eq!(parsed["users"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "user-cli", "--json", "create", "u-1", "--name", "Alice", "--age", "30",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Create { age: 30, .. }));
        assert!(Cli::try_parse_from(["user-cli", "create", "u-1", "--age", "x"]).is_err());
    }
}
