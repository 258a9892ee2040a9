//! The operator console under test: a broker ([`TestBroker`]) with an
//! elevation policy whose operators sign in through an [`OidcProvider`],
//! the console on its own loopback listener, and [`Browser`], an HTTP
//! client that keeps cookies and sends what a browser sends with a form
//! (`Origin`, `Sec-Fetch-Site`).

use crate::oidc::OidcProvider;
use crate::{BrokerOptions, TestBroker, policy_with};
use reqwest::header::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stint_console::{Console, ConsoleConfig, OidcClient};

/// The console's client id.
pub const CLIENT_ID: &str = "stint-console";
/// The standing scope of the deploy step, and the elevated one.
pub const STANDING: &str = "deploy:demo/staging";
pub const ELEVATED: &str = "deploy:demo/prod/web";

/// The demo policy plus a deploy step whose production scopes need two
/// approvals from `sre`, and operators bound to the provider's users:
/// alice and bob in `sre`, carol in `sre` but owning `demo-job`, dave in
/// `finance`, erin in `readers` and whatever groups her ID token names
/// (the provider's say `sre`).
pub fn console_policy(issuer: &str) -> String {
    let op = |name: &str, groups: &str, owns: &str| {
        format!(
            "[operators.{name}]\ngroups = [{groups}]\nowns = [{owns}]\noidc = {{ issuer = \"corp\", subject = \"{}\" }}\n",
            OidcProvider::subject(name)
        )
    };
    policy_with(&format!(
        r#"
[workflows.demo.steps.deploy]
scopes = ["{STANDING}"]

[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:demo/prod/*"]
approver_groups = ["sre"]
quorum = 2
max_duration = "30m"
max_wait = "10m"
reason_required = true

{alice}
{bob}
{carol}
{dave}
[operators.erin]
groups = ["readers"]
oidc = {{ issuer = "corp", subject = "{erin}", groups_claim = "groups" }}

[issuers.corp]
url = "{issuer}"
audiences = ["{CLIENT_ID}"]
algorithms = ["ES256"]
"#,
        alice = op("alice", "\"sre\"", ""),
        bob = op("bob", "\"sre\"", ""),
        carol = op("carol", "\"sre\"", "\"demo-job\""),
        dave = op("dave", "\"finance\"", ""),
        erin = OidcProvider::subject("erin"),
    ))
}

/// A broker, its console and the identity provider.
pub struct ConsoleHarness {
    pub broker: TestBroker,
    pub idp: OidcProvider,
    pub console: Arc<Console>,
    /// The console's origin (`http://127.0.0.1:PORT`).
    pub origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConsoleHarness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How to start the harness.
pub struct HarnessOptions {
    /// The console's client secret at the provider (`None`: public).
    pub client_secret: Option<&'static str>,
    pub idle_timeout: std::time::Duration,
    pub absolute_timeout: std::time::Duration,
    /// Where the broker's approval webhook goes.
    pub webhook: Option<stint_server::WebhookTarget>,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            client_secret: Some("console-secret"),
            idle_timeout: stint_console::DEFAULT_IDLE_TIMEOUT,
            absolute_timeout: stint_console::DEFAULT_ABSOLUTE_TIMEOUT,
            webhook: None,
        }
    }
}

impl ConsoleHarness {
    pub async fn start() -> Self {
        Self::start_with(HarnessOptions::default()).await
    }

    pub async fn start_with(options: HarnessOptions) -> Self {
        let idp = OidcProvider::start(
            CLIENT_ID,
            options.client_secret,
            &["alice", "bob", "carol", "dave", "erin", "mallory"],
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let broker = TestBroker::start_with(BrokerOptions {
            policy: Some(console_policy(&idp.issuer)),
            federation_ca: Some(idp.ca_file.clone()),
            live_tokens: true,
            console_url: Some(origin.clone()),
            webhook: options.webhook,
            ..BrokerOptions::default()
        })
        .await;
        let mut config = ConsoleConfig::new(
            origin.clone(),
            OidcClient {
                issuer: "corp".into(),
                client_id: CLIENT_ID.into(),
                client_secret: options.client_secret.map(str::to_owned),
            },
        );
        config.ca_file = Some(idp.ca_file.clone());
        config.idle_timeout = options.idle_timeout;
        config.absolute_timeout = options.absolute_timeout;
        let console = Console::new(broker.server().operator_api(), config).unwrap();
        idp.set_redirect_uri(console.redirect_uri());
        let task = tokio::spawn(Arc::clone(&console).serve(listener, None, std::future::pending()));
        Self {
            broker,
            idp,
            console,
            origin,
            task,
        }
    }

    /// Request `id` as the broker shows it.
    pub async fn console_view(&self, id: &str) -> serde_json::Value {
        let view = self
            .broker
            .server()
            .operator_api()
            .approval(id)
            .await
            .unwrap();
        serde_json::to_value(view).unwrap()
    }

    /// A new browser (no cookies).
    pub fn browser(&self) -> Browser {
        Browser::new(&self.origin, &self.idp.ca_file)
    }

    /// Ask for the deploy step with the elevated scope for `job`: the
    /// approval request's id.
    pub async fn request_elevation(&self, job: &str, reason: &str) -> String {
        let response = self
            .broker
            .try_mint(
                "deploy",
                &format!("{STANDING} {ELEVATED}"),
                &[("job", job), ("reason", reason)],
            )
            .await;
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "authorization_pending", "{body}");
        body["approval_id"].as_str().unwrap().to_owned()
    }
}

/// A page as answered.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The `Location` header.
    pub fn location(&self) -> Option<String> {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    }

    /// The value of the first hidden `csrf` input.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// An HTTP client that keeps cookies per host and sends, with each form,
/// what a browser sends: `Origin` and `Sec-Fetch-Site: same-origin`.
pub struct Browser {
    http: reqwest::Client,
    origin: String,
    /// Cookies by host:port, then name.
    cookies: Mutex<HashMap<String, HashMap<String, String>>>,
}

fn host_of(url: &str) -> String {
    let parsed = reqwest::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port_or_known_default().unwrap()
    )
}

impl Browser {
    pub fn new(origin: &str, ca_file: &std::path::Path) -> Self {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(ca)
            .build()
            .unwrap();
        Self {
            http,
            origin: origin.to_owned(),
            cookies: Mutex::new(HashMap::new()),
        }
    }

    fn absolute(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.origin)
        }
    }

    fn cookie_header(&self, url: &str) -> Option<HeaderValue> {
        let cookies = self.cookies.lock().unwrap();
        let jar = cookies.get(&host_of(url))?;
        if jar.is_empty() {
            return None;
        }
        let text: Vec<String> = jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
        HeaderValue::from_str(&text.join("; ")).ok()
    }

    async fn keep(&self, url: &str, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        let page = Page {
            status,
            headers,
            body,
        };
        let mut cookies = self.cookies.lock().unwrap();
        let jar = cookies.entry(host_of(url)).or_default();
        for cookie in page.set_cookies() {
            let first = cookie.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            if cookie.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
        page
    }

    /// The cookie `name` of the console, if held.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .lock()
            .unwrap()
            .get(&host_of(&self.origin))
            .and_then(|jar| jar.get(name).cloned())
    }

    /// Drop or set a cookie of the console, as a user (or attacker) could.
    pub fn set_cookie(&self, name: &str, value: Option<&str>) {
        let mut cookies = self.cookies.lock().unwrap();
        let jar = cookies.entry(host_of(&self.origin)).or_default();
        match value {
            Some(value) => {
                jar.insert(name.to_owned(), value.to_owned());
            }
            None => {
                jar.remove(name);
            }
        }
    }

    /// GET, as a top-level navigation typed into the address bar.
    pub async fn get(&self, path: &str) -> Page {
        self.get_with(
            path,
            &[("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate")],
        )
        .await
    }

    /// GET with these extra headers.
    pub async fn get_with(&self, path: &str, extra: &[(&str, &str)]) -> Page {
        let url = self.absolute(path);
        let mut request = self.http.get(&url);
        if let Some(cookie) = self.cookie_header(&url) {
            request = request.header("cookie", cookie);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        self.keep(&url, response).await
    }

    /// POST a form from a page of this origin.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.origin.clone();
        self.post_with(
            path,
            form,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// POST a form with exactly these extra headers.
    pub async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Page {
        let url = self.absolute(path);
        let mut request = self.http.post(&url).form(form);
        if let Some(cookie) = self.cookie_header(&url) {
            request = request.header("cookie", cookie);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        self.keep(&url, response).await
    }

    /// Start a sign-in: the identity provider's authorization URL.
    pub async fn start_sign_in(&self, return_to: &str) -> String {
        let start = self
            .get(&format!("/login/start?return_to={return_to}"))
            .await;
        assert_eq!(start.status, 303, "{}", start.body);
        start.location().unwrap()
    }

    /// At the identity provider, sign in as `user`: the callback URL it
    /// redirects to.
    pub async fn authorize(&self, authorization_url: &str, user: &str) -> String {
        let query = reqwest::Url::parse(authorization_url).unwrap();
        let mut form: Vec<(String, String)> = query.query_pairs().into_owned().collect();
        form.push(("user".into(), user.into()));
        let idp_origin = {
            let u = reqwest::Url::parse(authorization_url).unwrap();
            format!("{}://{}", u.scheme(), host_of(authorization_url))
        };
        let page = self.get(authorization_url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let form: Vec<(&str, &str)> = form.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let post = self
            .post_with(&format!("{idp_origin}/authorize"), &form, &[])
            .await;
        assert_eq!(post.status, 303, "{}", post.body);
        post.location().unwrap()
    }

    /// Follow the identity provider's redirect back to the console.
    pub async fn callback(&self, callback_url: &str) -> Page {
        // A redirect from another site: a cross-site navigation.
        self.get_with(
            callback_url,
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await
    }

    /// Sign in as `user`, all the way: the callback's page.
    pub async fn sign_in(&self, user: &str) -> Page {
        let authorization = self.start_sign_in("/approvals").await;
        let callback = self.authorize(&authorization, user).await;
        self.callback(&callback).await
    }
}
