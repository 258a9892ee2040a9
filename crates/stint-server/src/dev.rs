//! `--dev`: the built-in demo policy and `dev-client.json`.

use chrono::NaiveDate;
use ring::rand::SecureRandom;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use stint_core::secret::{self, SECRET_PREFIX};
use stint_proto::DevClient;

/// The demo workload's client id.
pub const DEMO_CLIENT_ID: &str = "demo-job";
/// The file `--dev` writes its client credentials to.
pub const DEV_CLIENT_FILE: &str = "dev-client.json";

/// The demo policy, as TOML, so that it goes through the same loader and
/// validation as any policy file.
pub(crate) fn demo_policy(secret_sha256: &str, review_by: NaiveDate) -> String {
    format!(
        r#"# The built-in demo policy of `stintd --dev`.
[workloads.{DEMO_CLIENT_ID}]
secret_sha256 = "{secret_sha256}"
workflows = ["demo"]

[workflows.demo]
review_by = {review_by}

[workflows.demo.steps.read]
scopes = ["read:demo/**"]
default_ttl = "5m"
max_ttl = "15m"

[workflows.demo.steps.write]
scopes = ["write:demo/**"]
default_ttl = "5m"
max_ttl = "15m"
"#
    )
}

/// What the demo policy adds when the console runs with the dev identity
/// provider at `issuer_url`: the demo operators, that issuer, and a step
/// whose production scope two of them approve.
pub(crate) fn demo_operators(issuer_url: &str) -> String {
    format!(
        r#"
[workflows.demo.steps.deploy]
scopes = ["deploy:demo/staging"]
default_ttl = "5m"
max_ttl = "15m"

[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:demo/prod"]
approver_groups = ["sre"]
quorum = 2
max_duration = "30m"
max_wait = "15m"
reason_required = true

[operators.alice]
groups = ["sre"]
oidc = {{ issuer = "dev", subject = "alice" }}

[operators.bob]
groups = ["sre"]
oidc = {{ issuer = "dev", subject = "bob" }}

# The dev identity provider (stintd --dev only): anyone who reaches it
# signs in as alice or bob.
[issuers.dev]
url = "{issuer_url}"
audiences = ["stint-console"]
algorithms = ["ES256"]
max_token_age = "5m"
"#
    )
}

/// The demo client's secret: the one in an existing `dev-client.json`, so
/// that restarting the dev broker keeps clients working, or a new one.
pub(crate) fn demo_secret(data_dir: &Path, rng: &dyn SecureRandom) -> io::Result<String> {
    let path = data_dir.join(DEV_CLIENT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            if let Ok(existing) = serde_json::from_slice::<DevClient>(&bytes)
                && existing.client_id == DEMO_CLIENT_ID
                && existing.client_secret.starts_with(SECRET_PREFIX)
            {
                return Ok(existing.client_secret);
            }
            tracing::warn!(path = %path.display(), "ignoring an unreadable dev-client.json; making a new secret");
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    secret::generate(rng).map_err(|_| io::Error::other("the system random number generator failed"))
}

/// Write `dev-client.json` (mode 0600) atomically: a reader never sees half
/// a file.
pub(crate) fn write_dev_client(data_dir: &Path, client: &DevClient) -> io::Result<PathBuf> {
    let path = data_dir.join(DEV_CLIENT_FILE);
    let temporary = data_dir.join(format!(".{DEV_CLIENT_FILE}.tmp"));
    let mut json = serde_json::to_vec_pretty(client).map_err(io::Error::other)?;
    json.push(b'\n');
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&json)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    File::open(data_dir)?.sync_all()?;
    Ok(path)
}

/// A curl command that mints a demo token, reading the secret from the file
/// at run time so that it never lands in a terminal's scrollback or a CI log.
pub(crate) fn curl_example(token_endpoint: &str, dev_client: &Path) -> String {
    format!(
        "curl -s -u \"{DEMO_CLIENT_ID}:$({lookup})\" \\\n    \
         -d grant_type=client_credentials -d step=read -d scope=read:demo/docs -d audience=demo-api \\\n    \
         {token_endpoint}",
        lookup = secret_lookup(dev_client),
    )
}

/// A shell command (needing only `sed`) that prints the secret in
/// `dev-client.json`.
fn secret_lookup(dev_client: &Path) -> String {
    format!(
        "sed -n 's/.*\"client_secret\": \"\\(.*\\)\".*/\\1/p' {}",
        shell_quote(&dev_client.display().to_string())
    )
}

fn shell_quote(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use stint_core::policy::Policy;

    #[test]
    fn the_demo_policy_is_valid_and_matches_the_issue() {
        let hash = secret::hash_hex("s");
        let policy = Policy::parse(
            "demo",
            &demo_policy(&hash, NaiveDate::from_ymd_opt(2027, 11, 23).unwrap()),
        )
        .unwrap();
        let workload = policy.authenticate(DEMO_CLIENT_ID, "s").unwrap();
        let (_, read) = policy.resolve_step(workload, "read").unwrap();
        assert_eq!(read.scopes()[0].as_str(), "read:demo/**");
        assert_eq!(
            (read.default_ttl().as_secs(), read.max_ttl().as_secs()),
            (300, 900)
        );
        let (_, write) = policy.resolve_step(workload, "write").unwrap();
        assert_eq!(write.scopes()[0].as_str(), "write:demo/**");
    }

    #[test]
    fn the_demo_policy_with_operators_is_valid() {
        let hash = secret::hash_hex("s");
        let mut text = demo_policy(&hash, NaiveDate::from_ymd_opt(2027, 11, 23).unwrap());
        text.push_str(&demo_operators("https://127.0.0.1:8782"));
        let policy = Policy::parse("demo", &text).unwrap();
        let alice = policy.operator_for_identity("dev", "alice").unwrap();
        assert_eq!(alice.name(), "alice");
        assert!(alice.groups().contains("sre"));
        assert_eq!(
            policy.operator_for_identity("dev", "bob").unwrap().name(),
            "bob"
        );
        let workload = policy.authenticate(DEMO_CLIENT_ID, "s").unwrap();
        let (_, deploy) = policy.resolve_step(workload, "deploy").unwrap();
        let elevation = deploy.elevation().unwrap();
        assert_eq!(elevation.scopes()[0].as_str(), "deploy:demo/prod");
        assert_eq!(elevation.rules().quorum, 2);
    }

    #[test]
    fn dev_client_is_private_and_its_secret_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let rng = SystemRandom::new();
        let secret = demo_secret(dir.path(), &rng).unwrap();
        let client = DevClient {
            issuer: "http://127.0.0.1:1".into(),
            token_endpoint: "http://127.0.0.1:1/oauth2/token".into(),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: secret.clone(),
        };
        let path = write_dev_client(dir.path(), &client).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(demo_secret(dir.path(), &rng).unwrap(), secret);
    }

    #[test]
    fn the_curl_example_reads_the_secret_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let client = DevClient {
            issuer: "i".into(),
            token_endpoint: "e".into(),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: "stint_abc-_123".into(),
        };
        let path = write_dev_client(dir.path(), &client).unwrap();
        let curl = curl_example("http://127.0.0.1:1/oauth2/token", &path);
        assert!(!curl.contains("stint_abc"));
        assert!(curl.contains(&secret_lookup(&path)));
        // Run the lookup the way the shell will, to prove it extracts the secret.
        let script = secret_lookup(&path);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            "stint_abc-_123"
        );
    }
}
