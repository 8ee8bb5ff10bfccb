//! The Genesys Cloud connection flags shared by `pdq run` and `pdq doctor`.

use std::time::Duration;

use clap::Args;
use pdq::genesys::{self, GenesysSettings, SettingsError};
use secrecy::{ExposeSecret, SecretString};

/// Where Genesys Cloud is and how pdq logs in (client credentials grant).
#[derive(Debug, Clone, Args)]
pub struct GenesysArgs {
    /// Region code, name or domain: eu-west-1, prod-euw1, mypurecloud.ie, euw2.pure.cloud, …
    #[arg(long, env = "GENESYS_REGION")]
    pub region: Option<String>,
    /// API base URL instead of a region (a proxy, or the emulator: http://127.0.0.1:8710).
    #[arg(long, env = "GENESYS_API_URL")]
    pub api_url: Option<String>,
    /// Login base URL (default: derived from the API URL, api. → login.).
    #[arg(long, env = "GENESYS_LOGIN_URL")]
    pub login_url: Option<String>,
    /// OAuth client id (a client credentials client).
    #[arg(long, env = "GENESYS_CLIENT_ID")]
    pub client_id: Option<String>,
    /// OAuth client secret (prefer the environment variable to the flag).
    #[arg(long, env = "GENESYS_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<SecretString>,
    /// Read the OAuth client secret from this file instead (systemd credentials, Kubernetes
    /// or Docker secrets); one trailing newline is ignored.
    #[arg(
        long,
        env = "GENESYS_CLIENT_SECRET_FILE",
        value_name = "PATH",
        conflicts_with = "client_secret"
    )]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Whole-request timeout in milliseconds.
    #[arg(long, env = "GENESYS_REQUEST_TIMEOUT_MS", default_value_t = 20_000)]
    pub request_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, env = "GENESYS_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
}

impl GenesysArgs {
    /// Validated client settings.
    ///
    /// An empty value counts as unset (Compose passes `GENESYS_REGION: ${GENESYS_REGION:-}` as
    /// ""), so a missing region is reported as missing rather than as the unknown region "".
    pub fn settings(&self) -> Result<GenesysSettings, genesys::Error> {
        let mut builder = GenesysSettings::builder()
            .request_timeout(Duration::from_millis(self.request_timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms.max(1)));
        if let Some(region) = given(&self.region) {
            builder = builder.region(region);
        }
        if let Some(url) = given(&self.api_url) {
            builder = builder.api_url(url);
        }
        if let Some(url) = given(&self.login_url) {
            builder = builder.login_url(url);
        }
        if let Some(id) = &self.client_id {
            builder = builder.client_id(id);
        }
        if let Some(secret) = self.secret()? {
            builder = builder.client_secret(secret);
        }
        Ok(builder.build()?)
    }
}

impl GenesysArgs {
    /// The client secret, from the flag or variable, or read from `--client-secret-file`.
    fn secret(&self) -> Result<Option<SecretString>, genesys::Error> {
        let Some(path) = &self.client_secret_file else {
            // An empty variable (Compose's `${GENESYS_CLIENT_SECRET:-}`) is a missing secret.
            let given = self.client_secret.as_ref();
            return Ok(given.filter(|s| !s.expose_secret().is_empty()).cloned());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            genesys::Error::Settings(SettingsError::SecretFileUnreadable {
                path: shown.clone(),
                reason: error.to_string(),
            })
        })?;
        let secret = text
            .strip_suffix('\n')
            .map(|s| s.strip_suffix('\r').unwrap_or(s))
            .unwrap_or(&text);
        if secret.is_empty() {
            return Err(genesys::Error::Settings(SettingsError::SecretFileEmpty {
                path: shown,
            }));
        }
        Ok(Some(SecretString::from(secret.to_owned())))
    }
}

/// A flag's value, with an empty or blank one counted as unset.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        genesys: GenesysArgs,
    }

    fn parse(args: &[&str]) -> GenesysArgs {
        Cli::try_parse_from(std::iter::once("pdq").chain(args.iter().copied()))
            .expect("parses")
            .genesys
    }

    #[test]
    fn the_secret_is_read_from_a_file_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("pdq-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "s3cret value\n").unwrap();
        let path = file.to_str().unwrap();
        let args = parse(&[
            "--api-url",
            "http://127.0.0.1:1",
            "--client-id",
            "id",
            "--client-secret-file",
            path,
        ]);
        let settings = args.settings().expect("settings");
        assert_eq!(settings.client_secret.expose_secret(), "s3cret value");

        std::fs::write(&file, "\n").unwrap();
        let empty = args.settings().map(|_| ()).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        std::fs::remove_file(&file).unwrap();
        let missing = args.settings().map(|_| ()).unwrap_err().to_string();
        assert!(
            missing.contains("cannot read the client secret file"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let both =
            Cli::try_parse_from(["pdq", "--client-secret", "x", "--client-secret-file", path]);
        assert!(both.is_err(), "a secret and a secret file conflict");
    }

    #[test]
    fn an_empty_region_is_reported_as_missing() {
        let args = parse(&["--region", "", "--client-id", "id", "--client-secret", "s"]);
        let error = args.settings().map(|_| ()).unwrap_err().to_string();
        assert!(
            error.contains("no Genesys Cloud region: set GENESYS_REGION"),
            "{error}"
        );
        assert!(!error.contains("unknown"), "{error}");
        let args = parse(&[
            "--region",
            "eu-west-1",
            "--client-id",
            "id",
            "--client-secret",
            "",
        ]);
        let error = args.settings().map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("no OAuth client secret"), "{error}");
    }
}
