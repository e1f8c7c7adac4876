//! The command: `pgredact scan` from the CLI.

use super::*;

/// `pgredact scan`: exit 0 (done), 1 (could not scan), 2 (`--fail-on-unlisted` and a finding
/// the policy does not cover).
pub async fn run_cli(config: &std::path::Path, args: &ScanArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgredact: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (report, pol) = match scan(&cfg, args).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgredact: scan failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rendered = match args.format {
        Format::Text => report.text(),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("pgredact: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if args.propose {
        eprint!("{rendered}");
        let original = match &pol {
            Some(p) => match std::fs::read_to_string(&p.file) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("pgredact: {}: {e}", p.file.display());
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        match propose(
            original.as_deref(),
            &report.database,
            &report.findings,
            cfg.hash_key().is_some(),
        ) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("pgredact: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{rendered}");
    }
    if args.fail_on_unlisted && report.unlisted() > 0 {
        eprintln!(
            "pgredact: {} finding(s) not covered by the policy",
            report.unlisted()
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
