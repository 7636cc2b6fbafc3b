//! Loading settings: built-in defaults < `falcon.toml` (or `--config`) <
//! environment (`FALCON__NATS__URL`, `FALCON__WALLET__DATABASE_URL`, …).

use std::path::Path;

use anyhow::{Context, Result};
use config::{Config, Environment, File};
use falcon_runtime::Settings;

pub fn load(path: Option<&Path>) -> Result<Settings> {
    let defaults = Config::try_from(&Settings::default()).context("encoding default settings")?;
    let file = match path {
        Some(p) => File::from(p).required(true),
        None => File::with_name("falcon.toml").required(false),
    };
    let settings: Settings = Config::builder()
        .add_source(defaults)
        .add_source(file)
        .add_source(
            Environment::with_prefix("FALCON")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("risk.blocked_wallets"),
        )
        .build()
        .context("reading configuration")?
        .try_deserialize()
        .context("invalid configuration")?;
    falcon_runtime::registry::validate(&settings)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example lists every key with its default.
    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("falcon.example.toml");
        let from_file: Settings = Config::builder()
            .add_source(File::from(path.as_path()))
            .build()
            .and_then(Config::try_deserialize)
            .expect("falcon.example.toml parses");
        assert_eq!(from_file, Settings::default());
        // And lists every key: the file alone, without serde's defaults,
        // has the same shape as the defaults.
        let raw: serde_json::Value = Config::builder()
            .add_source(File::from(path.as_path()))
            .build()
            .and_then(Config::try_deserialize)
            .expect("falcon.example.toml parses");
        let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
        assert_eq!(raw, defaults);
    }
}
