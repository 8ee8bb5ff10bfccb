//! TLS to Postgres the way libpq does it: every `sslmode`, `sslrootcert` (a file, or `system`
//! for the system's roots), client certificates (`sslcert`, `sslkey`) and libpq's default
//! files under `~/.postgresql/`.
//!
//! sqlx does most of it; this module fills the gaps: `allow` (plaintext first, TLS when the
//! server refuses), `prefer` falling back to plaintext when the handshake fails, `require`
//! verifying the chain when a root certificate is given, `verify-ca`/`verify-full` refusing to
//! start without a root certificate, and errors that say what went wrong.

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, PgConnection};

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// None given and no `~/.postgresql/root.crt`.
    None,
    /// `sslrootcert=system`: the system's roots (honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`).
    System,
    /// A PEM file of CA certificates.
    File(String),
}

/// The value of the first of `keys` in the URL's query, else of the environment variable.
fn setting(url: Option<&url::Url>, keys: &[&str], variable: &str) -> Option<String> {
    let from_url = url.and_then(|url| {
        url.query_pairs()
            .find(|(key, _)| keys.contains(&key.as_ref()))
            .map(|(_, value)| value.into_owned())
    });
    from_url.or_else(|| std::env::var(variable).ok().filter(|v| !v.is_empty()))
}

/// A file under `~/.postgresql/`, if it exists (libpq's defaults).
fn default_file(name: &str) -> Option<String> {
    let home = std::env::var_os("HOME")?;
    let path = std::path::Path::new(&home).join(".postgresql").join(name);
    path.is_file().then(|| path.to_string_lossy().into_owned())
}

/// Applies libpq's rules to options sqlx parsed from `database_url`; an error is a sentence
/// for the operator (a configuration that libpq would refuse too).
pub(super) fn apply(
    database_url: &str,
    options: PgConnectOptions,
) -> Result<PgConnectOptions, String> {
    let url = url::Url::parse(database_url).ok();
    let url = url.as_ref();
    let explicit_mode = setting(url, &["sslmode", "ssl-mode"], "PGSSLMODE").is_some();
    let roots = match setting(
        url,
        &["sslrootcert", "ssl-root-cert", "ssl-ca"],
        "PGSSLROOTCERT",
    ) {
        Some(value) if value == "system" => Roots::System,
        Some(path) => Roots::File(path),
        None => default_file("root.crt").map_or(Roots::None, Roots::File),
    };
    let mut options = match &roots {
        // An empty inline bundle: sqlx adds nothing to the system's roots.
        Roots::System => options.ssl_root_cert_from_pem(Vec::new()),
        Roots::File(path) => options.ssl_root_cert(path),
        Roots::None => options,
    };
    let mode = options.get_ssl_mode();
    let mode = match (&roots, mode) {
        // libpq (16+): the system's roots only make sense with the host name checked.
        (Roots::System, PgSslMode::VerifyFull) => PgSslMode::VerifyFull,
        (Roots::System, _) if !explicit_mode => PgSslMode::VerifyFull,
        (Roots::System, other) => {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (not {}): any public CA could \
                 otherwise vouch for the server",
                mode_name(other)
            ))
        }
        // libpq: `require` with a root certificate verifies the chain, as `verify-ca` does.
        (Roots::File(_), PgSslMode::Require) => PgSslMode::VerifyCa,
        (Roots::None, PgSslMode::VerifyCa | PgSslMode::VerifyFull) => {
            return Err(format!(
                "sslmode={} needs a root certificate: add sslrootcert=/path/to/ca.pem to the URL \
                 (or sslrootcert=system for the system's roots, or put it in ~/.postgresql/root.crt)",
                mode_name(mode)
            ))
        }
        (_, other) => other,
    };
    options = options.ssl_mode(mode);
    let client_cert = setting(url, &["sslcert", "ssl-cert"], "PGSSLCERT");
    let client_key = setting(url, &["sslkey", "ssl-key"], "PGSSLKEY");
    match (client_cert, client_key) {
        (Some(_), None) | (None, Some(_)) => {
            return Err("a client certificate needs both sslcert and sslkey".to_owned())
        }
        (Some(_), Some(_)) => {}
        // libpq's default client certificate, when both files exist.
        (None, None) => {
            if let (Some(cert), Some(key)) = (
                default_file("postgresql.crt"),
                default_file("postgresql.key"),
            ) {
                options = options.ssl_client_cert(cert).ssl_client_key(key);
            }
        }
    }
    Ok(options)
}

