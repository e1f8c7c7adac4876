use anyhow::anyhow;
use clap::{Parser, Subcommand};
use pgredact::config::LogFormat;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// pgredact: a PostgreSQL wire-protocol proxy that masks PII for every role a policy does not exempt.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "pgredact.toml")]
        config: PathBuf,
    },
    /// Validate the config and policies (and against the live schema when reachable); exits 1 on errors.
    Check {
        #[arg(long, default_value = "pgredact.toml")]
        config: PathBuf,
    },
    /// Anonymize customers' PII in every policy table with a subject (right to be forgotten) and keep it from coming back.
    Forget {
        #[arg(long, default_value = "pgredact.toml")]
        config: PathBuf,
        #[command(flatten)]
        args: pgredact::forget::ForgetArgs,
    },
    /// Lift forget suppression for customer IDs (audited; anonymized data stays anonymized).
    Unforget {
        #[arg(long, default_value = "pgredact.toml")]
        config: PathBuf,
        #[command(flatten)]
        args: pgredact::forget::UnforgetArgs,
    },
    /// Print the SQL a superuser runs in a protected database (once, and after upgrades): the
    /// control schema, pgredact_admin (masking views, privilege enforcement, DDL triggers), and
    /// the REVOKE/GRANT statements that make PostgreSQL itself enforce the masks.
    SetupSql {
        #[arg(long, default_value = "pgredact.toml")]
        config: PathBuf,
        /// The database to set up (needed when several have policies).
        #[arg(long)]
        database: Option<String>,
    },
    /// Sample every table the control role can read and report the columns and JSON paths that
    /// look like PII, and whether the policy covers them (never prints a sampled value).
    Scan {
        #[arg(long, default_value = "pgredact.toml")]
        config: PathBuf,
        #[command(flatten)]
        args: pgredact::scan::ScanArgs,
    },
    /// The audit trail of masked sessions.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Start a throwaway PostgreSQL with sample customer data and pgredact in front of it.
    Demo {
        /// Where pgredact listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of audit files, given oldest first (rotated files, then the current
    /// one): every line parses, seq goes up by one, prev is the SHA-256 of the previous line.
    /// Exits 0 with a summary, 1 naming the first broken line (file:line and why).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Logs to stderr as `log_format` says: text (ANSI colour only when stderr is a terminal) or
/// JSON lines (with the session span's fields).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGREDACT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The log format of the configuration a command uses (text when it has none or it does not
/// load: the command itself reports why).
fn log_format(cmd: &Cmd) -> LogFormat {
    let config = match cmd {
        Cmd::Serve { config }
        | Cmd::Check { config }
        | Cmd::Forget { config, .. }
        | Cmd::Unforget { config, .. }
        | Cmd::SetupSql { config, .. }
        | Cmd::Scan { config, .. } => config,
        Cmd::Demo { .. } | Cmd::Audit { .. } => return LogFormat::Text,
    };
    pgredact::config::Config::load(config)
        .map(|c| c.log_format)
        .unwrap_or_default()
}

// Long: one arm per subcommand, each a line or two.
fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Audit {
        cmd: AuditCmd::Verify { files },
    } = &cli.cmd
    {
        return match pgredact::audit::verify(files) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgredact: audit chain broken: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(log_format(&cli.cmd));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgredact: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Cmd::Scan { config, args } = &cli.cmd {
        return rt.block_on(pgredact::scan::run_cli(config, args));
    }
    // The CLI edge: every command's error, typed or (for the modules not typed yet) a message,
    // as one anyhow::Error, printed with its own message only (`{e}`: no chain of causes, which
    // the typed errors' messages already include).
    let load = |config: &std::path::Path| {
        pgredact::config::Config::load(config).map_err(anyhow::Error::msg)
    };
    let res: anyhow::Result<()> = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { config } => {
                let cfg = load(&config)?;
                Ok(pgredact::proxy::serve(cfg).await?)
            }
            Cmd::Forget { config, args } => {
                let cfg = load(&config)?;
                print!("{}", pgredact::forget::run_cli(&cfg, args).await?);
                Ok(())
            }
            Cmd::Unforget { config, args } => {
                let cfg = load(&config)?;
                print!("{}", pgredact::forget::run_unforget_cli(&cfg, args).await?);
                Ok(())
            }
            Cmd::Check { config } => {
                let cfg = load(&config)?;
                let (lines, failed) = pgredact::check::run(&cfg).await;
                for l in lines {
                    println!("{l}");
                }
                if failed {
                    Err(anyhow!("policy check failed"))
                } else {
                    Ok(())
                }
            }
            Cmd::SetupSql { config, database } => {
                let cfg = load(&config)?;
                print!(
                    "{}",
                    pgredact::wall::setup_sql(&cfg, database.as_deref())
                        .await
                        .map_err(anyhow::Error::msg)?
                );
                Ok(())
            }
            Cmd::Demo { listen } => Ok(pgredact::demo::run(&listen).await?),
            Cmd::Audit { .. } | Cmd::Scan { .. } => Ok(()),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgredact: {e}");
            ExitCode::FAILURE
        }
    }
}
