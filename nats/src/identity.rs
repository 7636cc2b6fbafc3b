//! Who a connection is, and how it is secured: an identity's credentials
//! (an nkey seed, a creds file, or user and password) and TLS (the CA that
//! signs the server, a client certificate, TLS required).

use std::fmt;
use std::path::PathBuf;

use async_nats::{ConnectOptions, ServerAddr};

/// How an identity proves itself to the server.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// None: an open server, or credentials in the URL
    /// (`nats://user:password@host`, `nats://token@host`).
    #[default]
    None,
    /// An nkey seed (`SU…`), as `falcon auth init` writes them.
    NkeySeed(String),
    /// A creds file (a user JWT and its nkey seed), for operator-mode
    /// servers.
    CredsFile(PathBuf),
    UserPassword {
        user: String,
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::NkeySeed(_) => f.write_str("NkeySeed(****)"),
            Credentials::CredsFile(p) => write!(f, "CredsFile({})", p.display()),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword({user}:****)"),
        }
    }
}

/// A named identity: an actor, the provisioning identity, the treasury, a
/// client principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub credentials: Credentials,
}

impl Identity {
    /// No identity of its own (an open server).
    pub fn anonymous() -> Identity {
        Identity {
            name: "anonymous".into(),
            credentials: Credentials::None,
        }
    }

    /// The inbox prefix its replies come on: `_INBOX_<name>` when it has
    /// credentials (the broker lets each identity subscribe to its own
    /// only), the client's default otherwise.
    pub fn inbox_prefix(&self) -> Option<String> {
        match self.credentials {
            Credentials::None => None,
            _ => Some(inbox_prefix(&self.name)),
        }
    }

    pub(crate) async fn options(&self, servers: &[ServerAddr]) -> std::io::Result<ConnectOptions> {
        let options = match &self.credentials {
            Credentials::None => url_credentials(servers),
            Credentials::NkeySeed(seed) => ConnectOptions::with_nkey(seed.clone()),
            Credentials::CredsFile(path) => ConnectOptions::new().credentials_file(path).await?,
            Credentials::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
        };
        Ok(match self.inbox_prefix() {
            Some(prefix) => options.custom_inbox_prefix(prefix),
            None => options,
        })
    }
}

/// The inbox prefix of identity `name`.
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX_{name}")
}

/// Credentials in the URL: the client does not take them from the URL
/// itself.
fn url_credentials(servers: &[ServerAddr]) -> ConnectOptions {
    match servers.iter().find(|s| s.has_user_pass()) {
        Some(s) => match (s.username(), s.password()) {
            (Some(user), Some(pass)) => {
                ConnectOptions::with_user_and_password(user.into(), pass.into())
            }
            (Some(token), None) => ConnectOptions::with_token(token.into()),
            _ => ConnectOptions::new(),
        },
        None => ConnectOptions::new(),
    }
}

/// TLS of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// The CA certificate (PEM) that signs the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify
    /// clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse to connect without TLS.
    pub required: bool,
}

impl Tls {
    pub(crate) fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options.require_tls(self.required || self.ca_file.is_some() || self.client_cert.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let seed = Credentials::NkeySeed("SUAsecretseed".into());
        let pw = Credentials::UserPassword {
            user: "wallet".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{seed:?} {pw:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("wallet"));
    }

    #[test]
    fn each_identity_has_its_own_inbox() {
        let id = Identity {
            name: "wallet".into(),
            credentials: Credentials::NkeySeed("S".into()),
        };
        assert_eq!(id.inbox_prefix().as_deref(), Some("_INBOX_wallet"));
        assert_eq!(Identity::anonymous().inbox_prefix(), None);
    }
}