/// The `sslmode` word for a mode.
pub(super) fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Opens one connection, with libpq's fallbacks; returns it with the options that worked
/// (for the pool to reuse): `allow` tries plaintext first and TLS when the server refuses
/// it; `prefer` tries TLS first and plaintext when the handshake fails.
pub(super) async fn connect_one(
    options: &PgConnectOptions,
) -> Result<(PgConnection, PgConnectOptions), sqlx::Error> {
    let (first, second) = match options.get_ssl_mode() {
        PgSslMode::Allow => (PgSslMode::Disable, PgSslMode::Require),
        PgSslMode::Prefer => (PgSslMode::Prefer, PgSslMode::Disable),
        _ => return Ok((options.connect().await?, options.clone())),
    };
    let first = options.clone().ssl_mode(first);
    match first.connect().await {
        Ok(conn) => Ok((conn, first)),
        Err(error) if falls_back(options.get_ssl_mode(), &error) => {
            let second = options.clone().ssl_mode(second);
            let conn = second.connect().await?;
            Ok((conn, second))
        }
        Err(error) => Err(error),
    }
}

/// Whether a failed first attempt is worth the second: `allow` retries when the server
/// refused the plaintext login (pg_hba `hostssl`), `prefer` when the TLS handshake failed.
fn falls_back(mode: PgSslMode, error: &sqlx::Error) -> bool {
    match mode {
        PgSslMode::Allow => matches!(error, sqlx::Error::Database(db)
            if db.code().is_some_and(|code| code.starts_with("28"))),
        PgSslMode::Prefer => matches!(error, sqlx::Error::Tls(_)),
        _ => false,
    }
}

/// Whether an I/O error's text is a TLS failure (rustls reports a refused certificate or
/// a failed handshake as an I/O error).
pub(super) fn is_tls_failure(text: &str) -> bool {
    text.contains("peer certificate")
        || text.contains("peer sent no certificates")
        || text.contains("received fatal alert")
        || text.contains("certificate required")
}

/// A TLS failure in words an operator can act on.
pub(super) fn describe(text: &str) -> String {
    let hint = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "the server's certificate is not signed by a trusted CA (check sslrootcert)"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "the server's certificate does not name this host (sslmode=verify-full checks it)"
    } else if text.contains("Expired") || text.contains("expired") {
        "the server's certificate has expired"
    } else if text.contains("server does not support TLS") {
        "the server does not offer TLS (ssl = off), but the sslmode requires it"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        "the server wants a client certificate: set sslcert and sslkey"
    } else {
        return format!("TLS failed: {text}");
    };
    format!("TLS failed: {hint} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_url(url: &str) -> Result<PgConnectOptions, String> {
        apply(url, url.parse().unwrap())
    }

    #[test]
    fn the_modes_follow_libpq() {
        let mode = |url: &str| apply_url(url).map(|o| mode_name(o.get_ssl_mode()));
        let base = "postgres://u@db.example/pdq";
        assert_eq!(mode(&format!("{base}?sslmode=disable")), Ok("disable"));
        assert_eq!(mode(&format!("{base}?sslmode=require")), Ok("require"));
        assert_eq!(
            mode(&format!("{base}?sslmode=require&sslrootcert=/ca.pem")),
            Ok("verify-ca")
        );
        assert_eq!(
            mode(&format!("{base}?sslmode=verify-full&sslrootcert=/ca.pem")),
            Ok("verify-full")
        );
        assert_eq!(
            mode(&format!("{base}?sslrootcert=system")),
            Ok("verify-full")
        );
        let refused = mode(&format!("{base}?sslmode=verify-full")).unwrap_err();
        assert!(refused.contains("needs a root certificate"), "{refused}");
        let weak = mode(&format!("{base}?sslmode=require&sslrootcert=system")).unwrap_err();
        assert!(weak.contains("verify-full"), "{weak}");
        let half = apply_url(&format!("{base}?sslmode=require&sslcert=/c.pem")).unwrap_err();
        assert!(half.contains("sslkey"), "{half}");
    }
}
