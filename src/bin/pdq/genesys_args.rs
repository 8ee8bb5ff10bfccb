//! The Genesys Cloud connection flags shared by `pdq run` and `pdq doctor`.

use std::time::Duration;

use clap::Args;
use pdq::genesys::{self, GenesysSettings};
use secrecy::SecretString;

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
    /// Whole-request timeout in milliseconds.
    #[arg(long, env = "GENESYS_REQUEST_TIMEOUT_MS", default_value_t = 20_000)]
    pub request_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, env = "GENESYS_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
}

impl GenesysArgs {
    /// Validated client settings.
    pub fn settings(&self) -> Result<GenesysSettings, genesys::Error> {
        let mut builder = GenesysSettings::builder()
            .request_timeout(Duration::from_millis(self.request_timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms.max(1)));
        if let Some(region) = &self.region {
            builder = builder.region(region);
        }
        if let Some(url) = &self.api_url {
            builder = builder.api_url(url);
        }
        if let Some(url) = &self.login_url {
            builder = builder.login_url(url);
        }
        if let Some(id) = &self.client_id {
            builder = builder.client_id(id);
        }
        if let Some(secret) = &self.client_secret {
            builder = builder.client_secret(secret.clone());
        }
        Ok(builder.build()?)
    }
}
