//! The broker client: discovery, client authentication, and the OAuth
//! calls everything else is built on.

use crate::error::{Error, PendingApproval};
use crate::step::{Job, StepRequest};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stint_proto::{
    APPROVALS_PATH, ApprovalList, ApprovalView, ApproveBody, AuthorizationServerMetadata,
    DecisionBody, DevClient, GRANT_TOKEN_EXCHANGE, IntrospectionResponse, JobRevocationResponse,
    KEY_ROTATION_PATH, KeyRotationResponse, METADATA_PATH, StepRevocationResponse,
    TARGET_CREDENTIALS_PATH, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN,
    TargetCredentialResponse, WorkloadState,
};
use tokio::task::JoinHandle;

/// The largest response body the SDK reads from a broker.
pub const MAX_RESPONSE_LEN: usize = 1024 * 1024;

/// How long to wait for a connection, and for a whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a revocation on connection errors, 408, 429 and 5xx: the
/// delays between attempts (about 6 s in all; with every attempt timing
/// out, about a minute), then the error is returned.
const REVOKE_BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(4),
];

/// The longest the revocations of dropped [`StepToken`](crate::StepToken)s
/// and [`TargetCredential`](crate::TargetCredential)s wait for a broker that does not answer at the end of a runtime (its
/// shutdown: `main` returned), or when dropped outside any runtime, retries
/// included, in all: the revocations in flight are sent at once and share
/// this deadline, and once a broker has let it pass, the ones that follow
/// in the same shutdown do not wait. A broker that answers at all answers
/// in milliseconds; one that does not cannot keep the process from exiting.
pub const EXIT_REVOCATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Client credentials: a client id and its secret. The secret is never
/// printed, not even by `Debug`.
#[derive(Clone)]
pub struct Credentials {
    client_id: String,
    client_secret: String,
}

impl Credentials {
    /// Credentials from an id and a secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn basic(&self) -> String {
        // RFC 6749 section 2.3.1: form-urlencode both before Basic.
        let raw = format!(
            "{}:{}",
            form_encode(&self.client_id),
            form_encode(&self.client_secret)
        );
        format!("Basic {}", STANDARD.encode(raw))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Where a federated job's platform ID token comes from.
#[derive(Clone)]
pub enum SubjectToken {
    /// The token itself.
    Value(String),
    /// A file holding it, read at each use (Kubernetes rotates projected
    /// service account tokens in place; a CI step may refresh its own).
    File(std::path::PathBuf),
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => f.write_str("SubjectToken::Value(<redacted>)"),
            Self::File(path) => write!(f, "SubjectToken::File({})", path.display()),
        }
    }
}

impl SubjectToken {
    fn read(&self) -> Result<String, Error> {
        match self {
            Self::Value(token) => Ok(token.clone()),
            Self::File(path) => {
                let unreadable = |e: std::io::Error| {
                    Error::Config(format!(
                        "cannot read the subject token {}: {e}",
                        path.display()
                    ))
                };
                let metadata = std::fs::metadata(path).map_err(unreadable)?;
                if metadata.len() > 64 * 1024 {
                    return Err(Error::Config(format!(
                        "the subject token file {} is over 64 KiB",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(path).map_err(unreadable)?;
                Ok(text.trim().to_owned())
            }
        }
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone)]
enum Auth {
    /// A client id and secret (HTTP Basic).
    Secret(Credentials),
    /// A platform ID token: token exchange to mint, `Authorization: Bearer`
    /// to revoke.
    Federated(SubjectToken),
    /// An operator: an operator key or an OIDC ID token, as a bearer
    /// credential for `/v1/approvals`.
    Operator(SubjectToken),
}

impl Auth {
    fn authorization(&self) -> Result<String, Error> {
        match self {
            Self::Secret(credentials) => Ok(credentials.basic()),
            Self::Federated(token) | Self::Operator(token) => {
                Ok(format!("Bearer {}", token.read()?))
            }
        }
    }
}

/// How to build a [`Client`] or a [`Verifier`](crate::Verifier): the issuer
/// URL and the TLS trust.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) issuer: String,
    ca_pem: Vec<Vec<u8>>,
    built_in_roots: bool,
}

impl Connection {
    /// Check the issuer URL: `https://`, or `http://` on a loopback host
    /// only (a dev broker), never with a path, query or fragment.
    fn check_issuer(&self) -> Result<(), Error> {
        let bad = |why: &str| Error::Config(format!("the issuer {:?} {why}", self.issuer));
        let (rest, plain) = if let Some(rest) = self.issuer.strip_prefix("https://") {
            (rest, false)
        } else if let Some(rest) = self.issuer.strip_prefix("http://") {
            (rest, true)
        } else {
            return Err(bad("is not an https:// URL"));
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad("must be an origin (scheme, host, optional port)"));
        }
        if plain && !is_loopback_authority(rest) {
            return Err(bad(
                "is plain http:// to a host that is not loopback: the client secret would cross the network in clear; use https://",
            ));
        }
        Ok(())
    }

    pub(crate) fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            ca_pem: Vec::new(),
            built_in_roots: true,
        }
    }

    pub(crate) fn add_ca_pem(&mut self, pem: Vec<u8>) {
        self.ca_pem.push(pem);
    }

