//! Target credentials: a step token exchanged for the native credential of
//! a system the step reaches (a PostgreSQL login today), held by the
//! [`TargetCredential`] guard.
//!
//! [`StepToken::target_credential`] sends the exchange (RFC 8693 at the
//! token endpoint, `audience=TARGET`, the step token as `subject_token`,
//! no client authentication). The guard revokes the credential alone when
//! the work with it is done ([`TargetCredential::finish`], `DELETE
//! /v1/target-credentials/{credential_id}` authenticated by the step
//! token), or in the background when dropped, exactly as a [`StepToken`]
//! is. Revoking the step token revokes every credential exchanged from it,
//! so finish the credentials first, then the step token.
//!
//! The example is on [`TargetCredential`].

use crate::client::{Client, Revocation};
use crate::error::Error;
use crate::step::StepToken;
use std::fmt;
use std::time::{Duration, SystemTime};
use stint_proto::{
    GithubToken, PostgresLogin, TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN, TOKEN_TYPE_POSTGRES_LOGIN,
    TargetCredentialResponse,
};

/// The longest target name, in bytes.
pub const MAX_TARGET_NAME_LEN: usize = 32;

/// The kind of a PostgreSQL login ([`TargetCredential::kind`]).
pub const KIND_POSTGRES: &str = "postgres";
/// The kind of a GitHub target: its credential is an installation token.
pub const KIND_GITHUB: &str = "github";
/// The user name git sends with an installation token over HTTPS.
pub const GIT_USERNAME: &str = "x-access-token";

