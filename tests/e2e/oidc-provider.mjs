// A real OpenID Connect provider for the Rust integration tests (tests/providers.rs).
// Usage: node oidc-provider.mjs PORT REDIRECT_URI CLIENT_ID CLIENT_SECRET
// Listens on 127.0.0.1:PORT, registers one confidential client that must use PKCE (S256),
// and keeps the development interactions (a login form accepting any login, then consent).
// Prints "READY <issuer>" once it accepts connections.
import Provider from 'oidc-provider';

const [port, redirectUri, clientId, clientSecret] = process.argv.slice(2);
if (!port || !redirectUri || !clientId || !clientSecret) {
  console.error('usage: node oidc-provider.mjs PORT REDIRECT_URI CLIENT_ID CLIENT_SECRET');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'nickname', 'picture'],
  },
  // Put the profile claims into the id_token too (what Google and most issuers do).
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      email: `${id}@oidc.test`,
      email_verified: true,
      name: `User ${id}`,
      nickname: id,
      picture: `http://127.0.0.1/${id}.png`,
    }),
  }),
  cookies: { keys: ['neulbi-e2e-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});
provider.proxy = false;

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`READY ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// The test harness closes our stdin when it is done; never outlive it.
process.stdin.on('end', stop);
process.stdin.resume();