    pub(crate) fn add_ca_file(&mut self, path: &Path) -> Result<(), Error> {
        let pem = std::fs::read(path).map_err(|e| {
            Error::Config(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        self.add_ca_pem(pem);
        Ok(())
    }

    pub(crate) fn only_custom_roots(&mut self) {
        self.built_in_roots = false;
    }

    pub(crate) fn http_client(&self) -> Result<reqwest::Client, Error> {
        self.http_client_with(Some(REQUEST_TIMEOUT))
    }

    /// A client for long-lived streams: no limit on a whole response (the
    /// reader watches for silence instead), the same TLS trust.
    pub(crate) fn stream_client(&self) -> Result<reqwest::Client, Error> {
        self.http_client_with(None)
    }

    fn http_client_with(&self, timeout: Option<Duration>) -> Result<reqwest::Client, Error> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(!self.issuer.starts_with("http://"))
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(self.built_in_roots);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        for pem in &self.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("the CA bundle is not PEM: {e}")))?;
            if certificates.is_empty() {
                return Err(Error::Config(
                    "the CA bundle holds no certificate".to_owned(),
                ));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder
            .build()
            .map_err(|e| Error::Config(format!("cannot set up HTTPS: {e}")))
    }

    /// Fetch the broker's RFC 8414 metadata and check that it is the
    /// broker's own (its `issuer` is the one asked, section 3.3).
    pub(crate) async fn discover(
        &self,
        http: &reqwest::Client,
    ) -> Result<AuthorizationServerMetadata, Error> {
        self.check_issuer()?;
        let url = format!("{}{METADATA_PATH}", self.issuer);
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, &e))?;
        let metadata: AuthorizationServerMetadata = read_json(&url, response).await?;
        if metadata.issuer != self.issuer {
            return Err(Error::protocol(
                &url,
                format!(
                    "the metadata names issuer {:?}, not {:?}",
                    metadata.issuer, self.issuer
                ),
            ));
        }
        // Stint serves every endpoint at its own origin. One elsewhere is
        // not Stint's, and would be sent the client's secret.
        let origin = format!("{}/", self.issuer);
        let endpoints = [
            &metadata.token_endpoint,
            &metadata.revocation_endpoint,
            &metadata.introspection_endpoint,
            &metadata.jwks_uri,
        ];
        if let Some(foreign) = endpoints.iter().find(|e| !e.starts_with(&origin)) {
            return Err(Error::protocol(
                &url,
                format!("the endpoint {foreign:?} is not on the issuer's origin"),
            ));
        }
        Ok(metadata)
    }
}

/// Build a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    connection: Connection,
    auth: Option<Auth>,
    error: Option<Error>,
}

impl ClientBuilder {
    /// Authenticate as this client (`client_secret_basic`).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.auth = Some(Auth::Secret(credentials));
        self
    }

    /// Authenticate with the platform's ID token instead of a secret (a job
    /// on GitHub Actions, GitLab CI or Kubernetes whose workload the policy
    /// binds to that identity): tokens are minted by RFC 8693 token
    /// exchange, and revoked with the ID token as a bearer credential.
    pub fn subject_token(mut self, token: SubjectToken) -> Self {
        self.auth = Some(Auth::Federated(token));
        self
    }

    /// Act as an operator (a person who approves elevations), with an
    /// operator key from `stintd new-operator` or an OIDC ID token whose
    /// identity the policy binds to an operator: for
    /// [`Client::approvals`], [`Client::approve`], [`Client::deny`] and
    /// [`Client::revoke_approval`]. Such a client cannot mint.
    pub fn operator(mut self, credential: SubjectToken) -> Self {
        self.auth = Some(Auth::Operator(credential));
        self
    }

    /// Trust the CA certificates in this PEM bundle, besides the built-in
    /// web roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.connection.add_ca_pem(pem.into());
        self
    }

    /// Trust the CA certificates in this PEM file.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        if let Err(error) = self.connection.add_ca_file(path.as_ref()) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Trust only the CA certificates given with [`Self::ca_pem`] or
    /// [`Self::ca_file`], not the built-in web roots.
    pub fn only_custom_roots(mut self) -> Self {
        self.connection.only_custom_roots();
        self
    }

    /// Discover the broker and return a client for it.
    pub async fn build(self) -> Result<Client, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let auth = self.auth.ok_or_else(|| {
            Error::Config(
                "credentials are required (ClientBuilder::credentials, ::subject_token or ::operator)"
                    .into(),
            )
        })?;
        let http = self.connection.http_client()?;
        let metadata = self.connection.discover(&http).await?;
        let revocation_endpoint = metadata.revocation_endpoint.clone();
        let introspection_endpoint = metadata.introspection_endpoint.clone();
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                issuer: self.connection.issuer.clone(),
                connection: self.connection,
                token_endpoint: metadata.token_endpoint,
                revocation_endpoint,
                introspection_endpoint,
                auth,
                pending: Mutex::new(Vec::new()),
                in_flight: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// A connection to a broker, authenticated as one client. Cheap to clone;
