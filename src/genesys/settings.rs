//! Validated client settings: where the API and login hosts are, and the credentials.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::{region, Error};

/// Everything the client needs; `Debug` never shows the secret.
#[derive(Debug, Clone)]
pub struct GenesysSettings {
    /// `https://api.<domain>` (or the emulator's base URL).
    pub api_base: Url,
    /// `https://login.<domain>` (or the emulator's base URL).
    pub login_base: Url,
    /// The OAuth client id (client credentials grant).
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: SecretString,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Renew the token this long before it expires.
    pub token_renew_margin: Duration,
}

/// Why client settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Neither a region nor an API URL was given.
    #[error(
        "no Genesys Cloud region: set GENESYS_REGION (e.g. eu-west-1 or mypurecloud.ie) \
         or GENESYS_API_URL"
    )]
    MissingRegion,
    /// The region names no Genesys Cloud deployment.
    #[error(transparent)]
    UnknownRegion(#[from] region::RegionError),
    /// No OAuth client id (or a blank one).
    #[error("no OAuth client id: set GENESYS_CLIENT_ID")]
    MissingClientId,
    /// No OAuth client secret.
    #[error("no OAuth client secret: set GENESYS_CLIENT_SECRET")]
    MissingClientSecret,
    /// The file that should hold the client secret cannot be read.
    #[error("cannot read the client secret file {path}: {reason}")]
    SecretFileUnreadable {
        /// The file's path, as given.
        path: String,
        /// The reading error.
        reason: String,
    },
    /// The file that should hold the client secret is empty.
    #[error("the client secret file {path} is empty")]
    SecretFileEmpty {
        /// The file's path, as given.
        path: String,
    },
    /// A base URL that does not parse.
    #[error("{text:?} is not a URL: {reason}")]
    NotAUrl {
        /// The text given.
        text: String,
        /// What the URL parser said.
        reason: url::ParseError,
    },
    /// Plain HTTP to a host that is not this machine.
    #[error("{text:?}: plain http is only allowed for a local emulator; use https")]
    PlainHttp {
        /// The URL given.
        text: String,
    },
    /// A scheme other than `https` (or `http` to loopback).
    #[error("{text:?}: unsupported scheme {scheme}")]
    UnsupportedScheme {
        /// The URL given.
        text: String,
        /// Its scheme.
        scheme: String,
    },
    /// The HTTP client could not be built (TLS backend, system configuration).
    #[error("HTTP client: {0}")]
    HttpClient(String),
    /// A request path does not join onto the API base URL.
    #[error("API URL: {0}")]
    ApiUrl(url::ParseError),
}

impl From<SettingsError> for Error {
    fn from(error: SettingsError) -> Error {
        Error::Settings(error)
    }
}

impl GenesysSettings {
    /// A builder: a region (or explicit base URLs) and the client credentials.
    pub fn builder() -> GenesysSettingsBuilder {
        GenesysSettingsBuilder::default()
    }
}

/// Collects the settings' parts; [`GenesysSettingsBuilder::build`] validates them.
#[derive(Debug, Clone, Default)]
pub struct GenesysSettingsBuilder {
    region: Option<String>,
    api_url: Option<String>,
    login_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
}

