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

impl GenesysSettings {
    /// Builds settings from a region (code, name or domain) or explicit base URLs.
    ///
    /// `api_url` wins over `region`; without `login_url` the login host is derived from the API
    /// host (`api.` → `login.`), or is the same base URL for hosts without `api.` (the emulator).
    pub fn new(
        region: Option<&str>,
        api_url: Option<&str>,
        login_url: Option<&str>,
        client_id: Option<String>,
        client_secret: Option<SecretString>,
    ) -> Result<Self, Error> {
        let (api_base, derived_login) = match (api_url, region) {
            (Some(api), _) => {
                let api = parse_base(api)?;
                let login = derive_login(&api);
                (api, login)
            }
            (None, Some(name)) => {
                let found = region::find(name).map_err(Error::Settings)?;
                (
                    parse_base(&found.api_url())?,
                    parse_base(&found.login_url())?,
                )
            }
            (None, None) => return Err(Error::Settings(
                "no Genesys Cloud region: set GENESYS_REGION (e.g. eu-west-1 or mypurecloud.ie) \
                     or GENESYS_API_URL"
                    .into(),
            )),
        };
        let login_base = match login_url {
            Some(login) => parse_base(login)?,
            None => derived_login,
        };
        let client_id = client_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| Error::Settings("no OAuth client id: set GENESYS_CLIENT_ID".into()))?;
        let client_secret = client_secret.ok_or_else(|| {
            Error::Settings("no OAuth client secret: set GENESYS_CLIENT_SECRET".into())
        })?;
        Ok(GenesysSettings {
            api_base,
            login_base,
            client_id,
            client_secret,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
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

fn parse_base(text: &str) -> Result<Url, Error> {
    let url = Url::parse(text.trim_end_matches('/'))
        .map_err(|e| Error::Settings(format!("{text:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(Error::Settings(format!(
            "{text:?}: plain http is only allowed for a local emulator; use https"
        ))),
        other => Err(Error::Settings(format!(
            "{text:?}: unsupported scheme {other}"
        ))),
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

    fn secret() -> Option<SecretString> {
        Some(SecretString::from("s3cr3t-value"))
    }

    #[test]
    fn region_and_urls_give_api_and_login_hosts() {
        let ie = GenesysSettings::new(Some("eu-west-1"), None, None, Some("id".into()), secret())
            .unwrap();
        assert_eq!(ie.api_base.as_str(), "https://api.mypurecloud.ie/");
        assert_eq!(ie.login_base.as_str(), "https://login.mypurecloud.ie/");
        let proxy = GenesysSettings::new(
            None,
            Some("https://api.example.test"),
            None,
            Some("id".into()),
            secret(),
        )
        .unwrap();
        assert_eq!(proxy.login_base.host_str(), Some("login.example.test"));
        let emulator = GenesysSettings::new(
            None,
            Some("http://127.0.0.1:8710"),
            None,
            Some("id".into()),
            secret(),
        )
        .unwrap();
        assert_eq!(emulator.login_base, emulator.api_base);
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        let no_region =
            GenesysSettings::new(None, None, None, Some("id".into()), secret()).unwrap_err();
        assert!(no_region.to_string().contains("GENESYS_REGION"));
        let plain = GenesysSettings::new(
            None,
            Some("http://api.example.test"),
            None,
            Some("id".into()),
            secret(),
        )
        .unwrap_err();
        assert!(plain.to_string().contains("https"));
        let no_secret =
            GenesysSettings::new(Some("eu-west-1"), None, None, Some("id".into()), None)
                .unwrap_err();
        assert!(no_secret.to_string().contains("GENESYS_CLIENT_SECRET"));
        let unknown = GenesysSettings::new(
            Some("api.eu.purecloud.com"),
            None,
            None,
            Some("id".into()),
            secret(),
        )
        .unwrap_err();
        assert!(unknown
            .to_string()
            .contains("not a Genesys Cloud deployment"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let settings =
            GenesysSettings::new(Some("eu-west-1"), None, None, Some("id".into()), secret())
                .unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
    }
}
