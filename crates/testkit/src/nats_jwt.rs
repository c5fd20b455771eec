//! NATS decentralised authentication made at test time, as `nsc` would
//! make it: an operator, accounts it signs, users an account signs, the
//! nats-server configuration that trusts the operator, and the users'
//! `.creds` files.
//!
//! A JWT here is what nats-server's JWT library (v2) decodes:
//! `base64url(header) . base64url(claims) . base64url(signature)`, without
//! padding, the header `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims
//! `jti` (base32 SHA-512/256 of the claims with an empty `jti`), `iat`,
//! `iss` (the signer's public key), `sub` (the subject's public key),
//! `name`, optionally `exp`, and `nats: {type, version: 2, …}`; the
//! signature is the issuer's Ed25519 signature over `header.claims`.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha512_256};

/// No limit, in a JWT's limits.
const NO_LIMIT: i64 = -1;

/// An operator: trusted by the server, signs accounts. It comes with its
/// system account, which the server needs in operator mode (JetStream
/// will not start without one).
#[derive(Debug)]
pub struct NatsOperator {
    key: KeyPair,
    jwt: String,
    system: NatsAccount,
}

/// An account the operator signed: signs its users.
#[derive(Debug)]
pub struct NatsAccount {
    key: KeyPair,
    jwt: String,
}

/// A user an account signed: its JWT and its NKey, the two halves of a
/// `.creds` file.
#[derive(Debug)]
pub struct NatsUser {
    key: KeyPair,
    jwt: String,
}

impl NatsOperator {
    /// A new operator with a self-signed JWT and its system account `SYS`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::new_operator();
        let system = account_signed_by(&key, "SYS");
        let jwt = encode(
            &key,
            &key.public_key(),
            name,
            None,
            json!({
                "system_account": system.public_key(),
                "type": "operator",
                "version": 2,
            }),
        );
        NatsOperator { key, jwt, system }
    }

    /// The operator's JWT (the server's `operator:`).
    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// A new account signed by this operator, without limits on
    /// connections, subscriptions or payloads (a zero would forbid them).
    pub fn account(&self, name: &str) -> NatsAccount {
        account_signed_by(&self.key, name)
    }

    /// nats-server configuration (to give to [`crate::NatsServer::start_with`])
    /// trusting this operator, with its system account and `accounts`
    /// preloaded in a memory resolver (what `nsc generate config
    /// --mem-resolver` writes): those accounts' users may connect, nobody
    /// else.
    pub fn server_config(&self, accounts: &[&NatsAccount]) -> String {
        let preload: String = std::iter::once(&self.system)
            .chain(accounts.iter().copied())
            .map(|account| format!("  {}: \"{}\"\n", account.public_key(), account.jwt))
            .collect();
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n{preload}}}\n",
            self.jwt,
            self.system.public_key(),
        )
    }
}

/// A new account whose JWT `operator` signed.
fn account_signed_by(operator: &KeyPair, name: &str) -> NatsAccount {
    let key = KeyPair::new_account();
    let jwt = encode(
        operator,
        &key.public_key(),
        name,
        None,
        json!({
            "limits": {
                "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
                "imports": NO_LIMIT, "exports": NO_LIMIT, "wildcards": true,
                "conn": NO_LIMIT, "leaf": NO_LIMIT,
            },
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }),
    );
    NatsAccount { key, jwt }
}

impl NatsAccount {
    /// The account's public NKey (`A…`).
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// A new user of this account, valid without end.
    pub fn user(&self, name: &str) -> NatsUser {
        self.user_until(name, None)
    }

    /// A new user of this account whose JWT expired a minute ago.
    pub fn expired_user(&self, name: &str) -> NatsUser {
        self.user_until(name, Some(unix_now() - 60))
    }

    fn user_until(&self, name: &str, expires: Option<u64>) -> NatsUser {
        let key = KeyPair::new_user();
        let jwt = encode(
            &self.key,
            &key.public_key(),
            name,
            expires,
            json!({
                "pub": {}, "sub": {},
                "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
                "type": "user",
                "version": 2,
            }),
        );
        NatsUser { key, jwt }
    }
}

impl NatsUser {
    /// The user's JWT.
    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// The user's NKey seed (`SU…`): the secret half.
    pub fn seed(&self) -> String {
        self.key.seed().expect("a generated key has its seed")
    }

    /// The `.creds` file's text, in the layout `nsc` writes (the clients
    /// find the two blocks by their dashed lines).
    pub fn creds(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            jwt = self.jwt,
            seed = self.seed(),
        )
    }

    /// Writes [`NatsUser::creds`] to `path`.
    pub fn write_creds(&self, path: &Path) {
        std::fs::write(path, self.creds()).expect("write the creds file");
    }
}

/// A v2 JWT about `subject`, signed by `issuer`.
fn encode(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    expires: Option<u64>,
    nats: Value,
) -> String {
    let mut claims = json!({
        "iat": unix_now(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
    });
    if let Some(expires) = expires {
        claims["exp"] = json!(expires);
    }
    // An id made the way nsc makes it, a hash of the claims before the id
    // and the `nats` section are added (the server does not recompute it).
    let digest = Sha512_256::digest(claims.to_string().as_bytes());
    claims["jti"] = json!(BASE32_NOPAD.encode(&digest));
    claims["nats"] = nats;
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer
        .sign(signed.as_bytes())
        .expect("a generated key signs");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_of(jwt: &str) -> Value {
        let body = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&BASE64URL_NOPAD.decode(body.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn a_user_jwt_is_signed_by_its_account_and_names_it() {
        let operator = NatsOperator::new("op");
        let account = operator.account("app");
        let user = account.user("svc");

        let parts: Vec<&str> = user.jwt().split('.').collect();
        assert_eq!(parts.len(), 3);
        let signature = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        let account_key = KeyPair::from_public_key(&account.public_key()).unwrap();
        account_key.verify(signed.as_bytes(), &signature).unwrap();

        let claims = claims_of(user.jwt());
        assert_eq!(claims["iss"], account.public_key());
        assert_eq!(claims["nats"]["type"], "user");
        assert_eq!(claims["nats"]["version"], 2);
        assert!(claims.get("exp").is_none());
        let operator_claims = claims_of(operator.jwt());
        assert_eq!(operator_claims["iss"], operator_claims["sub"]);
    }

    #[test]
    fn an_expired_user_has_exp_in_the_past_and_creds_hold_both_halves() {
        let account = NatsOperator::new("op").account("app");
        let user = account.expired_user("late");

        let expires = claims_of(user.jwt())["exp"].as_u64().unwrap();
        let creds = user.creds();

        assert!(expires < unix_now());
        assert!(creds.contains(&format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------",
            user.jwt()
        )));
        assert!(creds.contains(&format!(
            "-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------",
            user.seed()
        )));
    }
}
