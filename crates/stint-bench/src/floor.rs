//! The floor: a bare hyper server that, for every request, reads the body
//! and answers with a JWT of fixed claims signed with ES256 by the same
//! signing code as the broker. No authentication, no policy, no audit: the
//! most any token server could serve on this machine with this HTTP stack
//! and this signature algorithm.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stint_core::jose::{Algorithm, JoseError, SigningKey};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The tokens' lifetime, as the broker's demo policy would grant.
const TOKEN_TTL_SECONDS: u64 = 300;

/// The floor server, serving until [`FloorServer::shutdown`].
#[derive(Debug)]
pub(crate) struct FloorServer {
    local_addr: SocketAddr,
    accept_loop: JoinHandle<()>,
}

impl FloorServer {
    /// Generate the key and start serving on an ephemeral loopback port.
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the floor server")?;
        let local_addr = listener.local_addr()?;
        let signer = Arc::new(FixedClaimsSigner::new(local_addr)?);
        let accept_loop = tokio::spawn(accept_loop(listener, signer));
        Ok(Self {
            local_addr,
            accept_loop,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting; open connections end when their clients close them.
    pub(crate) fn shutdown(self) {
        self.accept_loop.abort();
    }
}

/// An ES256 key and the claims it signs, over and over.
struct FixedClaimsSigner {
    key: SigningKey,
    rng: SystemRandom,
    claims: Value,
}

impl FixedClaimsSigner {
    fn new(local_addr: SocketAddr) -> Result<Self> {
        let rng = SystemRandom::new();
        let (key, _pkcs8) = SigningKey::generate(Algorithm::ES256, &rng)
            .context("generating the floor's ES256 key")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_secs();
        Ok(Self {
            key,
            rng,
            claims: fixed_claims(&format!("http://{local_addr}"), now),
        })
    }

    fn sign(&self) -> Result<String, JoseError> {
        self.key.sign_jwt("at+jwt", &self.claims, &self.rng)
    }
}

/// Claims shaped like a real Stint access token for the demo read step.
fn fixed_claims(issuer: &str, now: u64) -> Value {
    json!({
        "iss": issuer,
        "sub": "demo-job",
        "aud": "bench-api",
        "client_id": "demo-job",
        "exp": now + TOKEN_TTL_SECONDS,
        "iat": now,
        "nbf": now,
        "jti": "q2Vb7cYk0mH1tq3yFzW9xA",
        "scope": "read:demo/bench",
        "job": "job-4fJ2kLq9XbT0vW1s",
        "step": "read",
        "workflow": "demo",
    })
}

/// One task per connection, as a minimal hyper server does.
async fn accept_loop(listener: TcpListener, signer: Arc<FixedClaimsSigner>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Usually EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let signer = Arc::clone(&signer);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(Arc::clone(&signer), request));
            // A client closing its connection is the normal end.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    signer: Arc<FixedClaimsSigner>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.into_body().collect().await.is_err() {
        return Ok(status_only(StatusCode::BAD_REQUEST));
    }
    Ok(match signer.sign() {
        Ok(token) => token_response(&token),
        Err(_) => status_only(StatusCode::INTERNAL_SERVER_ERROR),
    })
}

fn token_response(token: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL_SECONDS,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn status_only(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use stint_core::jose::{KeySet, UnverifiedJws};

    #[test]
    fn the_floor_signs_verifiable_es256_tokens() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let signer = FixedClaimsSigner::new(addr).unwrap();
        let token = signer.sign().unwrap();
        let mut keys = KeySet::new();
        keys.insert(signer.key.verifying_key());
        let jws = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(jws.header().alg, "ES256");
        let payload = jws.verified_payload(&keys).unwrap();
        let claims: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(claims, signer.claims);
    }
}
