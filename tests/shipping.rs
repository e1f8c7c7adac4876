//! What ships next to the binary: the commented example configuration and the systemd unit.

use std::path::Path;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The settings `src/config.rs` reads: every `pub name:` field not marked `#[serde(skip)]`.
fn config_keys() -> Vec<String> {
    let src = std::fs::read_to_string(repo("src/config.rs")).expect("src/config.rs");
    let mut keys = Vec::new();
    let mut skip = false;
    for line in src.lines() {
        let l = line.trim();
        if l.starts_with("#[serde(skip)]") {
            skip = true;
            continue;
        }
        if let Some(rest) = l.strip_prefix("pub ") {
            if let Some((name, _)) = rest.split_once(':') {
                if !name.contains(' ') && !name.contains('(') {
                    if !skip {
                        keys.push(name.to_string());
                    }
                    skip = false;
                    continue;
                }
            }
        }
        if !l.starts_with("///") && !l.starts_with("#[") {
            skip = false;
        }
    }
    keys
}

#[test]
fn the_example_configuration_loads_and_names_every_setting() {
    let path = repo("docs/pgredact.example.toml");
    let cfg = pgredact::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.admin.is_some() && cfg.tls.is_some());
    let text = std::fs::read_to_string(&path).expect("example");
    let keys = config_keys();
    assert!(keys.len() > 25, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            !text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{k} =")) || l == format!("[{k}]")
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "settings missing from docs/pgredact.example.toml: {missing:?}"
    );
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_outlasts_the_drain() {
    let unit = std::fs::read_to_string(repo("docs/pgredact.service")).expect("unit");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("KillSignal=SIGTERM"));
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec");
    let cfg = pgredact::config::Config::load(&repo("docs/pgredact.example.toml")).expect("example");
    assert!(
        stop > cfg.shutdown_timeout_secs,
        "systemd would kill the drain"
    );
    // systemd's own check, where systemd is installed, with ExecStart pointing at this build.
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: unit syntax not verified by systemd");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pgredact.service");
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/pgredact", env!("CARGO_BIN_EXE_pgredact")),
    )
    .expect("write unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