/// clones share the connection pool and the revocations in flight.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    issuer: String,
    /// The TLS trust `http` was built with, for a client of its own when
    /// this one's runtime is gone (see [`Client::revoke_blocking`]).
    connection: Connection,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    auth: Auth,
    /// Revocations started by dropped [`StepToken`](crate::StepToken)s and
    /// [`TargetCredential`](crate::TargetCredential)s. Handles, not a
    /// `JoinSet`: dropping one (a cancelled `flush`) does not abort its
    /// revocation.
    pending: Mutex<Vec<JoinHandle<()>>>,
    /// Those revocations not done yet.
    in_flight: Mutex<Vec<Revocation>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.client_id())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Start building a client for the broker at `issuer` (for example
    /// `https://stint.example.com`).
    pub fn builder(issuer: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            connection: Connection::new(issuer),
            auth: None,
            error: None,
        }
    }

    /// A client that was never connected, for unit tests that do not talk
    /// to a broker.
    #[cfg(test)]
    pub(crate) fn offline_for_tests() -> Self {
        Self::for_tests_at("http://127.0.0.1:9")
    }

    /// A client for a test's stand-in broker at `issuer`, without
    /// discovery.
    #[cfg(test)]
    pub(crate) fn for_tests_at(issuer: &str) -> Self {
        let issuer = issuer.to_owned();
        let connection = Connection::new(issuer.clone());
        Self {
            inner: Arc::new(Inner {
                http: reqwest::Client::new(),
                token_endpoint: format!("{issuer}/oauth2/token"),
                revocation_endpoint: format!("{issuer}/oauth2/revoke"),
                introspection_endpoint: format!("{issuer}/oauth2/introspect"),
                issuer,
                connection,
                auth: Auth::Secret(Credentials::new("unit", "test")),
                pending: Mutex::new(Vec::new()),
                in_flight: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A client from a `dev-client.json` file, as `stintd --dev` writes it.
    pub async fn from_dev_client_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let dev: DevClient = serde_json::from_slice(&text).map_err(|e| {
            Error::Config(format!(
                "{} is not a credentials file: {}",
                path.display(),
                e.classify_name()
            ))
        })?;
        Self::builder(dev.issuer)
            .credentials(Credentials::new(dev.client_id, dev.client_secret))
            .build()
            .await
    }

    /// The broker's issuer URL.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The broker's token endpoint.
    pub(crate) fn token_endpoint(&self) -> &str {
        &self.inner.token_endpoint
    }

    /// The client id this client authenticates as; `None` for a client
    /// that authenticates with a platform ID token.
    pub fn client_id(&self) -> Option<&str> {
        match &self.inner.auth {
            Auth::Secret(credentials) => Some(&credentials.client_id),
            Auth::Federated(_) | Auth::Operator(_) => None,
        }
    }

    /// Ask for a token for `step` (a step name, or `workflow/step`).
    pub fn step(&self, step: impl Into<String>) -> StepRequest {
        StepRequest::new(self.clone(), step.into())
    }

    /// A handle on job `id`, to mint its steps' tokens and to revoke them
    /// all at once with [`Job::complete`].
    pub fn job(&self, id: impl Into<String>) -> Job {
        Job::new(self.clone(), id.into())
    }

    /// Ask the broker whether `token` is active (RFC 7662), authenticated
    /// as this client: HTTP Basic with a secret; a federated client
    /// ([`ClientBuilder::subject_token`]) sends its platform ID token as
    /// `Authorization: Bearer`, read again at each call.
    pub async fn introspect(&self, token: &str) -> Result<IntrospectionResponse, Error> {
        let url = &self.inner.introspection_endpoint;
        let response = self.post_form(url, &[("token", token)]).await?;
        read_json(url, response).await
    }

    /// Revoke `token` (RFC 7009), retrying on connection errors and 5xx.
    /// Returns once the broker acknowledged: from then on the token is
    /// inactive.
    pub async fn revoke(&self, token: &str) -> Result<(), Error> {
        let url = &self.inner.revocation_endpoint;
        retrying(url, || async {
            let authorization = match &self.inner.auth {
                Auth::Secret(credentials) => credentials.basic(),
                // A federated client revokes a step token with the token
                // itself: it outlives the platform ID token that minted it.
                Auth::Federated(_) | Auth::Operator(_) => format!("Bearer {token}"),
            };
            let response = self
                .send_form(url, &[("token", token)], Some(authorization))
                .await?;
            read_empty(url, response).await
        })
        .await
    }

    /// Revoke one target credential alone (`DELETE
    /// /v1/target-credentials/{credential_id}`), authenticated by
    /// `step_token`, the step token it was exchanged from, retrying on
    /// connection errors and 5xx. Returns once the broker acknowledged
    /// (also when it was already revoked). What
    /// [`TargetCredential::finish`](crate::TargetCredential::finish) does;
    /// revoking the step token revokes all its target credentials at once.
    pub async fn revoke_target_credential(
        &self,
        credential_id: &str,
        step_token: &str,
    ) -> Result<(), Error> {
        let url = format!(
            "{}{TARGET_CREDENTIALS_PATH}/{}",
            self.inner.issuer,
            path_segment_encode(credential_id)
        );
        retrying(&url, || async {
            let response = self
                .inner
                .http
                .delete(&url)
                .header(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {step_token}"),
                )
                .send()
                .await
                .map_err(|e| Error::unreachable(&url, &e))?;
            read_empty(&url, response).await
        })
        .await
    }

    /// Exchange `step_token` for the native credential of `target` (RFC
    /// 8693 at the token endpoint, no client authentication: the step
    /// token is the credential). Not retried: the broker answers a second
    /// exchange of the same token and target `invalid_grant`.
    pub(crate) async fn exchange_for_target(
        &self,
        step_token: &str,
        target: &str,
    ) -> Result<TargetCredentialResponse, Error> {
        let url = &self.inner.token_endpoint;
        let form = [
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", step_token),
            ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("audience", target),
        ];
        let response = self.send_form(url, &form, None).await?;
        read_json(url, response).await
    }

    /// Revoke what a dropped guard held.
    async fn revoke_one(&self, revocation: &Revocation) -> Result<(), Error> {
        match revocation {
            Revocation::StepToken(token) => self.revoke(token).await,
            Revocation::TargetCredential {
                credential_id,
                step_token,
            } => {
                self.revoke_target_credential(credential_id, step_token)
                    .await
            }
        }
    }

    /// Revoke every token of job `job` of this client's workload, and
    /// refuse new ones for it, retrying on connection errors and 5xx.
    pub async fn revoke_job(&self, job: &str) -> Result<JobRevocationResponse, Error> {
        let url = format!(
            "{}/v1/jobs/{}/revoke",
            self.inner.issuer,
            path_segment_encode(job)
        );
        retrying(&url, || async {
            let response = self.post_authorized(&url).await?;
            read_json(&url, response).await
        })
        .await
    }

    /// Rotate the broker's signing key (`POST /v1/admin/keys/rotate`); the
    /// client's workload needs the `admin` capability. Not retried: a
    /// second rotation is not what a retry should do.
    pub async fn rotate_keys(&self) -> Result<KeyRotationResponse, Error> {
        let url = format!("{}{KEY_ROTATION_PATH}", self.inner.issuer);
        let response = self.post_authorized(&url).await?;
        read_json(&url, response).await
    }

    /// The approval requests the broker keeps, newest first; only the
    /// pending ones if `pending_only`. Needs an [operator](ClientBuilder::operator).
    pub async fn approvals(&self, pending_only: bool) -> Result<Vec<ApprovalView>, Error> {
        let mut url = format!("{}{APPROVALS_PATH}", self.inner.issuer);
        if pending_only {
            url.push_str("?state=pending");
        }
        let list: ApprovalList = self.get_authorized(&url).await?;
        Ok(list.approvals)
    }

    /// One approval request, with who has approved it so far.
    pub async fn approval(&self, id: &str) -> Result<ApprovalView, Error> {
        self.get_authorized(&self.approval_url(id, "")).await
    }

    /// Approve request `id`, granting at most `duration` (`None`: what was
    /// asked). Returns the request as it now stands: still `pending` until
    /// its quorum of distinct operators is reached.
    pub async fn approve(
        &self,
        id: &str,
        duration: Option<Duration>,
        comment: Option<&str>,
    ) -> Result<ApprovalView, Error> {
        let body = ApproveBody {
            duration: duration.map(|d| format!("{}s", d.as_secs())),
            comment: comment.map(str::to_owned),
        };
        self.post_approval(id, "/approve", &body).await
    }

    /// Deny request `id`, for good; the comment is required.
    pub async fn deny(&self, id: &str, comment: &str) -> Result<ApprovalView, Error> {
        let body = DecisionBody {
            comment: Some(comment.to_owned()),
        };
        self.post_approval(id, "/deny", &body).await
    }

    /// Revoke request `id`'s approval: every token minted under it is
    /// revoked at once, and no more are minted.
    pub async fn revoke_approval(
        &self,
        id: &str,
        comment: Option<&str>,
    ) -> Result<ApprovalView, Error> {
        let body = DecisionBody {
            comment: comment.map(str::to_owned),
        };
        self.post_approval(id, "/revoke", &body).await
    }

    /// A GET with this client's credentials, read as JSON.
    async fn get_authorized<T: DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        let response = self
            .inner
            .http
            .get(url)
            .header(
                reqwest::header::AUTHORIZATION,
                self.inner.auth.authorization()?,
            )
            .send()
            .await
            .map_err(|e| Error::unreachable(url, &e))?;
        read_json(url, response).await
    }

    fn approval_url(&self, id: &str, verb: &str) -> String {
        format!(
            "{}{APPROVALS_PATH}/{}{verb}",
            self.inner.issuer,
            path_segment_encode(id)
        )
    }

    async fn post_approval<T: serde::Serialize>(
        &self,
        id: &str,
        verb: &str,
        body: &T,
    ) -> Result<ApprovalView, Error> {
        self.post_json(&self.approval_url(id, verb), body).await
    }

    /// Revoke every token of one step of job `job` of this client's
    /// workload, and refuse new ones for that step, retrying on connection
    /// errors and 5xx.
    pub async fn revoke_step(
        &self,
        job: &str,
        step: &str,
    ) -> Result<StepRevocationResponse, Error> {
        let url = format!(
            "{}/v1/jobs/{}/steps/{}/revoke",
            self.inner.issuer,
            path_segment_encode(job),
            path_segment_encode(step)
        );
        retrying(&url, || async {
            let response = self.post_authorized(&url).await?;
            read_json(&url, response).await
        })
        .await
    }

    /// The emergency stop (an [operator](ClientBuilder::operator)): revoke
    /// every token of `workload` and refuse it new ones until
    /// [`Self::enable_workload`]. Returns the broker's answer.
    pub async fn stop_workload(
        &self,
        workload: &str,
        comment: Option<&str>,
    ) -> Result<WorkloadState, Error> {
        self.workload_call(workload, "stop", comment).await
    }

    /// Let a stopped `workload` mint again (an operator). What it held
    /// before the stop stays revoked.
    pub async fn enable_workload(
        &self,
        workload: &str,
        comment: Option<&str>,
    ) -> Result<WorkloadState, Error> {
        self.workload_call(workload, "enable", comment).await
    }

    async fn workload_call(
        &self,
        workload: &str,
        verb: &str,
        comment: Option<&str>,
    ) -> Result<WorkloadState, Error> {
        let url = format!(
            "{}/v1/workloads/{}/{verb}",
            self.inner.issuer,
            path_segment_encode(workload)
        );
        let body = DecisionBody {
            comment: comment.map(str::to_owned),
        };
        self.post_json(&url, &body).await
    }

    /// A JSON POST with this client's credentials, read as JSON.
    async fn post_json<T: serde::Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        body: &T,
    ) -> Result<R, Error> {
        let response = self
            .inner
            .http
            .post(url)
            .header(
                reqwest::header::AUTHORIZATION,
                self.inner.auth.authorization()?,
            )
            .json(body)
            .send()
            .await
            .map_err(|e| Error::unreachable(url, &e))?;
        read_json(url, response).await
    }

    /// A bodiless POST with this client's credentials.
    async fn post_authorized(&self, url: &str) -> Result<reqwest::Response, Error> {
        self.inner
            .http
            .post(url)
            .header(
                reqwest::header::AUTHORIZATION,
                self.inner.auth.authorization()?,
            )
            .send()
            .await
            .map_err(|e| Error::unreachable(url, &e))
    }

    /// Wait for the revocations that dropped [`StepToken`](crate::StepToken)s
    /// and [`TargetCredential`](crate::TargetCredential)s started in the
    /// background, for a program that keeps running and
    /// wants them acknowledged now. A program that ends need not call it:
    /// the end of its runtime waits for them (see
    /// [`StepToken`](crate::StepToken#what-is-guaranteed)). Dropping this
    /// future leaves them running.
    pub async fn flush(&self) {
        let pending = std::mem::take(&mut *lock(&self.inner.pending));
        for revocation in pending {
            // A revocation task does not panic; if it did, there is nothing
            // left to wait for.
            let _ = revocation.await;
        }
    }

    /// Revoke what a guard dropped without `finish` held: a
    /// [`StepToken`](crate::StepToken)'s token or a
    /// [`TargetCredential`](crate::TargetCredential).
    ///
    /// Inside a Tokio runtime, as a task on it (the drop does not block).
    /// If the runtime shuts down before the task is done (`main` returned,
    /// the runtime was dropped), the shutdown drops the task, and the
    /// task's drop finishes the revocations this client still has in
    /// flight, synchronously: the runtime's end waits for the broker's
    /// answer (see [`Client::revoke_blocking`]). Outside any runtime,
    /// synchronously at once.
    pub(crate) fn revoke_in_background(&self, revocation: Revocation) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.revoke_blocking(vec![revocation]);
            return;
        };
        lock(&self.inner.in_flight).push(revocation.clone());
        let revocation = BackgroundRevocation {
            client: self.clone(),
            revocation,
            done: false,
        };
        // On a runtime already shutting down, the task is dropped at once,
        // and its drop revokes.
        let task = runtime.spawn(revocation.run());
        let mut pending = lock(&self.inner.pending);
        pending.retain(|revocation| !revocation.is_finished());
        pending.push(task);
    }

    /// Revoke `revocations` and wait for the broker's answers, without the
    /// caller's runtime (it may be shutting down, and its connections with
    /// it): on a thread of its own, with a runtime and connections of its
    /// own, all at once, until the shared deadline ([`exit_deadline`]).
    fn revoke_blocking(&self, revocations: Vec<Revocation>) {
        let count = revocations.len();
        let deadline = exit_deadline(Instant::now());
        if deadline <= Instant::now() {
            exit_deadline_kept(false, Instant::now());
            tracing::warn!(
                count,
                "the broker did not answer in time: dropped step tokens or target credentials not revoked; they stay valid until they expire"
            );
            return;
        }
        let client = self.clone();
        let (done, outcome) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("stint-revoke".into())
            .spawn(move || {
                // The receiver may have stopped waiting.
                let _ = done.send(client.revoke_on_own_runtime(revocations, deadline));
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, count, "no thread to revoke dropped step tokens or target credentials; they stay valid until they expire");
            return;
        }
        // The thread keeps the deadline itself; this is a backstop.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        match outcome.recv_timeout(wait) {
            Ok(Ok(())) => {
                exit_deadline_kept(true, Instant::now());
                tracing::debug!(count, "dropped step tokens and target credentials revoked");
            }
            Ok(Err(error)) => {
                exit_deadline_kept(!error.is_unavailable(), Instant::now());
                tracing::warn!(%error, count, "dropped step tokens or target credentials could not all be revoked; those not revoked stay valid until they expire");
            }
            Err(_) => {
                exit_deadline_kept(false, Instant::now());
                tracing::warn!(
                    count,
                    "dropped step tokens or target credentials were not revoked in time; they stay valid until they expire"
                );
            }
        }
    }

    /// Each of `revocations` at once ([`Self::revoke_one`]), on a new
    /// current-thread runtime with new connections, until `deadline`. The
    /// first error, if any revocation failed or was cut short.
    fn revoke_on_own_runtime(
        &self,
        revocations: Vec<Revocation>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start a runtime to revoke: {e}")))?;
        runtime.block_on(async {
            let client = Client {
                inner: Arc::new(Inner {
                    http: self.inner.connection.http_client()?,
                    issuer: self.inner.issuer.clone(),
                    connection: self.inner.connection.clone(),
                    token_endpoint: self.inner.token_endpoint.clone(),
                    revocation_endpoint: self.inner.revocation_endpoint.clone(),
                    introspection_endpoint: self.inner.introspection_endpoint.clone(),
                    auth: self.inner.auth.clone(),
                    pending: Mutex::new(Vec::new()),
                    in_flight: Mutex::new(Vec::new()),
                }),
            };
            let mut tasks = tokio::task::JoinSet::new();
            for revocation in revocations {
                let client = client.clone();
                tasks.spawn(async move { client.revoke_one(&revocation).await });
            }
            let mut first_error = None;
            let all = async {
                while let Some(outcome) = tasks.join_next().await {
                    if let Ok(Err(error)) = outcome {
                        first_error.get_or_insert(error);
                    }
                }
            };
            if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
                first_error.get_or_insert(Error::Unreachable {
                    url: self.inner.revocation_endpoint.clone(),
                    reason: "no acknowledgement before the deadline".to_owned(),
                });
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    pub(crate) async fn request_token(
        &self,
        form: &[(&str, &str)],
    ) -> Result<stint_proto::TokenResponse, Error> {
        let url = &self.inner.token_endpoint;
        let response = match &self.inner.auth {
            Auth::Operator(_) => {
                return Err(Error::Config(
                    "an operator client approves; it does not mint tokens".into(),
                ));
            }
            Auth::Secret(_) => self.post_form(url, form).await?,
            Auth::Federated(subject) => {
                // RFC 8693: the subject token is the credential; no client
                // authentication.
                let subject = subject.read()?;
                let mut exchange: Vec<(&str, &str)> = form
                    .iter()
                    .filter(|(name, _)| *name != "grant_type")
                    .copied()
                    .collect();
                exchange.push(("grant_type", GRANT_TOKEN_EXCHANGE));
                exchange.push(("subject_token", &subject));
                exchange.push(("subject_token_type", TOKEN_TYPE_ID_TOKEN));
                self.send_form(url, &exchange, None).await?
            }
        };
        read_json(url, response).await
    }

    async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<reqwest::Response, Error> {
        let authorization = self.inner.auth.authorization()?;
        self.send_form(url, form, Some(authorization)).await
    }

    async fn send_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        authorization: Option<String>,
    ) -> Result<reqwest::Response, Error> {
        let body = form
            .iter()
            .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = self.inner.http.post(url).header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        request
            .body(body)
            .send()
            .await
            .map_err(|e| Error::unreachable(url, &e))
    }
}

/// What a guard dropped without `finish` leaves to revoke.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// A step token, at the revocation endpoint (RFC 7009).
    StepToken(String),
    /// One target credential, `DELETE /v1/target-credentials/{id}` with the
    /// step token it was exchanged from as `Authorization: Bearer`.
    TargetCredential {
        credential_id: String,
        step_token: String,
    },
}