/// Check that `name` can name a target: a lowercase ASCII letter, then
/// lowercase letters, digits and `-`, at most [`MAX_TARGET_NAME_LEN`]
/// bytes. [`StepToken::target_credential`] checks it before sending
/// anything; a CLI can check its arguments with it.
pub fn check_target_name(name: &str) -> Result<(), Error> {
    let mut bytes = name.bytes();
    let well_formed = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !well_formed || name.len() > MAX_TARGET_NAME_LEN {
        return Err(Error::Config(format!(
            "{name:?} is not a target name: a lowercase letter, then lowercase letters, digits and '-', at most {MAX_TARGET_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

impl StepToken {
    /// Exchange this step token for the native credential of `target` (a
    /// target the step lists in the policy), e.g. a PostgreSQL login. The
    /// returned guard revokes that credential when done with; see
    /// [`TargetCredential`].
    ///
    /// `target` is checked first ([`check_target_name`]): a malformed one
    /// is [`Error::Config`], and nothing is sent. The broker's refusals are
    /// [`Error::OAuth`]: `invalid_target` (no such target, the step does
    /// not list it, or this token was not minted for it: request the step
    /// token with `.audience(target)`), `invalid_scope` (the target refused what the
    /// step's scopes ask), `invalid_grant` (the step token is revoked or
    /// expired, or was already exchanged for this target), and
    /// `temporarily_unavailable` (the target could not be reached; a retry
    /// with a new step token may work). The exchange is not retried: one
    /// step token gets one credential per target. If the answer is lost on
    /// the way, the credential it made is revoked with the step token.
    pub async fn target_credential(&self, target: &str) -> Result<TargetCredential, Error> {
        check_target_name(target)?;
        let requested_at = SystemTime::now();
        let response = self
            .client()
            .exchange_for_target(self.token(), target)
            .await?;
        TargetCredential::from_response(
            self.client().clone(),
            self.token().to_owned(),
            target,
            response,
            requested_at,
        )
    }
}

/// The native credential of one target, exchanged from a step token, and
/// revoked when the work with it ends.
///
/// It is a guard as [`StepToken`] is, with the same guarantees:
/// [`finish`](Self::finish) revokes it (`DELETE
/// /v1/target-credentials/{credential_id}`, with retries) and returns once
/// the broker acknowledged; a guard dropped without `finish` revokes it in
/// the background, and the end of the Tokio runtime (or, outside one, the
/// drop itself) waits for that, within
/// [`EXIT_REVOCATION_TIMEOUT`](crate::EXIT_REVOCATION_TIMEOUT) shared with
/// the step tokens dropped at the same time. See
/// [`StepToken`](crate::StepToken#what-is-guaranteed) for what holds and
/// what cannot.
///
/// The guard keeps a copy of the step token, to authenticate the
/// revocation. Revoking the step token revokes this credential too, so a
/// credential finished after its step token may find it no longer accepted
/// (the credential is revoked either way): finish credentials first.
///
/// Neither the secret nor the step token is printed by `Debug`.
///
/// ```no_run
/// # async fn step(client: stint_client::Client) -> Result<(), stint_client::Error> {
/// let step = client
///     .step("migrate")
///     .scope("insert:orders-db/public/orders")
///     .audience("orders-db") // the target: a step token is exchanged only there
///     .request()
///     .await?;
/// let login = step.target_credential("orders-db").await?;
/// // PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, in the
/// // child's environment only.
/// let migrated = tokio::process::Command::new("psql")
///     .args(["-f", "migrate.sql"])
///     .envs(login.libpq_env())
///     .status()
///     .await;
/// login.finish().await?;
/// step.finish().await?;
/// # let _ = migrated;
/// # Ok(())
/// # }
/// ```
#[must_use = "a TargetCredential is revoked when dropped; keep it while the credential is in use"]
pub struct TargetCredential {
    client: Client,
    /// The step token it was exchanged from; `None` once revoked.
    step_token: Option<String>,
    secret: String,
    credential_id: String,
    target: String,
    kind: String,
    issued_token_type: String,
    scope: String,
    expires_in: u64,
    expires_at: SystemTime,
    postgres: Option<PostgresLogin>,
    github: Option<GithubToken>,
}

impl TargetCredential {
    /// The guard for the broker's answer to an exchange for `target`;
    /// an answer that is not what the protocol says is refused (see
    /// [`check_response`]), and what it names revoked in the background.
    fn from_response(
        client: Client,
        step_token: String,
        target: &str,
        response: TargetCredentialResponse,
        requested_at: SystemTime,
    ) -> Result<Self, Error> {
        if let Err(reason) = check_response(target, &response) {
            if !response.credential_id.is_empty() {
                client.revoke_in_background(Revocation::TargetCredential {
                    credential_id: response.credential_id,
                    step_token,
                });
            }
            return Err(Error::protocol(client.token_endpoint(), reason));
        }
        Ok(Self {
            client,
            step_token: Some(step_token),
            expires_at: requested_at + Duration::from_secs(response.expires_in),
            secret: response.access_token,
            credential_id: response.credential_id,
            target: response.target,
            kind: response.kind,
            issued_token_type: response.issued_token_type,
            scope: response.scope,
            expires_in: response.expires_in,
            postgres: response.postgres,
            github: response.github,
        })
    }

    /// The secret itself: for a PostgreSQL login, the password. Pass it to
    /// the target only; never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The credential's id at Stint (not a secret): what the audit log
    /// names it by, and the handle to revoke it alone.
    pub fn credential_id(&self) -> &str {
        &self.credential_id
    }

    /// The target's name in the policy.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The target's kind: [`KIND_POSTGRES`] for a PostgreSQL login.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// What the secret is (`issued_token_type`), e.g.
    /// `urn:stint:params:oauth:token-type:postgres-login`.
    pub fn issued_token_type(&self) -> &str {
        &self.issued_token_type
    }

    /// The scopes the credential carries (those of the step token that
    /// name this target), space-separated.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The scopes the credential carries, one by one.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// When the credential stops working (computed from `expires_in` when
    /// it was requested): the step token's expiry.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The lifetime the broker gave, in seconds (`expires_in`).
    pub fn expires_in(&self) -> u64 {
        self.expires_in
    }

    /// How to use a PostgreSQL login (kind [`KIND_POSTGRES`]): host, port,
    /// database, role and `sslmode`.
    pub fn postgres(&self) -> Option<&PostgresLogin> {
        self.postgres.as_ref()
    }

    /// How to use a GitHub installation token (kind [`KIND_GITHUB`]): the
    /// API, git's host, the installation, its repositories and
    /// permissions.
    pub fn github(&self) -> Option<&GithubToken> {
        self.github.as_ref()
    }

    /// A GitHub installation token as `gh` and most GitHub tooling read
    /// it: `GH_TOKEN` and `GITHUB_TOKEN` for github.com; for GitHub
    /// Enterprise Server only `GH_HOST`, `GH_ENTERPRISE_TOKEN` and
    /// `GITHUB_ENTERPRISE_TOKEN` (tools send `GH_TOKEN` to github.com).
    /// Empty for other kinds. For git over HTTPS the token is the password
    /// of user [`GIT_USERNAME`] (`stint exec` sets up a credential helper).
    pub fn github_env(&self) -> Vec<(&'static str, String)> {
        match &self.github {
            // gh and most tools send GH_TOKEN and GITHUB_TOKEN to
            // github.com: a GitHub Enterprise Server's token goes only in
            // the variables meant for it.
            Some(github) if self.kind == KIND_GITHUB && github.git_host == "github.com" => vec![
                ("GH_TOKEN", self.secret.clone()),
                ("GITHUB_TOKEN", self.secret.clone()),
            ],
            Some(github) if self.kind == KIND_GITHUB => vec![
                ("GH_HOST", github.git_host.clone()),
                ("GH_ENTERPRISE_TOKEN", self.secret.clone()),
                ("GITHUB_ENTERPRISE_TOKEN", self.secret.clone()),
            ],
            _ => Vec::new(),
        }
    }

    /// The environment a command gets for this credential, whatever its
    /// kind: [`Self::libpq_env`] or [`Self::github_env`].
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.libpq_env();
        env.extend(self.github_env());
        env
    }

    /// The environment libpq (`psql`, most PostgreSQL drivers) reads a
    /// login from: `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`,
    /// `PGPASSWORD` (the secret) and `PGSSLMODE`, for a PostgreSQL login,
    /// and over TLS `PGCHANNELBINDING=require` (the password is then only
    /// ever proven by SCRAM bound to the TLS session, never sent to a
    /// server in the middle that asks for it in clear); empty for another
    /// kind. Set them in a child's environment, not in this process's
    /// (which any child would inherit). With `verify-ca` or `verify-full`,
    /// libpq needs the server's roots: `PGSSLROOTCERT`, from the job's own
    /// environment.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        match &self.postgres {
            Some(login) if self.kind == KIND_POSTGRES => {
                let mut env = vec![
                    ("PGHOST", login.host.clone()),
                    ("PGPORT", login.port.to_string()),
                    ("PGDATABASE", login.database.clone()),
                    ("PGUSER", login.user.clone()),
                    ("PGPASSWORD", self.secret.clone()),
                    ("PGSSLMODE", login.sslmode.clone()),
                ];
                if login.sslmode != "disable" {
                    env.push(("PGCHANNELBINDING", "require".to_owned()));
                }
                env
            }
            _ => Vec::new(),
        }
    }

    /// The work with the credential is done: revoke it and wait for the
    /// broker's acknowledgement (also `Ok` if it was already revoked). If
    /// this future is dropped before it completes, or the revocation fails
    /// after its retries, the guard still drops with the credential and
    /// revokes it in the background.
    pub async fn finish(mut self) -> Result<(), Error> {
        let Some(step_token) = self.step_token.as_deref() else {
            return Ok(());
        };
        let result = self
            .client
            .revoke_target_credential(&self.credential_id, step_token)
            .await;
        if result.is_ok() {
            self.step_token = None;
        }
        result
    }
}

/// Whether `response` is an answer to an exchange for `target`: for that
/// target, with a credential id (to revoke it by), and, for kind
/// `postgres`, a PostgreSQL login with what libpq needs.
fn check_response(target: &str, response: &TargetCredentialResponse) -> Result<(), String> {
    if response.credential_id.is_empty() {
        return Err("the target credential has no credential_id".to_owned());
    }
    if response.target != target {
        return Err(format!(
            "asked for target {target:?}, answered for {:?}",
            response.target
        ));
    }
    if response.kind == KIND_POSTGRES
        && (response.postgres.is_none() || response.issued_token_type != TOKEN_TYPE_POSTGRES_LOGIN)
    {
        return Err("a postgres credential without its PostgreSQL login".to_owned());
    }
    if response.kind == KIND_GITHUB
        && (response.github.is_none()
            || response.issued_token_type != TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN)
    {
        return Err("a github credential without its installation token's details".to_owned());
    }
    Ok(())
}

impl Drop for TargetCredential {
    fn drop(&mut self) {
        if let Some(step_token) = self.step_token.take() {
            tracing::debug!(
                credential_id = %self.credential_id,
                target = %self.target,
                "target credential dropped without finish(): revoking it in the background"
            );
            self.client
                .revoke_in_background(Revocation::TargetCredential {
                    credential_id: self.credential_id.clone(),
                    step_token,
                });
        }
    }
}

impl fmt::Debug for TargetCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetCredential")
            .field("credential_id", &self.credential_id)
            .field("target", &self.target)
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .field("postgres", &self.postgres)
            .field("github", &self.github)
            .field("secret", &"<redacted>")
            .field("step_token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(kind: &str, target: &str) -> TargetCredentialResponse {
        TargetCredentialResponse {
            access_token: "pw-s3cret-value".to_owned(),
            token_type: stint_proto::TOKEN_TYPE_NOT_APPLICABLE.to_owned(),
            issued_token_type: TOKEN_TYPE_POSTGRES_LOGIN.to_owned(),
            expires_in: 300,
            credential_id: "tc-123".to_owned(),
            target: target.to_owned(),
            kind: kind.to_owned(),
            scope: "write:db/orders read:db/orders".to_owned(),
            postgres: (kind == KIND_POSTGRES).then(|| PostgresLogin {
                host: "db.internal".to_owned(),
                port: 5433,
                database: "orders".to_owned(),
                user: "stint_abc".to_owned(),
                sslmode: "verify-full".to_owned(),
                expires_at: 1_900_000_000,
            }),
            github: (kind == KIND_GITHUB).then(|| GithubToken {
                api_url: "https://ghe.example.com/api/v3".to_owned(),
                git_host: "ghe.example.com".to_owned(),
                installation_id: 42,
                repositories: vec!["acme/web".to_owned()],
                permissions: [("contents".to_owned(), "write".to_owned())].into(),
                github_expires_at: 1_900_000_000,
            }),
            federation: None,
        }
    }

    #[test]
    fn a_github_token_becomes_gh_environment() {
        let mut answer = response(KIND_GITHUB, "github");
        answer.issued_token_type = TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN.to_owned();
        let token = credential(answer.clone());
        let env = token.env();
        for name in ["GH_TOKEN", "GITHUB_TOKEN"] {
            assert!(
                !env.iter().any(|(n, _)| *n == name),
                "{name} goes to github.com"
            );
        }
        for name in ["GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN"] {
            assert!(
                env.contains(&(name, "pw-s3cret-value".to_owned())),
                "{name}"
            );
        }
        assert!(env.contains(&("GH_HOST", "ghe.example.com".to_owned())));
        assert!(token.libpq_env().is_empty());
        assert_eq!(token.github().map(|g| g.installation_id), Some(42));
        let mut public = answer.clone();
        if let Some(github) = public.github.as_mut() {
            github.git_host = "github.com".to_owned();
        }
        let env = credential(public).env();
        assert_eq!(env.len(), 2, "github.com needs no GH_HOST: {env:?}");
        let mut missing = answer;
        missing.github = None;
        assert!(check_response("github", &missing).is_err());
    }

    /// A guard that will not be revoked when dropped (no broker here).
    fn credential(response: TargetCredentialResponse) -> TargetCredential {
        let mut credential = TargetCredential::from_response(
            Client::offline_for_tests(),
            "step-t0ken-value".to_owned(),
            &response.target.clone(),
            response,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        credential.step_token = None;
        credential
    }

    #[test]
    fn target_names_are_checked_before_anything_is_sent() {
        for good in ["a", "orders-db", "pg1", "a-b-c-9", &"a".repeat(32)] {
            assert!(check_target_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "1db",
            "-db",
            "Orders",
            "orders_db",
            "orders db",
            "orders/db",
            "ordérs",
            "urn:stint:target:db",
            &"a".repeat(33),
        ] {
            let error = check_target_name(bad).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_postgres_login_becomes_libpq_environment() {
        let login = credential(response(KIND_POSTGRES, "orders-db"));
        assert_eq!(login.secret(), "pw-s3cret-value");
        assert_eq!(login.credential_id(), "tc-123");
        assert_eq!(login.target(), "orders-db");
        assert_eq!(login.kind(), "postgres");
        assert_eq!(login.scope(), "write:db/orders read:db/orders");
        assert_eq!(login.scopes().count(), 2);
        assert_eq!(
            login.expires_at(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(300)
        );
        assert_eq!(login.postgres().map(|p| p.port), Some(5433));
        let env = login.libpq_env();
        let names: Vec<_> = env.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "PGHOST",
                "PGPORT",
                "PGDATABASE",
                "PGUSER",
                "PGPASSWORD",
                "PGSSLMODE",
                "PGCHANNELBINDING"
            ]
        );
        let value = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(value("PGHOST").as_deref(), Some("db.internal"));
        assert_eq!(value("PGPORT").as_deref(), Some("5433"));
        assert_eq!(value("PGPASSWORD").as_deref(), Some("pw-s3cret-value"));
        assert_eq!(value("PGSSLMODE").as_deref(), Some("verify-full"));
        assert_eq!(value("PGCHANNELBINDING").as_deref(), Some("require"));
        // Without TLS there is nothing to bind to.
        let mut plain = response(KIND_POSTGRES, "orders-db");
        if let Some(login) = plain.postgres.as_mut() {
            login.sslmode = "disable".to_owned();
        }
        let plain = credential(plain);
        assert!(
            !plain
                .libpq_env()
                .iter()
                .any(|(name, _)| *name == "PGCHANNELBINDING")
        );
    }

    #[test]
    fn another_kind_has_no_libpq_environment() {
        let mut other = response("vault", "repo");
        other.issued_token_type = "urn:example:other".to_owned();
        let other = credential(other);
        assert!(other.postgres().is_none());
        assert!(other.libpq_env().is_empty());
        assert!(other.env().is_empty());
    }

    #[test]
    fn debug_prints_neither_the_secret_nor_the_step_token() {
        let mut login = credential(response(KIND_POSTGRES, "orders-db"));
        login.step_token = Some("step-t0ken-value".to_owned());
        let printed = format!("{login:?}");
        login.step_token = None;
        assert!(!printed.contains("pw-s3cret-value"), "{printed}");
        assert!(!printed.contains("step-t0ken-value"), "{printed}");
        assert!(printed.contains("tc-123"), "{printed}");
    }

    #[test]
    fn an_answer_that_is_not_the_protocol_is_refused() {
        assert!(check_response("orders-db", &response(KIND_POSTGRES, "orders-db")).is_ok());
        let wrong_target = response(KIND_POSTGRES, "other-db");
        assert!(check_response("orders-db", &wrong_target).is_err());
        let mut no_login = response(KIND_POSTGRES, "orders-db");
        no_login.postgres = None;
        assert!(check_response("orders-db", &no_login).is_err());
        let mut not_a_login = response(KIND_POSTGRES, "orders-db");
        not_a_login.issued_token_type = "urn:example:other".to_owned();
        assert!(check_response("orders-db", &not_a_login).is_err());
        let mut no_id = response(KIND_POSTGRES, "orders-db");
        no_id.credential_id = String::new();
        assert!(check_response("orders-db", &no_id).is_err());
    }

    /// One request a stand-in broker received.
    #[derive(Debug, Clone)]
    struct Received {
        request_line: String,
        authorization: Option<String>,
        body: String,
    }

    /// A stand-in broker on an ephemeral port: answers each request with
    /// the next of `answers` (status, JSON body), and records it.
    async fn stand_in(
        answers: Vec<(u16, String)>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<Received>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let (sent, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                let (head, length) = loop {
                    let read = stream.read(&mut buffer).await.unwrap();
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_owned();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_owned)
                            })
                            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                        if request.len() >= end + 4 + length {
                            break (head, length);
                        }
                    }
                };
                let start = request.len() - length;
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (n, v) = l.split_once(": ")?;
                        n.eq_ignore_ascii_case(name).then(|| v.to_owned())
                    })
                };
                sent.send(Received {
                    request_line: head.lines().next().unwrap_or_default().to_owned(),
                    authorization: header("authorization"),
                    body: String::from_utf8_lossy(&request[start..]).into_owned(),
                })
                .unwrap();
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
        });
        (issuer, received)
    }

    /// A step token guard for `client`: detach it at the end of the test,
    /// or its drop revokes it.
    fn step_token(client: Client) -> StepToken {
        StepToken::for_tests(client, "step-t0ken-value")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn exchange_then_finish_speak_the_protocol() {
        let answer = serde_json::to_string(&response(KIND_POSTGRES, "orders-db")).unwrap();
        let (issuer, mut received) = stand_in(vec![(200, answer), (204, String::new())]).await;
        let step = step_token(Client::for_tests_at(&issuer));
        let login = step.target_credential("orders-db").await.unwrap();
        let exchange = received.recv().await.unwrap();
        assert_eq!(exchange.request_line, "POST /oauth2/token HTTP/1.1");
        assert_eq!(exchange.authorization, None, "no client authentication");
        let form = stint_core::form::FormParams::parse(exchange.body.as_bytes()).unwrap();
        assert_eq!(
            form.get("grant_type"),
            Some(stint_proto::GRANT_TOKEN_EXCHANGE)
        );
        assert_eq!(form.get("subject_token"), Some("step-t0ken-value"));
        assert_eq!(
            form.get("subject_token_type"),
            Some(stint_proto::TOKEN_TYPE_ACCESS_TOKEN)
        );
        assert_eq!(form.get("audience"), Some("orders-db"));
        assert_eq!(login.secret(), "pw-s3cret-value");

        login.finish().await.unwrap();
        let revocation = received.recv().await.unwrap();
        assert_eq!(
            revocation.request_line,
            "DELETE /v1/target-credentials/tc-123 HTTP/1.1"
        );
        assert_eq!(
            revocation.authorization.as_deref(),
            Some("Bearer step-t0ken-value")
        );
        let _ = step.detach();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dropped_credential_is_revoked_in_the_background() {
        let answer = serde_json::to_string(&response(KIND_POSTGRES, "orders-db")).unwrap();
        let (issuer, mut received) = stand_in(vec![(200, answer), (204, String::new())]).await;
        let client = Client::for_tests_at(&issuer);
        let step = step_token(client.clone());
        drop(step.target_credential("orders-db").await.unwrap());
        client.flush().await;
        let _exchange = received.recv().await.unwrap();
        let revocation = received.recv().await.unwrap();
        assert_eq!(
            revocation.request_line,
            "DELETE /v1/target-credentials/tc-123 HTTP/1.1"
        );
        assert_eq!(
            revocation.authorization.as_deref(),
            Some("Bearer step-t0ken-value")
        );
        let _ = step.detach();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_refusal_is_the_brokers_error_and_a_bad_name_sends_nothing() {
        let refusal = r#"{"error":"invalid_target","error_description":"the step does not list target orders-db"}"#;
        let (issuer, mut received) = stand_in(vec![(400, refusal.to_owned())]).await;
        let step = step_token(Client::for_tests_at(&issuer));
        let error = step.target_credential("Orders").await.unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
        let error = step.target_credential("orders-db").await.unwrap_err();
        assert_eq!(error.oauth_code(), Some("invalid_target"));
        assert!(error.is_denial());
        assert!(error.to_string().contains("does not list"), "{error}");
        // Only the well-formed name was sent.
        assert!(received.recv().await.is_some());
        assert!(received.recv().await.is_none());
        let _ = step.detach();
    }
}
