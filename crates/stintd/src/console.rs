//! `stintd --console ADDR`: the operator console on a listener of its own,
//! beside the broker (see docs/console.md).

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use stint_console::dev_idp::{DEV_CLIENT_ID, DEV_ISSUER_NAME, DevIdp};
use stint_console::{Console, ConsoleConfig, OidcClient};

/// The console's flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConsoleArgs {
    /// Serve the operator console on this address (a listener of its own;
    /// TLS with --tls-cert/--tls-key, plain HTTP only on loopback or with
    /// --tls-terminated-by-proxy). With --dev it is on by default, on the
    /// broker's port + 1 (http://127.0.0.1:8781), signing in the demo
    /// operators through a dev identity provider on port + 2.
    #[arg(
        long = "console",
        id = "console_listen",
        env = "STINTD_CONSOLE",
        value_name = "ADDR"
    )]
    pub(crate) console_listen: Option<SocketAddr>,

    /// With --dev: no console (and no dev identity provider).
    #[arg(long, env = "STINTD_NO_CONSOLE", conflicts_with = "console_listen")]
    pub(crate) no_console: bool,

    /// The console's public origin, as browsers reach it
    /// (https://stint.example.com:8781); the redirect URI to register at
    /// the identity provider is this plus /callback. Defaults to
    /// http://ADDR on a loopback address.
    #[arg(long, env = "STINTD_CONSOLE_URL")]
    pub(crate) console_url: Option<String>,

    /// The policy's [issuers.NAME] operators sign in through (its
    /// `audiences` must include --console-oidc-client-id).
    #[arg(long, env = "STINTD_CONSOLE_OIDC_ISSUER")]
    pub(crate) console_oidc_issuer: Option<String>,

    /// The console's client id at the identity provider.
    #[arg(
        long,
        env = "STINTD_CONSOLE_OIDC_CLIENT_ID",
        default_value = "stint-console"
    )]
    pub(crate) console_oidc_client_id: String,

    /// A file holding the console's client secret (client_secret_basic);
    /// without it the console is a public client (PKCE only).
    #[arg(long, env = "STINTD_CONSOLE_OIDC_CLIENT_SECRET_FILE")]
    pub(crate) console_oidc_client_secret_file: Option<PathBuf>,

    /// Extra CA certificates (PEM) for the identity provider's HTTPS;
    /// defaults to --federation-ca-file.
    #[arg(long, env = "STINTD_CONSOLE_OIDC_CA_FILE")]
    pub(crate) console_oidc_ca_file: Option<PathBuf>,

    /// A console session unused for this many seconds ends (60 or more).
    #[arg(long, env = "STINTD_CONSOLE_IDLE_TIMEOUT", default_value_t = 900)]
    pub(crate) console_idle_timeout: u64,

    /// A console session ends this many seconds after sign-in (at most 7
    /// days).
    #[arg(
        long,
        env = "STINTD_CONSOLE_ABSOLUTE_TIMEOUT",
        default_value_t = 28_800
    )]
    pub(crate) console_absolute_timeout: u64,
}

/// A console about to start: its listener is bound (so the dev identity
/// provider knows its redirect URI), the broker not yet started.
pub(crate) struct Prepared {
    listener: tokio::net::TcpListener,
    config: ConsoleConfig,
    tls: Option<(PathBuf, PathBuf)>,
    /// Kept running for as long as the console.
    _dev_idp: Option<DevIdp>,
}

fn loopback_url(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => format!("http://{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("http://[{}]:{}", v6.ip(), v6.port()),
    }
}

