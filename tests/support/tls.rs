//! Certificates for the TLS tests (made with `openssl`, which .ci/run installs) and TLS on the
//! test cluster.

use super::Env;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `script` with `sh -c` in `dir` (the `openssl` calls that make a test CA and its
/// certificates); panics with its stderr when it fails.
pub fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh + openssl (installed by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    /// Hands PostgreSQL the certificate and key `pg.crt` and `pg.key` of `dir`, turns `ssl` on
    /// and waits until it is.
    pub async fn enable_server_tls(&self, dir: &Path) {
        // Copied into the data directory: mode 0600, owned by the server's user.
        for (file, target) in [
            ("pg.crt", "pgredact_test.crt"),
            ("pg.key", "pgredact_test.key"),
        ] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            self.cluster.write_data_file(target, &text).unwrap();
        }
        let su = self.direct("postgres").await;
        for stmt in [
            "ALTER SYSTEM SET ssl_cert_file = 'pgredact_test.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'pgredact_test.key'",
            "ALTER SYSTEM SET ssl = on",
            "SELECT pg_reload_conf()",
        ] {
            su.batch_execute(stmt).await.unwrap();
        }
        let mut on = false;
        for _ in 0..600 {
            let c = self.direct("postgres").await;
            let v: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
            if v == "on" {
                on = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            on,
            "PostgreSQL did not turn ssl on:\n{}",
            self.cluster.read_log()
        );
    }
}
