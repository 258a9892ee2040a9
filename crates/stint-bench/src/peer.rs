//! The nearest peer: panva's `oidc-provider` on Node.js, serving the OAuth
//! 2.0 client credentials grant with ES256 JWT access tokens, in memory and
//! without audit (`peer/oidc-provider/server.mjs`). `--oidc-provider`
//! measures it in every run, after the floor and the broker, under the same
//! load, and reports mint/peer.
//!
//! It is installed with `npm ci` from the committed lock file the first
//! time (into `peer/oidc-provider/node_modules`, which git ignores); Node.js
//! and npm must be on `PATH`.

use crate::load::RequestTemplate;
use anyhow::{Context as _, Result, bail, ensure};
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The client `server.mjs` registers.
const CLIENT_ID: &str = "bench";
const CLIENT_SECRET: &str = "bench-secret-not-for-production-0123456789";
/// The request: the same scope as the broker's (the audience is the
/// provider's default resource).
const FORM: &str = "grant_type=client_credentials&scope=read:demo/bench";
/// How long Node.js may take to start the provider.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The running provider; stopped when dropped.
pub(crate) struct Peer {
    child: Child,
    addr: SocketAddr,
    version: String,
}

impl Peer {
    /// Install the provider if it is not, and start it on a free loopback
    /// port.
    pub(crate) fn start() -> Result<Self> {
        let dir = directory();
        install(&dir)?;
        let version = installed_version(&dir)?;
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free port")?;
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg(addr.port().to_string())
            .current_dir(&dir)
            .env("NODE_ENV", "production")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let stdout = child.stdout.take().context("no stdout from node")?;
        let (ready, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = ready.send(first.and_then(Result::ok));
            // Keep reading so the pipe never fills.
            for _ in lines {}
        });
        let peer = Self {
            child,
            addr,
            version,
        };
        match said.recv_timeout(START_TIMEOUT) {
            Ok(Some(line)) if line.trim() == "ready" => Ok(peer),
            Ok(other) => bail!("oidc-provider did not start: it said {other:?}"),
            Err(_) => bail!("oidc-provider did not start within {START_TIMEOUT:?}"),
        }
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The installed version, e.g. `9.13.3`.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// Its token request.
    pub(crate) fn request(&self) -> Result<RequestTemplate> {
        RequestTemplate::basic_form_post(self.addr, "/token", CLIENT_ID, CLIENT_SECRET, FORM)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn directory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer/oidc-provider")
}

/// `npm ci` unless the locked version is already installed.
fn install(dir: &std::path::Path) -> Result<()> {
    if dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        return Ok(());
    }
    println!("installing oidc-provider with npm ci in {}", dir.display());
    let started = Instant::now();
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .context("running npm (is Node.js installed?)")?;
    ensure!(status.success(), "npm ci failed: {status}");
    println!("installed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn installed_version(dir: &std::path::Path) -> Result<String> {
    let path = dir.join("node_modules/oidc-provider/package.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json.get("version")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .context("no version in oidc-provider's package.json")
}
