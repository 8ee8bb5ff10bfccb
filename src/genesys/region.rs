//! Genesys Cloud deployments: a region name, code or domain → API and login base URLs.

/// One deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The AWS region code, as the SDKs name it (`eu-west-1`).
    pub code: &'static str,
    /// The service-discovery name (`prod-euw1`).
    pub discovery_name: &'static str,
    /// The domain (`mypurecloud.ie`); hosts are `api.<domain>` and `login.<domain>`.
    pub domain: &'static str,
}

/// The public deployments (service discovery 3.0.500 plus the SDKs' EU sovereign cloud).
pub const REGIONS: [Region; 18] = [
    Region {
        code: "us-east-1",
        discovery_name: "prod",
        domain: "mypurecloud.com",
    },
    Region {
        code: "us-west-2",
        discovery_name: "prod-usw2",
        domain: "usw2.pure.cloud",
    },
    Region {
        code: "ca-central-1",
        discovery_name: "prod-cac1",
        domain: "cac1.pure.cloud",
    },
    Region {
        code: "sa-east-1",
        discovery_name: "prod-sae1",
        domain: "sae1.pure.cloud",
    },
    Region {
        code: "mx-central-1",
        discovery_name: "prod-mxc1",
        domain: "mxc1.pure.cloud",
    },
    Region {
        code: "us-east-2",
        discovery_name: "fedramp-use2-core",
        domain: "use2.us-gov-pure.cloud",
    },
    Region {
        code: "eu-west-1",
        discovery_name: "prod-euw1",
        domain: "mypurecloud.ie",
    },
    Region {
        code: "eu-west-2",
        discovery_name: "prod-euw2",
        domain: "euw2.pure.cloud",
    },
    Region {
        code: "eu-central-1",
        discovery_name: "prod-euc1",
        domain: "mypurecloud.de",
    },
    Region {
        code: "eu-central-2",
        discovery_name: "prod-euc2",
        domain: "euc2.pure.cloud",
    },
    Region {
        code: "me-central-1",
        discovery_name: "prod-mec1",
        domain: "mec1.pure.cloud",
    },
    Region {
        code: "ap-south-1",
        discovery_name: "prod-aps1",
        domain: "aps1.pure.cloud",
    },
    Region {
        code: "ap-northeast-1",
        discovery_name: "prod-apne1",
        domain: "mypurecloud.jp",
    },
    Region {
        code: "ap-northeast-2",
        discovery_name: "prod-apne2",
        domain: "apne2.pure.cloud",
    },
    Region {
        code: "ap-northeast-3",
        discovery_name: "prod-apne3",
        domain: "apne3.pure.cloud",
    },
    Region {
        code: "ap-southeast-1",
        discovery_name: "prod-apse1",
        domain: "apse1.pure.cloud",
    },
    Region {
        code: "ap-southeast-2",
        discovery_name: "prod-apse2",
        domain: "mypurecloud.com.au",
    },
    Region {
        code: "eusc-de-east-1",
        discovery_name: "eusc-de-east-1",
        domain: "edee1.eusc-pure.cloud",
    },
];

impl Region {
    /// `https://api.<domain>`.
    pub fn api_url(&self) -> String {
        format!("https://api.{}", self.domain)
    }

    /// `https://login.<domain>`.
    pub fn login_url(&self) -> String {
        format!("https://login.{}", self.domain)
    }
}

/// A name that is no Genesys Cloud deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// A `*.purecloud.com` host from an inaccurate tutorial (no deployment has one).
    #[error(
        "{name:?} is not a Genesys Cloud deployment (hosts like api.eu.purecloud.com come from \
         inaccurate tutorials). EU orgs use mypurecloud.ie (Dublin), mypurecloud.de (Frankfurt), \
         euw2.pure.cloud (London) or euc2.pure.cloud (Zurich); FedRAMP uses use2.us-gov-pure.cloud"
    )]
    TutorialHost {
        /// The name given.
        name: String,
    },
    /// Any other name.
    #[error(
        "unknown Genesys Cloud region {name:?}: use a region code (eu-west-1), a domain \
         (mypurecloud.ie, euw2.pure.cloud) or explicit --api-url/--login-url; known regions: {}",
        known_codes()
    )]
    Unknown {
        /// The name given.
        name: String,
    },
}

