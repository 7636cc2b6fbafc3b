//! A party reached over HTTP (the settlement provider), as every actor
//! that calls it does: a plain `http://` base URL (TLS is the egress
//! proxy's), one timeout for connecting and for each call, no redirects,
//! the API key as a bearer token, answers read up to a bound, and the
//! other party's words clipped before they go into an error or an event.

use std::time::Duration;

/// The most of another party's text (a reason, a refusal) that goes into
/// an error or an event's message.
pub const TEXT_MAX: usize = 200;

/// The base URL, the client and the API key of an HTTP party.
#[derive(Debug, Clone)]
pub struct Endpoint {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Endpoint {
    /// The party at `base` (`http://host:port`, named `setting` in
    /// errors), each call bounded by `timeout`.
    pub fn new(
        setting: &str,
        base: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Endpoint, String> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(format!(
                "{setting} {base:?}: an http:// URL (TLS is the egress proxy's)"
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("{setting}: building the HTTP client: {e}"))?;
        Ok(Endpoint {
            client,
            base: base.to_owned(),
            api_key,
        })
    }

    /// `GET <base><path>`, with the API key.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.client.get(format!("{}{path}", self.base)))
    }

    /// `POST <base><path>`, with the API key.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.client.post(format!("{}{path}", self.base)))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

/// Why an answer's body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    #[error("reading the answer")]
    Read(#[source] reqwest::Error),
}

/// The body of `response`, read up to `max` bytes (refused unread when it
/// says it is longer).
pub async fn bounded_body(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `text` cut to [`TEXT_MAX`] bytes at a character boundary, control
/// characters replaced: another party's words are quoted, never trusted.
pub fn clip(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() + c.len_utf8() > TEXT_MAX {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// The API key in the file `path` (named `setting` in errors): one line;
/// `None` when `path` is empty.
pub fn api_key_file(setting: &str, path: &str) -> Result<Option<String>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    let key = std::fs::read_to_string(path).map_err(|e| format!("{setting} {path}: {e}"))?;
    let key = key.trim();
    if key.is_empty() || key.len() > 4096 || key.chars().any(char::is_control) {
        return Err(format!("{setting} {path}: one line holding the key"));
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_at_a_character_boundary_without_control_characters() {
        assert_eq!(clip("a\nb\u{7}c"), "a b c");
        let long = "é".repeat(150);
        let clipped = clip(&long);
        assert!(
            clipped.len() <= TEXT_MAX + '…'.len_utf8(),
            "{}",
            clipped.len()
        );
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn only_plain_http() {
        let t = Duration::from_secs(1);
        assert!(Endpoint::new("provider.url", "https://p", None, t).is_err());
        assert!(Endpoint::new("provider.url", "ftp://p", None, t).is_err());
        assert!(Endpoint::new("provider.url", "http://p:1/", None, t).is_ok());
    }

    #[test]
    fn an_api_key_file_holds_one_line() {
        let dir = tempfile::tempdir().expect("a dir");
        let path = dir.path().join("k");
        assert_eq!(api_key_file("k", ""), Ok(None));
        assert!(api_key_file("k", &path.display().to_string()).is_err());
        std::fs::write(&path, "secret\n").expect("written");
        assert_eq!(
            api_key_file("k", &path.display().to_string()),
            Ok(Some("secret".into()))
        );
        std::fs::write(&path, "a\nb\n").expect("written");
        assert!(api_key_file("k", &path.display().to_string()).is_err());
    }
}
