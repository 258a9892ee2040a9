#!/usr/bin/env python3
"""An independent relying party for Stint's federation tokens.

It does what a cloud or a secrets manager does with a token from an OIDC
issuer it trusts, with a JOSE library that shares no code with Stint
(joserfc, on the `cryptography` backend):

1. fetch the issuer's OpenID Connect discovery document and check it
   against OpenID Connect Discovery 1.0;
2. fetch its JWK set (`jwks_uri`) and check every key has `kid`, `alg`
   and `use`;
3. verify the token's signature with the key its `kid` names, pinned to
   that key's `alg`;
4. apply the rules of one relying party (a *profile*), each written from
   that system's own documentation (cited beside each rule).

Usage:

    verify_federation.py --base https://127.0.0.1:PORT --ca ca.pem \
        --issuer https://stint.test --token-file token.jwt \
        --audience sts.amazonaws.com --subject workload:...:step:apply \
        --profile aws [--profile gcp ...]

`--base` is where the documents are fetched from (the loopback listener);
`--issuer` is what the broker was configured with and what `iss` must be
exactly (for AWS an issuer without a port is required, so tests start the
broker with `--issuer https://stint.test` and fetch from loopback: the
`jwks_uri` is fetched from `--base` with the same path).

Prints `PASS <profile>` for each profile that accepts the token, or
`REFUSED <profile>: <reason>` and exits 1 at the first that does not.
Exits 2 if joserfc is missing, naming the install command.
"""

import argparse
import json
import ssl
import sys
import time
import urllib.parse
import urllib.request

JOSERFC_VERSION = "1.6.5"
try:
    from joserfc import jws, jwt
    from joserfc.jwk import KeySet
    from joserfc.errors import JoseError
except ImportError:  # pragma: no cover - what the Rust test reports
    print(
        f"joserfc is missing: python3 -m pip install joserfc=={JOSERFC_VERSION}",
        file=sys.stderr,
    )
    sys.exit(2)


class Refused(Exception):
    """A rule the token or the documents break."""


def need(condition, reason):
    if not condition:
        raise Refused(reason)


# ---------------------------------------------------------------------------
# Per-system rules. Each names its source.
# ---------------------------------------------------------------------------

# AWS IAM: "Create an OpenID Connect (OIDC) identity provider in IAM",
# prerequisites: the provider URL "must begin with https://", "query
# parameters are not allowed", "the URL should not contain a port number";
# IAM supports RS256, RS384, RS512, ES256, ES384 and ES512 signed tokens.
# AssumeRoleWithWebIdentity matches the role trust policy's
# `ISSUER_HOST:aud` and `ISSUER_HOST:sub` conditions against the token.
# Session tags: IAM User Guide "Pass session tags in AWS STS"
# (AssumeRoleWithWebIdentity section): claim "https://aws.amazon.com/tags"
# with "principal_tags" (key -> [value]) and "transitive_tag_keys"; at
# most 50 tags, keys up to 128 characters, values up to 256; tag
# characters are letters, digits, spaces and _ . : / = + - @ ("Tagging IAM
# resources", naming rules).
AWS_ALGS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"
AWS_MAX_TAGS = 50
AWS_TAG_KEY_MAX = 128
AWS_TAG_VALUE_MAX = 256

# GCP Workload Identity Federation: the STS token exchange reference
# (projects.locations... v1/token, `subjectToken`): header `kid` and `alg`
# required, alg "must be RS256 or ES256"; payload `iss` with a discovery
# document at iss/.well-known/openid-configuration (OIDC Discovery 1.0
# section 4.2), `iat` "must be in the past", `exp` "must be less than 48
# hours after iat", `sub`, `aud` one of the provider's allowed audiences.
# Attribute mapping ("Workload Identity Federation", attribute mappings):
# `google.subject` (mapped from assertion.sub) is at most 127 bytes.
GCP_ALGS = {"RS256", "ES256"}
GCP_MAX_LIFETIME = 48 * 3600
GCP_SUBJECT_MAX_BYTES = 127

# Azure / Microsoft Entra workload identity federation: "Important
# considerations and restrictions for federated identity credentials":
# the federated credential's issuer and subject are checked against the
# token's `iss` and `sub` exactly (case-sensitive), its audience
# (recommended `api://AzureADTokenExchange`, Graph federatedIdentityCredential
# `audiences`) against `aud`; only RS256-signed tokens are accepted; the
# issuer is an https URL. Graph's federatedIdentityCredential limits
# issuer and subject to 600 characters.
AZURE_ALGS = {"RS256"}
AZURE_MAX_LEN = 600

