//! The `tandem` binary: CLI, data plane, control socket, metrics and systemd integration — the
//! imperative shell that drives `tandem-engine`.
//!
//! This file only parses the command line ([`tandem::cli`]) and dispatches; each command returns
//! its exit status (docs/cli.md: 0 success, 1 user error, 2 daemon unreachable).
// The CLI's output is the point of these commands.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Read as _;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use tandem::cli::{Cli, Command, EXIT_OK, EXIT_USER_ERROR, ImportSource};
use zeroize::Zeroizing;

/// What `tandem --version` prints: the crate's version, unless the build stamped another one
/// with `TANDEM_BUILD_VERSION=V cargo build` (a packager's knob; `packaging/test-deb.sh` builds
/// the "next version" of its upgrade test from the same tree this way).
const VERSION: &str = match option_env!("TANDEM_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

fn command() -> clap::Command {
    Cli::command().version(VERSION)
}

fn main() -> ExitCode {
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; a usage error is a user error (1),
            // not clap's default 2, which docs/cli.md reserves for "daemon unreachable".
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_USER_ERROR
            } else {
                EXIT_OK
            });
        }
    };
    ExitCode::from(dispatch(cli.command))
}

fn dispatch(command: Command) -> u8 {
    match command {
        Command::Genkey => print_key(tandem::keys::genkey()),
        Command::Genpsk => print_key(tandem::keys::genpsk()),
        Command::Pubkey => pubkey(),
        Command::Check(args) => match tandem::check::check(&args.config) {
            Ok(summary) => {
                println!("{summary}");
                EXIT_OK
            }
            Err(e) => {
                eprintln!("{e}");
                EXIT_USER_ERROR
            }
        },
        Command::Run(args) => tandem::run::run(&args.config),
        Command::Status(args) => with_socket(&args.control, |s| {
            if args.watch {
                tandem::admin::cmd_status_watch(s, args.json, args.interval)
            } else {
                tandem::admin::cmd_status(s, args.json)
            }
        }),
        Command::Reload(args) => with_socket(&args, tandem::admin::cmd_reload),
        Command::Failover(args) => with_socket(&args.control, |s| {
            tandem::admin::cmd_failover(s, &args.connection, args.to.as_deref(), args.auto)
        }),
        Command::Drill(args) => with_socket(&args.control, |s| {
            tandem::admin::cmd_drill(
                s,
                &args.connection,
                args.duration,
                args.graceful,
                args.report.as_deref(),
            )
        }),
        Command::Events(args) => {
            with_socket(&args.control, |s| tandem::admin::cmd_events(s, args.json))
        }
        Command::Completions(args) => {
            clap_complete::generate(
                args.shell,
                &mut crate::command(),
                "tandem",
                &mut std::io::stdout(),
            );
            EXIT_OK
        }
        Command::Import(ImportSource::Aws(args)) => {
            match tandem::import::import_aws(&args.file, args.name.as_deref(), &args.dir) {
                Ok(report) => {
                    print!("{report}");
                    EXIT_OK
                }
                Err(e) if e.is_about_the_xml() => {
                    eprintln!("tandem: {}: {e}", args.file.display());
                    EXIT_USER_ERROR
                }
                Err(e) => {
                    eprintln!("tandem: {e}");
                    EXIT_USER_ERROR
                }
            }
        }
    }
}

/// Find the daemon's control socket (docs/cli.md order) and run a control command against it.
fn with_socket(args: &tandem::cli::ControlArgs, f: impl FnOnce(&std::path::Path) -> u8) -> u8 {
    match tandem::cli::control_socket(args) {
        Ok(socket) => f(&socket),
        Err(e) => {
            eprintln!("{e}");
            EXIT_USER_ERROR
        }
    }
}

fn print_key(key: Result<Zeroizing<String>, tandem::keys::KeyError>) -> u8 {
    match key {
        Ok(k) => {
            println!("{}", k.as_str());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("tandem: {e}");
            EXIT_USER_ERROR
        }
    }
}

fn pubkey() -> u8 {
    let mut input = Zeroizing::new(String::new());
    // A key is 44 characters; anything much longer is not a key.
    let read = std::io::stdin().take(4096).read_to_string(&mut input);
    if let Err(e) = read {
        eprintln!("tandem: cannot read standard input: {e}");
        return EXIT_USER_ERROR;
    }
    match tandem::keys::pubkey(&input) {
        Ok(public) => {
            println!("{public}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("tandem: {e}");
            EXIT_USER_ERROR
        }
    }
}
