//! The effective config as TOML: what `trident check --print` and the admin
//! `GET /config` show, defaults filled in and secrets redacted.

use super::file::ConfigFile;

/// What a redacted secret reads as.
pub const REDACTED: &str = "<redacted>";

/// Whether printed secrets are shown or replaced by [`REDACTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Redacted,
    Shown,
}

/// The config `text` (already checked) printed back as TOML, every default
/// filled in: the file structs hold each default as a serde default, so
/// serializing them prints it.
pub fn effective(text: &str, secrets: Secrets) -> Result<String, String> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut value = toml::Value::try_from(&file).map_err(|e| e.to_string())?;
    if secrets == Secrets::Redacted {
        redact(&mut value);
    }
    toml::to_string(&value).map_err(|e| e.to_string())
}

/// Replaces every secret the file format has: `[filters.*]` `hmac_secret`
/// (jwt) and inline `keys[].key` (api_key), and the values of
/// `[tracing.headers]` (collector credentials). File and variable names
/// (`hmac_secret_file`, `hmac_secret_env`, `keys_file`) are not secrets; API key
/// `sha256` digests are not either (a key cannot be recovered from them).
fn redact(value: &mut toml::Value) {
    let secret = || toml::Value::String(REDACTED.to_owned());
    if let Some(filters) = value.get_mut("filters").and_then(|f| f.as_table_mut()) {
        for filter in filters.iter_mut().filter_map(|(_, f)| f.as_table_mut()) {
            if let Some(hmac) = filter.get_mut("hmac_secret") {
                *hmac = secret();
            }
            let keys = filter.get_mut("keys").and_then(|k| k.as_array_mut());
            for entry in keys.into_iter().flatten().filter_map(|k| k.as_table_mut()) {
                if let Some(key) = entry.get_mut("key") {
                    *key = secret();
                }
            }
        }
    }
    let headers = value
        .get_mut("tracing")
        .and_then(|t| t.get_mut("headers"))
        .and_then(|h| h.as_table_mut());
    for header in headers
        .into_iter()
        .flat_map(|h| h.iter_mut().map(|(_, v)| v))
    {
        *header = secret();
    }
}