impl Revocation {
    /// What was not revoked, for a log line (no secret in it).
    fn describe(&self) -> String {
        match self {
            Self::StepToken(_) => "a dropped step token".to_owned(),
            Self::TargetCredential { credential_id, .. } => {
                format!("the dropped target credential {credential_id}")
            }
        }
    }
}

/// A revocation a dropped guard ([`StepToken`](crate::StepToken),
/// [`TargetCredential`](crate::TargetCredential)) started, as a task.
/// Dropped before it is done (its runtime is shutting down), it finishes
/// synchronously every revocation its client still has in flight.
struct BackgroundRevocation {
    client: Client,
    revocation: Revocation,
    /// The broker answered, or the retries ran out.
    done: bool,
}

impl BackgroundRevocation {
    async fn run(mut self) {
        let result = self.client.revoke_one(&self.revocation).await;
        self.done = true;
        lock(&self.client.inner.in_flight).retain(|revocation| *revocation != self.revocation);
        if let Err(error) = result {
            tracing::warn!(
                %error,
                "{} could not be revoked; it stays valid until it expires",
                self.revocation.describe()
            );
        }
    }
}

impl Drop for BackgroundRevocation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A shutdown drops the client's revocation tasks one after another:
        // the first to drop revokes them all at once, the others find their
        // revocation gone. (Revoking again what the broker already revoked,
        // an answer sent but not read, is harmless: RFC 7009 answers 200,
        // and a revoked target credential's DELETE 204.)
        let revocations = {
            let mut in_flight = lock(&self.client.inner.in_flight);
            if !in_flight.contains(&self.revocation) {
                return;
            }
            std::mem::take(&mut *in_flight)
        };
        self.client.revoke_blocking(revocations);
    }
}