/// Bind the console's listener and, with --dev, start the dev identity
/// provider; set what the broker needs to know of them in `broker`.
pub(crate) async fn prepare(
    args: &ConsoleArgs,
    dev: bool,
    broker: &mut stint_server::Config,
) -> Result<Option<Prepared>, String> {
    // `--dev` on the demo policy: the console and the dev identity
    // provider, unless --no-console.
    let dev_console = dev
        && args.console_listen.is_none()
        && !args.no_console
        && broker.policy == stint_server::PolicySource::Demo;
    let listen = match args.console_listen {
        Some(listen) => listen,
        None if dev_console => {
            let mut addr = broker.listen;
            if addr.port() != 0 {
                addr.set_port(addr.port().checked_add(1).ok_or("--listen port too high")?);
            }
            addr
        }
        None => return Ok(None),
    };
    let tls = broker
        .tls
        .as_ref()
        .map(|files| (files.cert.clone(), files.key.clone()));
    if tls.is_none() && !listen.ip().is_loopback() && !broker.tls_terminated_by_proxy {
        return Err(format!(
            "--console {listen}: plain HTTP only on a loopback address; give --tls-cert and --tls-key (the console uses the broker's), or --tls-terminated-by-proxy"
        ));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("--console {listen}: cannot listen: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--console {listen}: {e}"))?;
    let url = match &args.console_url {
        Some(url) => url.clone(),
        None if tls.is_none() && bound.ip().is_loopback() => loopback_url(bound),
        None => {
            return Err(
                "--console-url: give the console's public origin (https://HOST[:PORT])".into(),
            );
        }
    };
    let secret = match &args.console_oidc_client_secret_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--console-oidc-client-secret-file {}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )
        .filter(|s| !s.is_empty()),
        None => None,
    };
    let mut dev_idp = None;
    let (issuer, client_id, ca_file) = if dev_console {
        // The dev identity provider, on the next port (or any, with 0).
        let mut idp_addr = bound;
        if broker.listen.port() != 0 {
            idp_addr.set_port(
                bound
                    .port()
                    .checked_add(1)
                    .ok_or("--listen port too high")?,
            );
        } else {
            idp_addr.set_port(0);
        }
        let idp_listener = tokio::net::TcpListener::bind(idp_addr)
            .await
            .map_err(|e| format!("the dev identity provider cannot listen on {idp_addr}: {e}"))?;
        // Private, as the broker makes it.
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&broker.data_dir)
            .map_err(|e| format!("{}: {e}", broker.data_dir.display()))?;
        let idp = DevIdp::start(idp_listener, &broker.data_dir, &format!("{url}/callback")).await?;
        broker.dev_operators_issuer = Some(idp.issuer.clone());
        if broker.federation_ca.is_none() {
            broker.federation_ca = Some(idp.ca_file.clone());
        }
        let ca = idp.ca_file.clone();
        dev_idp = Some(idp);
        (
            DEV_ISSUER_NAME.to_owned(),
            DEV_CLIENT_ID.to_owned(),
            Some(ca),
        )
    } else {
        let issuer = args.console_oidc_issuer.clone().ok_or(
            "--console-oidc-issuer: name the policy's [issuers.NAME] operators sign in through",
        )?;
        (
            issuer,
            args.console_oidc_client_id.clone(),
            args.console_oidc_ca_file
                .clone()
                .or_else(|| broker.federation_ca.clone()),
        )
    };
    broker.live_tokens = true;
    broker.console_url = Some(url.trim_end_matches('/').to_owned());
    let mut config = ConsoleConfig::new(
        url,
        OidcClient {
            issuer,
            client_id,
            client_secret: secret,
        },
    );
    config.ca_file = ca_file;
    config.trusted_proxies = if broker.tls_terminated_by_proxy {
        broker.trusted_proxies.clone().exclusive()
    } else {
        broker.trusted_proxies.clone()
    };
    config.idle_timeout = Duration::from_secs(args.console_idle_timeout);
    config.absolute_timeout = Duration::from_secs(args.console_absolute_timeout);
    Ok(Some(Prepared {
        listener,
        config,
        tls,
        _dev_idp: dev_idp,
    }))
}

impl Prepared {
    /// Start serving beside `server`; the console's address for the banner.
    pub(crate) fn start(self, server: &stint_server::RunningServer) -> Result<String, String> {
        let console =
            Console::new(server.operator_api(), self.config).map_err(|e| e.to_string())?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(std::sync::Arc::new(stint_console::TlsFiles::load(
                cert.clone(),
                key.clone(),
            )?)),
            None => None,
        };
        let origin = console.origin().to_owned();
        let idp = self._dev_idp;
        tokio::spawn(async move {
            // The dev identity provider lives as long as the console.
            let _idp = idp;
            console
                .serve(self.listener, tls, std::future::pending())
                .await;
        });
        Ok(origin)
    }
}