# HashiCorp Vault / OpenBao JWT auth (API docs, /auth/jwt/config and
# /auth/jwt/role): `oidc_discovery_url` is the issuer (the discovery
# document's `issuer` must equal it); `jwt_supported_algs` defaults to
# RS256 with discovery; the role's `bound_audiences` must contain `aud`
# (any of), `bound_subject` must equal `sub`, `user_claim` (here `sub`)
# must be present; `exp` / `nbf` are checked with `expiration_leeway` and
# `not_before_leeway` (default 150 s) and `clock_skew_leeway` (60 s).
VAULT_ALGS = {"RS256"}
VAULT_LEEWAY = 150

# Kubernetes structured authentication (AuthenticationConfiguration,
# jwt[].issuer): `url` "must use the https scheme", must not have a query
# or fragment, and must equal `iss` and the discovery document's issuer;
# `audiences` must contain `aud`; `claimMappings.username.claim` (here
# `sub`) must be a non-empty string. The API server accepts the RFC 7518
# asymmetric algorithms.
K8S_ALGS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}

ALL_PROFILES = ("aws", "gcp", "azure", "vault", "kubernetes")

# OpenID Connect Discovery 1.0 section 3: the REQUIRED provider metadata.
DISCOVERY_REQUIRED = (
    "issuer",
    "authorization_endpoint",
    "jwks_uri",
    "response_types_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
)


def fetch_json(url, context):
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        need(response.status == 200, f"{url} answered {response.status}")
        return json.loads(response.read().decode("utf-8"))


def check_discovery(document, issuer):
    for field in DISCOVERY_REQUIRED:
        need(field in document, f"the discovery document lacks {field} (OIDC Discovery 1.0 section 3)")
    # Section 4.3: the issuer in the document must be identical to the
    # issuer the document was fetched for.
    need(document["issuer"] == issuer, f"discovery issuer {document['issuer']!r} is not {issuer!r} (section 4.3)")
    for field in ("response_types_supported", "subject_types_supported", "id_token_signing_alg_values_supported"):
        value = document[field]
        need(isinstance(value, list) and value and all(isinstance(v, str) for v in value),
             f"{field} must be a non-empty JSON array of strings")
    # Section 3: id_token_signing_alg_values_supported "MUST" include RS256.
    need("RS256" in document["id_token_signing_alg_values_supported"],
         "id_token_signing_alg_values_supported must include RS256 (section 3)")
    need(set(document["subject_types_supported"]) <= {"public", "pairwise"},
         "subject_types_supported has values other than public and pairwise")
    need(document["jwks_uri"].startswith("https://"), "jwks_uri must be https")


def check_jwks(jwks):
    keys = jwks.get("keys")
    need(isinstance(keys, list) and keys, "the JWK set has no keys")
    for key in keys:
        for field in ("kid", "alg", "use", "kty"):
            need(field in key, f"JWK {key.get('kid')!r} lacks {field}")
        need(key["use"] == "sig", f"JWK {key['kid']!r} has use {key['use']!r}, not sig")
    # AWS IAM: at most 100 RSA and 100 EC keys in the JWKS.
    need(sum(1 for k in keys if k["kty"] == "RSA") <= 100, "more than 100 RSA keys")
    need(sum(1 for k in keys if k["kty"] == "EC") <= 100, "more than 100 EC keys")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def verify(token, jwks, issuer, audience, subject, now):
    """The checks every profile shares; returns (header, claims)."""
    try:
        header = jws.extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError) as error:
        raise Refused(f"not a compact JWS: {error}") from None
    need(header.get("typ") in (None, "JWT"), f"typ {header.get('typ')!r} is not JWT")
    kid = header.get("kid")
    need(isinstance(kid, str) and kid, "the header has no kid")
    matching = [k for k in jwks["keys"] if k.get("kid") == kid]
    need(len(matching) == 1, f"no single JWKS key has kid {kid!r}")
    key_alg = matching[0]["alg"]
    need(header.get("alg") == key_alg, f"alg {header.get('alg')!r} is not its key's {key_alg!r}")
    key_set = KeySet.import_key_set({"keys": matching})
    try:
        decoded = jwt.decode(token, key_set, algorithms=[key_alg])
    except JoseError as error:
        raise Refused(f"the signature does not verify: {error.error}") from None
    claims = decoded.claims
    need(claims.get("iss") == issuer, f"iss {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    need(aud == audience or (isinstance(aud, list) and audience in aud),
         f"aud {aud!r} is not {audience!r}")
    need(claims.get("sub") == subject, f"sub {claims.get('sub')!r} is not {subject!r}")
    for name in ("iat", "nbf", "exp"):
        need(is_int(claims.get(name)), f"{name} is not an integer (RFC 7519 NumericDate as JSON integer)")
    need(claims["exp"] > now, f"the token expired {now - claims['exp']} s ago")
    need(claims["nbf"] <= now + 60, "the token is not valid yet")
    need(claims["iat"] <= now + 60, "the token was issued in the future")
    need(claims["exp"] > claims["iat"], "exp is not after iat")
    need(isinstance(claims.get("jti"), str) and claims["jti"], "no jti")
    return header, claims