impl GenesysSettingsBuilder {
    /// The region: a code (`eu-west-1`), discovery name (`prod-euw1`) or domain.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// An explicit API base URL (a proxy, or the emulator); wins over the region.
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = Some(url.into());
        self
    }

    /// An explicit login base URL. Without it, the login host is derived from the API host
    /// (`api.` → `login.`), or is the same base URL for hosts without `api.` (the emulator).
    pub fn login_url(mut self, url: impl Into<String>) -> Self {
        self.login_url = Some(url.into());
        self
    }

    /// The OAuth client id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// The OAuth client secret.
    pub fn client_secret(mut self, secret: SecretString) -> Self {
        self.client_secret = Some(secret);
        self
    }

    /// The TCP connect timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The whole-request timeout (default 20 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Validates the parts into settings.
    pub fn build(self) -> Result<GenesysSettings, SettingsError> {
        let (api_base, derived_login) = match (self.api_url.as_deref(), self.region.as_deref()) {
            (Some(api), _) => {
                let api = parse_base(api)?;
                let login = derive_login(&api);
                (api, login)
            }
            (None, Some(name)) => {
                let found = region::find(name)?;
                (
                    parse_base(&found.api_url())?,
                    parse_base(&found.login_url())?,
                )
            }
            (None, None) => return Err(SettingsError::MissingRegion),
        };
        let login_base = match self.login_url.as_deref() {
            Some(login) => parse_base(login)?,
            None => derived_login,
        };
        let client_id = self
            .client_id
            .filter(|id| !id.trim().is_empty())
            .ok_or(SettingsError::MissingClientId)?;
        let client_secret = self
            .client_secret
            .ok_or(SettingsError::MissingClientSecret)?;
        Ok(GenesysSettings {
            api_base,
            login_base,
            client_id,
            client_secret,
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(20)),
            token_renew_margin: Duration::from_secs(60),
        })
    }
}

/// True for 127.0.0.0/8, ::1 and localhost: the only hosts allowed over plain HTTP.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

fn parse_base(text: &str) -> Result<Url, SettingsError> {
    let url = Url::parse(text.trim_end_matches('/')).map_err(|reason| SettingsError::NotAUrl {
        text: text.to_owned(),
        reason,
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(SettingsError::PlainHttp {
            text: text.to_owned(),
        }),
        other => Err(SettingsError::UnsupportedScheme {
            text: text.to_owned(),
            scheme: other.to_owned(),
        }),
    }
}

fn derive_login(api: &Url) -> Url {
    let mut login = api.clone();
    if let Some(host) = api.host_str().and_then(|h| h.strip_prefix("api.")) {
        let _ = login.set_host(Some(&format!("login.{host}")));
    }
    login
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_credentials() -> GenesysSettingsBuilder {
        GenesysSettings::builder()
            .client_id("id")
            .client_secret(SecretString::from("s3cr3t-value"))
    }

    #[test]
    fn region_and_urls_give_api_and_login_hosts() {
        let ie = with_credentials().region("eu-west-1").build().unwrap();
        assert_eq!(ie.api_base.as_str(), "https://api.mypurecloud.ie/");
        assert_eq!(ie.login_base.as_str(), "https://login.mypurecloud.ie/");
        let proxy = with_credentials()
            .api_url("https://api.example.test")
            .build()
            .unwrap();
        assert_eq!(proxy.login_base.host_str(), Some("login.example.test"));
        let emulator = with_credentials()
            .api_url("http://127.0.0.1:8710")
            .build()
            .unwrap();
        assert_eq!(emulator.login_base, emulator.api_base);
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        let no_region = with_credentials().build().unwrap_err();
        assert_eq!(no_region, SettingsError::MissingRegion);
        assert!(no_region.to_string().contains("GENESYS_REGION"));
        let plain = with_credentials()
            .api_url("http://api.example.test")
            .build()
            .unwrap_err();
        assert!(
            matches!(plain, SettingsError::PlainHttp { .. }),
            "{plain:?}"
        );
        assert!(plain.to_string().contains("https"));
        let no_secret = GenesysSettings::builder()
            .region("eu-west-1")
            .client_id("id")
            .build()
            .unwrap_err();
        assert_eq!(no_secret, SettingsError::MissingClientSecret);
        assert!(no_secret.to_string().contains("GENESYS_CLIENT_SECRET"));
        let unknown = with_credentials()
            .region("api.eu.purecloud.com")
            .build()
            .unwrap_err();
        assert!(unknown
            .to_string()
            .contains("not a Genesys Cloud deployment"));
        let wrapped = Error::from(unknown).to_string();
        assert!(wrapped.starts_with("configuration: "), "{wrapped}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let settings = with_credentials().region("eu-west-1").build().unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        let builder = format!("{:?}", with_credentials());
        assert!(!builder.contains("s3cr3t-value"), "{builder}");
    }
}