/// Two synchronous revocations closer than this belong to one burst (the
/// drops of a runtime's shutdown come one right after another).
const BURST_GAP: Duration = Duration::from_secs(1);

/// The time the synchronous revocations (at a runtime's end, or dropped
/// outside one) may still take.
#[derive(Debug, Clone, Copy)]
struct ExitBudget {
    deadline: Instant,
    /// When a revocation last missed the deadline: the broker is not
    /// answering.
    missed_at: Option<Instant>,
}

static EXIT_BUDGET: Mutex<Option<ExitBudget>> = Mutex::new(None);

impl ExitBudget {
    /// When a synchronous revocation starting `now` must be done by.
    ///
    /// A shutdown drops its guards one after another, each waiting for its
    /// revocation, so a fresh [`EXIT_REVOCATION_TIMEOUT`] for each would
    /// hold an exit up that long for every guard when the broker is down.
    /// Instead the revocations share a deadline: one still ahead is reused;
    /// once one was missed, the revocations that follow in the same burst
    /// (within [`BURST_GAP`]) do not wait at all; a burst that was
    /// answered, or an isolated drop later on, starts a fresh one.
    fn deadline(budget: &mut Option<Self>, now: Instant) -> Instant {
        match *budget {
            Some(Self { deadline, .. }) if now < deadline => deadline,
            Some(Self {
                deadline,
                missed_at: Some(missed),
            }) if now < missed + BURST_GAP => deadline,
            _ => {
                let deadline = now + EXIT_REVOCATION_TIMEOUT;
                *budget = Some(Self {
                    deadline,
                    missed_at: None,
                });
                deadline
            }
        }
    }