def https_issuer(issuer, allow_port, who):
    parsed = urllib.parse.urlsplit(issuer)
    need(parsed.scheme == "https", f"{who}: the issuer must use https")
    need(not parsed.query and not parsed.fragment, f"{who}: the issuer must have no query or fragment")
    if not allow_port:
        need(parsed.port is None, f"{who}: the issuer must not have a port")


def profile_aws(header, claims, issuer, jwks):
    https_issuer(issuer, allow_port=False, who="aws")
    need(header["alg"] in AWS_ALGS, f"aws: alg {header['alg']} is not accepted")
    tags = claims.get(AWS_TAGS_CLAIM)
    if tags is not None:
        need(isinstance(tags, dict), "aws: the tags claim must be an object")
        principal = tags.get("principal_tags")
        need(isinstance(principal, dict), "aws: principal_tags must be an object")
        need(len(principal) <= AWS_MAX_TAGS, "aws: more than 50 session tags")
        allowed = set("_.:/=+-@ ")
        for key, values in principal.items():
            need(0 < len(key) <= AWS_TAG_KEY_MAX, f"aws: tag key {key!r} length")
            need(isinstance(values, list) and len(values) == 1 and isinstance(values[0], str),
                 f"aws: tag {key!r} must be a list of one string")
            for text in (key, values[0]):
                need(all(c.isalnum() or c in allowed for c in text), f"aws: tag {key!r} has a forbidden character")
            need(len(values[0]) <= AWS_TAG_VALUE_MAX, f"aws: tag {key!r} value too long")
        transitive = tags.get("transitive_tag_keys", [])
        need(isinstance(transitive, list) and set(transitive) <= set(principal),
             "aws: transitive_tag_keys must name principal tags")


def profile_gcp(header, claims, issuer, jwks):
    https_issuer(issuer, allow_port=True, who="gcp")
    need(header["alg"] in GCP_ALGS, f"gcp: alg {header['alg']} is not RS256 or ES256")
    need(len(claims["sub"].encode("utf-8")) <= GCP_SUBJECT_MAX_BYTES,
         f"gcp: google.subject (sub) is over {GCP_SUBJECT_MAX_BYTES} bytes")
    need(claims["exp"] - claims["iat"] < GCP_MAX_LIFETIME, "gcp: exp is 48 hours or more after iat")


def profile_azure(header, claims, issuer, jwks):
    https_issuer(issuer, allow_port=True, who="azure")
    need(header["alg"] in AZURE_ALGS, f"azure: alg {header['alg']} is not RS256")
    need(len(issuer) <= AZURE_MAX_LEN and len(claims["sub"]) <= AZURE_MAX_LEN,
         "azure: issuer or subject over 600 characters")
    need(isinstance(claims["aud"], str) or isinstance(claims["aud"], list), "azure: aud")


def profile_vault(header, claims, issuer, jwks):
    need(header["alg"] in VAULT_ALGS, f"vault: alg {header['alg']} is not in jwt_supported_algs (RS256)")
    need(isinstance(claims.get("sub"), str) and claims["sub"], "vault: user_claim sub missing")


def profile_kubernetes(header, claims, issuer, jwks):
    https_issuer(issuer, allow_port=True, who="kubernetes")
    need(header["alg"] in K8S_ALGS, f"kubernetes: alg {header['alg']} is not accepted")
    need(isinstance(claims.get("sub"), str) and claims["sub"], "kubernetes: username claim sub empty")


PROFILES = {
    "aws": profile_aws,
    "gcp": profile_gcp,
    "azure": profile_azure,
    "vault": profile_vault,
    "kubernetes": profile_kubernetes,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="where to fetch the documents from")
    parser.add_argument("--ca", required=True, help="CA bundle (PEM) for the broker's TLS")
    parser.add_argument("--issuer", required=True, help="the issuer iss must equal")
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--profile", action="append", choices=ALL_PROFILES, required=True)
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.ca)
    with open(args.token_file, encoding="ascii") as f:
        token = f.read().strip()
    now = int(time.time())
    profile = "discovery"
    try:
        document = fetch_json(args.base + "/.well-known/openid-configuration", context)
        check_discovery(document, args.issuer)
        jwks_uri = document["jwks_uri"]
        need(jwks_uri.startswith(args.issuer + "/"), "jwks_uri is not under the issuer")
        jwks = fetch_json(args.base + jwks_uri[len(args.issuer):], context)
        check_jwks(jwks)
        print("PASS discovery")
        profile = "token"
        header, claims = verify(token, jwks, args.issuer, args.audience, args.subject, now)
        print("PASS token")
        for profile in args.profile:
            PROFILES[profile](header, claims, args.issuer, jwks)
            print(f"PASS {profile}")
    except Refused as refused:
        print(f"REFUSED {profile}: {refused}")
        return 1
    except (OSError, ValueError) as error:
        print(f"REFUSED {profile}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
