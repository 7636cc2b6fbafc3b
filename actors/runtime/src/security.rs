//! Security settings: the mode, where the keys are, every identity's
//! credentials and TLS; and connecting as a named identity.
//!
//! Secure by default: every actor and every CLI verb connects with its own
//! NATS identity, and every event is signed and checked. `falcon auth init`
//! writes what that needs into `security.keys_dir`:
//! `<identity>.nk` (an nkey seed per identity) and `<actor>.key` (an HMAC
//! key per actor), plus the server's authorization config. An open server
//! is an explicit choice (`security.mode = "open"`), warned about at start
//! and flagged by `falcon doctor`.

use std::path::{Path, PathBuf};

use falcon_kernel::signing::KeyRing;
use falcon_nats::{Credentials, Identity, Tls};
use falcon_sagas::Actor;
use falcon_schemas::ids::is_valid_id;
use serde::{Deserialize, Serialize};

use crate::settings::Settings;

/// `security.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Identities, broker permissions and signed events.
    #[default]
    Secure,
    /// No identities and no signatures: any client may do anything. For a
    /// throw-away local server only.
    Open,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Secure => "secure",
            Mode::Open => "open",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// `secure` (identities, permissions, signed events) or `open`.
    /// Default `secure`.
    pub mode: Mode,
    /// Where `falcon auth init` wrote the keys: `<identity>.nk` nkey seeds
    /// (used for any identity without an entry in `nats.identities`) and
    /// `<actor>.key` signing keys. Default `secrets`.
    pub keys_dir: String,
    /// The identity that provisions streams and consumers (the only one the
    /// broker lets create, update or delete them). Default `provisioning`.
    pub provisioning: String,
    /// The identity `falcon wallet deposit` connects as (the only one the
    /// broker lets deposit). Default `treasury`.
    pub treasury: String,
    /// The identity the operator verbs (`saga`, `dlq`, `replay`, `verify`,
    /// `doctor`, `chaos`, `bench`'s reads) connect as. Default `operator`.
    pub operator: String,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        SecuritySettings {
            mode: Mode::Secure,
            keys_dir: "secrets".into(),
            provisioning: "provisioning".into(),
            treasury: "treasury".into(),
            operator: "operator".into(),
        }
    }
}

/// One identity's credentials, when they are not the nkey seed in
/// `security.keys_dir`. Exactly one way: `nkey_seed_file`, `creds_file`,
/// or `user` with `password` (or `password_file`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// A file holding an nkey seed (`SU…`).
    pub nkey_seed_file: String,
    /// A NATS creds file (user JWT and seed), for operator-mode servers.
    pub creds_file: String,
    pub user: String,
    /// Shown masked by `falcon config show`.
    pub password: String,
    /// A file holding the password.
    pub password_file: String,
}

/// TLS of every connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// CA certificate (PEM) that signs the server's. Default empty.
    pub ca_file: String,
    /// Client certificate (PEM), with `key_file`, for servers that verify
    /// clients. Default empty.
    pub cert_file: String,
    pub key_file: String,
    /// Refuse to connect without TLS. Default false (true when a CA or a
    /// client certificate is set).
    pub required: bool,
}