    /// Record how a synchronous revocation ended at `now`: answered (the
    /// next one gets a fresh deadline), or not (the deadline passed, the
    /// broker is unreachable).
    fn ended(budget: &mut Option<Self>, answered: bool, now: Instant) {
        if answered {
            *budget = None;
        } else if let Some(budget) = budget.as_mut() {
            budget.missed_at = Some(now);
        }
    }
}

/// [`ExitBudget::deadline`] of the process's budget.
fn exit_deadline(now: Instant) -> Instant {
    ExitBudget::deadline(&mut lock(&EXIT_BUDGET), now)
}

/// [`ExitBudget::ended`] of the process's budget.
fn exit_deadline_kept(answered: bool, now: Instant) {
    ExitBudget::ended(&mut lock(&EXIT_BUDGET), answered, now);
}

/// Lock `mutex`, also if a thread panicked holding it (what it guards stays
/// consistent: a list pushed to and taken whole).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `authority` (`host[:port]`) names this machine.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Run `attempt` until it succeeds, fails for good, or the backoff runs out.
async fn retrying<T, F, Fut>(url: &str, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delays = REVOKE_BACKOFF.iter();
    loop {
        match attempt().await {
            Err(error) if error.is_unavailable() => match delays.next() {
                Some(delay) => {
                    tracing::debug!(%url, %error, ?delay, "retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => return Err(error),
            },
            other => return other,
        }
    }
}

/// Read at most [`MAX_RESPONSE_LEN`] bytes of `response`'s body.
pub(crate) async fn read_body(url: &str, response: reqwest::Response) -> Result<Vec<u8>, Error> {
    read_body_up_to(url, response, MAX_RESPONSE_LEN).await
}

/// Read at most `limit` bytes of `response`'s body.
pub(crate) async fn read_body_up_to(
    url: &str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(Error::protocol(url, "the answer is too large"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::unreachable(url, &e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(Error::protocol(url, "the answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A 2xx answer's JSON body, or the OAuth error it carries.
pub(crate) async fn read_json<T: DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<T, Error> {
    read_json_up_to(url, response, MAX_RESPONSE_LEN).await
}

/// As [`read_json`], with a body of at most `limit` bytes.
pub(crate) async fn read_json_up_to<T: DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
    limit: usize,
) -> Result<T, Error> {
    let status = response.status();
    let body = read_body_up_to(url, response, limit).await?;
    if !status.is_success() {
        return Err(oauth_error(url, status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| {
        Error::protocol(
            url,
            format!(
                "the answer is not the expected JSON ({})",
                e.classify_name()
            ),
        )
    })
}

async fn read_empty(url: &str, response: reqwest::Response) -> Result<(), Error> {
    let status = response.status();
    let body = read_body(url, response).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(oauth_error(url, status, &body))
    }
}

pub(crate) fn oauth_error(url: &str, status: reqwest::StatusCode, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct AnyError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
        #[serde(default)]
        approval_id: Option<String>,
        #[serde(default)]
        job: Option<String>,
        #[serde(default)]
        interval: Option<u64>,
        #[serde(default)]
        expires_in: Option<u64>,
        #[serde(default)]
        approval: Option<ApprovalView>,
    }
    // Not stint_proto::ErrorResponse: a newer broker may send codes this
    // SDK does not know, and they must still reach the caller. Only an
    // object is an OAuth error (RFC 6749 section 5.2): serde would read a
    // struct from an array too (`["invalid_grant"]`).
    let object = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        == Some(&b'{');
    let parsed = if object {
        serde_json::from_slice::<AnyError>(body).map_err(|_| ())
    } else {
        Err(())
    };
    match parsed {
        Ok(AnyError {
            error,
            error_description,
            approval_id: Some(approval_id),
            job: Some(job),
            interval,
            expires_in,
            approval,
        }) if error == "authorization_pending" || error == "slow_down" => {
            Error::ApprovalPending(Box::new(PendingApproval {
                approval_id,
                job,
                // RFC 8628 section 3.5: 5 s when the broker names none.
                interval: interval.unwrap_or(5).clamp(1, 300),
                expires_in: expires_in.unwrap_or(0),
                description: error_description.unwrap_or_default(),
                approval,
                slow_down: error == "slow_down",
            }))
        }
        Ok(error) => Error::OAuth {
            status: status.as_u16(),
            code: error.error,
            description: error.error_description,
        },
        Err(_) if status.is_server_error() => Error::OAuth {
            status: status.as_u16(),
            code: "server_error".to_owned(),
            description: Some(format!("HTTP {status} without an OAuth error body")),
        },
        Err(_) => Error::protocol(url, format!("HTTP {status} without an OAuth error body")),
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// Say what kind of JSON problem it was without quoting the input (which
    /// may hold a secret).
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "missing or mistyped fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one name or value.
pub(crate) fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Percent-encoding of one URL path segment.
fn path_segment_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_is_an_oauth_error_body() {
        // Found by the error_body fuzz target: serde reads a struct from an
        // array, so `["evror"]` became the broker's code "evror".
        let url = "https://stint.example.com/oauth2/token";
        let read = |status: u16, body: &str| {
            oauth_error(
                url,
                reqwest::StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
            )
        };
        match read(585, "[\"evror\"\r]") {
            Error::OAuth { code, .. } => assert_eq!(code, "server_error"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read(400, "[\"invalid_grant\"]"),
            Error::Protocol { .. }
        ));
        match read(400, " \r\n{\"error\":\"invalid_grant\"}") {
            Error::OAuth { code, status, .. } => {
                assert_eq!((code.as_str(), status), ("invalid_grant", 400));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_http_only_to_loopback_and_only_origins() {
        let ok = |issuer: &str| Connection::new(issuer).check_issuer().is_ok();
        assert!(ok("https://stint.example.com"));
        assert!(ok("https://stint.example.com:8443"));
        assert!(ok("http://127.0.0.1:8780"));
        assert!(ok("http://[::1]:8780"));
        assert!(ok("http://localhost:8780"));
        assert!(!ok("http://stint.example.com"));
        assert!(!ok("http://10.0.0.1:8780"));
        assert!(!ok("http://127.0.0.1.evil.example:80"));
        assert!(!ok("https://stint.example.com/tenant"));
        assert!(!ok("https://user@stint.example.com"));
        assert!(!ok("ftp://stint.example.com"));
    }

    #[test]
    fn revocations_at_exit_share_one_deadline() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut budget = None;
        // A burst shares the first deadline while it is ahead.
        let first = ExitBudget::deadline(&mut budget, at(0));
        assert_eq!(first, at(0) + EXIT_REVOCATION_TIMEOUT);
        assert_eq!(ExitBudget::deadline(&mut budget, at(10)), first);
        // The broker let it pass: the rest of the burst does not wait.
        let missed = first + Duration::from_millis(1);
        ExitBudget::ended(&mut budget, false, missed);
        for later in [1, 5, 900] {
            let now = missed + Duration::from_millis(later);
            assert!(ExitBudget::deadline(&mut budget, now) <= now);
            ExitBudget::ended(&mut budget, false, now);
        }
        // An isolated drop after the burst gets a fresh deadline.
        let quiet = missed + Duration::from_millis(900) + BURST_GAP;
        assert_eq!(
            ExitBudget::deadline(&mut budget, quiet),
            quiet + EXIT_REVOCATION_TIMEOUT
        );
        // An answer gives the next one a fresh deadline.
        ExitBudget::ended(&mut budget, true, quiet);
        let next = quiet + Duration::from_millis(1);
        assert_eq!(
            ExitBudget::deadline(&mut budget, next),
            next + EXIT_REVOCATION_TIMEOUT
        );
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let credentials = Credentials::new("job", "s3cret-value");
        assert!(!format!("{credentials:?}").contains("s3cret-value"));
    }

    #[test]
    fn form_encoding_is_reversible_by_the_broker() {
        let encoded = form_encode("read:demo/a b+c%");
        assert_eq!(encoded, "read%3Ademo%2Fa+b%2Bc%25");
        let parsed =
            stint_core::form::FormParams::parse(format!("x={encoded}").as_bytes()).unwrap();
        assert_eq!(parsed.get("x"), Some("read:demo/a b+c%"));
    }
}