/// The known region codes, comma-separated.
fn known_codes() -> String {
    REGIONS
        .iter()
        .map(|r| r.code)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds a deployment by code (`eu-west-1`), discovery name (`prod-euw1`) or domain
/// (`mypurecloud.ie`, also `api.mypurecloud.ie` or `https://api.mypurecloud.ie`), or by the
/// address an admin copies from the browser (`https://apps.mypurecloud.ie/directory/#/…`).
pub fn find(name: &str) -> Result<Region, RegionError> {
    let trimmed = name
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = trimmed
        .split(['/', '#', '?'])
        .next()
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    let wanted = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    let domain = ["api.", "login.", "apps."]
        .iter()
        .find_map(|prefix| wanted.strip_prefix(prefix))
        .unwrap_or(wanted);
    if let Some(region) = REGIONS
        .iter()
        .find(|r| r.code == wanted || r.discovery_name == wanted || r.domain == domain)
    {
        return Ok(*region);
    }
    if domain.ends_with("purecloud.com") && !domain.ends_with("mypurecloud.com") {
        return Err(RegionError::TutorialHost {
            name: name.to_owned(),
        });
    }
    Err(RegionError::Unknown {
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_resolves_by_code_name_and_domain() {
        for region in REGIONS {
            assert_eq!(find(region.code), Ok(region));
            assert_eq!(find(region.discovery_name), Ok(region));
            assert_eq!(find(region.domain), Ok(region));
            assert_eq!(find(&region.api_url()), Ok(region));
            assert_eq!(find(&format!("login.{}", region.domain)), Ok(region));
        }
    }

    #[test]
    fn a_browser_address_maps_to_its_region() {
        let ie = find("https://apps.mypurecloud.ie/directory/#/person/abc").unwrap();
        assert_eq!(ie.code, "eu-west-1");
        let london = find("https://apps.euw2.pure.cloud/#/admin/integrations?x=1").unwrap();
        assert_eq!(london.code, "eu-west-2");
        assert_eq!(find("apps.mypurecloud.com/").unwrap().code, "us-east-1");
        assert_eq!(
            find("https://login.mypurecloud.de:443/oauth").unwrap().code,
            "eu-central-1"
        );
    }

    #[test]
    fn hosts_follow_the_api_and_login_rule() {
        let ie = find("mypurecloud.ie").unwrap();
        assert_eq!(ie.api_url(), "https://api.mypurecloud.ie");
        assert_eq!(ie.login_url(), "https://login.mypurecloud.ie");
        assert_eq!(find("EU-WEST-2").unwrap().domain, "euw2.pure.cloud");
        assert_eq!(find("use2.us-gov-pure.cloud").unwrap().code, "us-east-2");
    }

    #[test]
    fn tutorial_hosts_and_unknown_names_are_refused_clearly() {
        let eu = find("api.eu.purecloud.com").unwrap_err().to_string();
        assert!(eu.contains("not a Genesys Cloud deployment"), "{eu}");
        assert!(find("us-gov.purecloud.com")
            .unwrap_err()
            .to_string()
            .contains("FedRAMP"));
        let unknown = find("mars-1").unwrap_err();
        assert_eq!(
            unknown,
            RegionError::Unknown {
                name: "mars-1".into()
            }
        );
        let message = unknown.to_string();
        assert!(
            message.contains("unknown Genesys Cloud region"),
            "{message}"
        );
        assert!(message.contains("eu-west-1, "), "{message}");
    }
}