impl TlsSettings {
    pub fn to_tls(&self) -> Tls {
        let some = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        Tls {
            ca_file: some(&self.ca_file),
            client_cert: some(&self.cert_file).zip(some(&self.key_file)),
            required: self.required,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err("nats.tls: cert_file and key_file go together".into());
        }
        for (key, path) in [
            ("nats.tls.ca_file", &self.ca_file),
            ("nats.tls.cert_file", &self.cert_file),
            ("nats.tls.key_file", &self.key_file),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                return Err(format!("{key}: {path} is not a readable file"));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The keys directory.
    pub fn keys_dir(&self) -> PathBuf {
        PathBuf::from(&self.security.keys_dir)
    }

    /// The credentials of identity `name`: its `nats.identities` entry, else
    /// `<keys_dir>/<name>.nk`; none in open mode.
    pub fn identity(&self, name: &str) -> Result<Identity, String> {
        if self.security.mode == Mode::Open {
            return Ok(Identity {
                name: name.to_owned(),
                credentials: Credentials::None,
            });
        }
        let credentials = match self.nats.identities.get(name) {
            Some(id) => explicit(name, id)?,
            None => {
                let dir = self.keys_dir();
                let (seed, password) = (
                    dir.join(format!("{name}.nk")),
                    dir.join(format!("{name}.password")),
                );
                if !seed.exists() && password.exists() {
                    Credentials::UserPassword {
                        user: name.to_owned(),
                        password: read_secret(&password)?,
                    }
                } else {
                    Credentials::NkeySeed(read_secret(&seed).map_err(|e| {
                        format!(
                            "no NATS identity for {name}: {e}; security.mode is secure, so run `falcon auth init` (or set nats.identities.{name}, or security.mode = \"open\")"
                        )
                    })?)
                }
            }
        };
        Ok(Identity {
            name: name.to_owned(),
            credentials,
        })
    }

    /// The signing keys: all actors' from `keys_dir`, or none in open mode.
    pub fn key_ring(&self) -> Result<KeyRing, String> {
        match self.security.mode {
            Mode::Open => Ok(KeyRing::open()),
            Mode::Secure => KeyRing::load(&self.keys_dir()),
        }
    }

    /// Connects as identity `name`.
    pub async fn connect_as(
        &self,
        name: &str,
        client_name: &str,
    ) -> Result<async_nats::Client, falcon_kernel::Error> {
        let identity = self.identity(name).map_err(falcon_kernel::Error::Config)?;
        Ok(falcon_nats::connect_as(
            &self.nats.url,
            client_name,
            &identity,
            &self.nats.tls.to_tls(),
        )
        .await?)
    }

    pub(crate) fn validate_security(&self) -> Result<(), String> {
        let s = &self.security;
        for (key, name) in [
            ("security.provisioning", &s.provisioning),
            ("security.treasury", &s.treasury),
            ("security.operator", &s.operator),
            ("nats.identity", &self.nats.identity),
        ] {
            if !is_valid_id(name) {
                return Err(format!(
                    "{key}: {name:?} is not 1-64 characters of [A-Za-z0-9_-]"
                ));
            }
        }
        for actor in Actor::ALL {
            for (key, other) in [
                ("security.provisioning", &s.provisioning),
                ("security.treasury", &s.treasury),
                ("security.operator", &s.operator),
                ("nats.identity", &self.nats.identity),
            ] {
                if other == actor.as_str() {
                    return Err(format!(
                        "{key}: {other:?} is an actor's identity; give it its own"
                    ));
                }
            }
        }
        for (name, id) in &self.nats.identities {
            if !is_valid_id(name) {
                return Err(format!(
                    "nats.identities.{name}: the name is not 1-64 characters of [A-Za-z0-9_-]"
                ));
            }
            explicit(name, id)?;
        }
        if self.wallet.treasury_principal != s.treasury {
            return Err(format!(
                "security.treasury: {:?}, but wallet.treasury_principal is {:?}; they must name the same identity (the wallet accepts deposits from it, the CLI deposits as it)",
                s.treasury, self.wallet.treasury_principal
            ));
        }
        self.nats.tls.validate()?;
        if s.mode == Mode::Secure && s.keys_dir.is_empty() {
            return Err("security.keys_dir: empty; secure mode needs the keys".into());
        }
        Ok(())
    }
}

/// The credentials an explicit identity entry gives: exactly one way.
fn explicit(name: &str, id: &IdentitySettings) -> Result<Credentials, String> {
    let key = |k: &str| format!("nats.identities.{name}.{k}");
    let ways = [
        !id.nkey_seed_file.is_empty(),
        !id.creds_file.is_empty(),
        !id.user.is_empty(),
    ]
    .iter()
    .filter(|w| **w)
    .count();
    if ways != 1 {
        return Err(format!(
            "nats.identities.{name}: give exactly one of nkey_seed_file, creds_file or user (with password or password_file)"
        ));
    }
    if !id.nkey_seed_file.is_empty() {
        let seed = read_secret(Path::new(&id.nkey_seed_file))
            .map_err(|e| format!("{}: {e}", key("nkey_seed_file")))?;
        return Ok(Credentials::NkeySeed(seed));
    }
    if !id.creds_file.is_empty() {
        if !Path::new(&id.creds_file).is_file() {
            return Err(format!(
                "{}: {} is not a readable file",
                key("creds_file"),
                id.creds_file
            ));
        }
        return Ok(Credentials::CredsFile(PathBuf::from(&id.creds_file)));
    }
    let password = match (id.password.is_empty(), id.password_file.is_empty()) {
        (false, true) => id.password.clone(),
        (true, false) => read_secret(Path::new(&id.password_file))
            .map_err(|e| format!("{}: {e}", key("password_file")))?,
        _ => {
            return Err(format!(
                "{}: give password or password_file (one of them)",
                key("user")
            ))
        }
    };
    Ok(Credentials::UserPassword {
        user: id.user.clone(),
        password,
    })
}

/// A one-line secret from a file (surrounding white space dropped), with
/// its size bounded.
fn read_secret(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > 64 * 1024 {
        return Err(format!("{} is larger than a secret can be", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// Secrets in a JSON rendering of the settings, masked: every `*url`'s
/// password and every `password`.
pub(crate) fn mask_secrets(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = v {
        for (key, value) in map.iter_mut() {
            match value {
                serde_json::Value::String(s) if key.ends_with("url") => {
                    *s = falcon_nats::mask_url(s);
                }
                serde_json::Value::String(s) if key == "password" && !s.is_empty() => {
                    *s = "****".into();
                }
                other => mask_secrets(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_mode_without_keys_says_what_to_do() {
        let mut s = Settings::default();
        s.security.keys_dir = "/nonexistent-falcon-keys".into();
        let e = s.identity("wallet").expect_err("no seed");
        assert!(e.contains("falcon auth init"), "{e}");
        assert!(s.key_ring().is_err());
        s.security.mode = Mode::Open;
        assert_eq!(
            s.identity("wallet").map(|i| i.credentials),
            Ok(Credentials::None)
        );
        assert!(!s.key_ring().expect("open ring").required());
    }

    #[test]
    fn explicit_identities_take_exactly_one_way() {
        let mut s = Settings::default();
        s.nats.identities.insert(
            "alice".into(),
            IdentitySettings {
                user: "alice".into(),
                password: "pw".into(),
                ..Default::default()
            },
        );
        assert!(matches!(
            s.identity("alice").map(|i| i.credentials),
            Ok(Credentials::UserPassword { .. })
        ));
        s.nats.identities.get_mut("alice").expect("set").creds_file = "x.creds".into();
        let e = s.validate_security().expect_err("two ways");
        assert!(e.starts_with("nats.identities.alice"), "{e}");
        s.nats.identities.clear();
        s.security.treasury = "wallet".into();
        let e = s.validate_security().expect_err("an actor's name");
        assert!(e.starts_with("security.treasury"), "{e}");
        s.security.treasury = "a.b".into();
        assert!(s.validate_security().is_err());
    }

    #[test]
    fn passwords_are_masked() {
        let mut s = Settings::default();
        s.nats.identities.insert(
            "alice".into(),
            IdentitySettings {
                user: "alice".into(),
                password: "hunter2".into(),
                ..Default::default()
            },
        );
        let shown = format!("{:?}", s.masked());
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
