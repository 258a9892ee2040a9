// The peer stint-bench measures: oidc-provider (https://github.com/panva/node-oidc-provider)
// doing what Stint's mint does at its simplest, the OAuth 2.0 client
// credentials grant with client_secret_basic, answering with an ES256 JWT
// access token for one audience and one scope. In memory (its default
// adapter), no audit, one Node.js process: a lighter job than Stint's.
//
//   node server.mjs PORT
//
// It listens on 127.0.0.1:PORT only, prints "ready" once it does, and stops
// on SIGTERM or when its standard input closes (the benchmark going away).

import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error('usage: node server.mjs PORT');
  process.exit(2);
}

// The client and the resource: the same names as the broker's bench request
// (scope read:demo/bench, audience bench-api).
const CLIENT_ID = 'bench';
const CLIENT_SECRET = 'bench-secret-not-for-production-0123456789';
const RESOURCE = 'urn:stint-bench:bench-api';
const SCOPE = 'read:demo/bench';

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench' };

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      // The one key is ES256 (the default, RS256, would need an RSA key).
      id_token_signed_response_alg: 'ES256',
      scope: SCOPE,
    },
  ],
  jwks: { keys: [jwk] },
  scopes: [SCOPE],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== RESOURCE) {
          throw new Error(`unknown resource ${resource}`);
        }
        return {
          scope: SCOPE,
          audience: 'bench-api',
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log('ready');
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
