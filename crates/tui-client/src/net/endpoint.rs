//! Where the client connects and how: the `--server` value (`host:port`,
//! `simpletextim://host:port` or `simpletextims://host:port`) with `--tls` and `--ca`
//! read into a [`Target`] (pure, tested exactly), and the [`Endpoint`] the network task
//! connects to (the target with its TLS configuration loaded).

use std::fmt;
use std::path::{Path, PathBuf};

use simpletextim_proto::{Client, ClientError, TlsConfig, TlsSetupError};

/// The scheme of a plain TCP address.
pub const PLAIN_SCHEME: &str = "simpletextim://";
/// The scheme of a TLS address.
pub const TLS_SCHEME: &str = "simpletextims://";
/// The port when the address names none (the server's default).
pub const DEFAULT_PORT: u16 = 5000;

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP: everything, the password included, crosses the network in clear.
    Plain,
    /// TLS, trusting the system's root certificates and, if given, those of a CA file.
    Tls {
        /// The `--ca` file (PEM).
        ca: Option<PathBuf>,
    },
}

/// A server to connect to, read from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host: a DNS name or an IP address (an IPv6 one without brackets). It is the name
    /// a TLS certificate must be valid for.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Plain or TLS.
    pub security: Security,
}

impl Target {
    /// Reads a `--server` value with the `--tls` and `--ca` options. The value is
    /// `host[:port]`, or the same after `simpletextim://` (plain) or `simpletextims://`
    /// (TLS); the port defaults to [`DEFAULT_PORT`]; an IPv6 address goes in brackets.
    /// `--ca` implies `--tls`.
    ///
    /// # Errors
    /// A sentence for people: an unknown scheme, a malformed address, or `--tls`/`--ca`
    /// with a `simpletextim://` (plain) address.
    pub fn parse(server: &str, tls: bool, ca: Option<&Path>) -> Result<Target, String> {
        let (scheme_tls, rest) = split_scheme(server)?;
        let (host, port) = split_host_port(rest)?;
        let tls_asked = tls || ca.is_some();
        let use_tls = match scheme_tls {
            Some(true) => true,
            Some(false) if tls_asked => {
                return Err(format!(
                    "{PLAIN_SCHEME} is plain TCP, but --tls or --ca asks for TLS: \
                     use {TLS_SCHEME}{}",
                    authority(&host, port)
                ));
            }
            Some(false) => false,
            None => tls_asked,
        };
        let security = if use_tls {
            Security::Tls {
                ca: ca.map(Path::to_path_buf),
            }
        } else {
            Security::Plain
        };
        Ok(Target {
            host,
            port,
            security,
        })
    }

    /// `host:port` for connecting (an IPv6 address in brackets).
    pub fn addr(&self) -> String {
        authority(&self.host, self.port)
    }

    /// Loads what the connection needs (the trusted certificates, for TLS): the endpoint
    /// the network task connects to, as often as it reconnects.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate; no `--ca` and the system has no
    /// root certificates.
    pub fn endpoint(&self) -> Result<Endpoint, TlsSetupError> {
        let tls = match &self.security {
            Security::Plain => None,
            Security::Tls { ca: Some(ca) } => Some(TlsConfig::system_roots_and_ca_file(ca)?),
            Security::Tls { ca: None } => Some(TlsConfig::system_roots()?),
        };
        Ok(Endpoint {
            addr: self.addr(),
            tls: tls.map(|config| (self.host.clone(), config)),
        })
    }
}

/// The address as people read it: `host:port` for plain TCP, `simpletextims://host:port`
/// for TLS.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Security::Tls { .. } = self.security {
            f.write_str(TLS_SCHEME)?;
        }
        f.write_str(&self.addr())
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The scheme (`Some(true)` for TLS, `Some(false)` for plain, `None` for none) and the rest.
fn split_scheme(server: &str) -> Result<(Option<bool>, &str), String> {
    let Some((scheme, rest)) = server.split_once("://") else {
        return Ok((None, server));
    };
    let scheme_tls = if scheme.eq_ignore_ascii_case(&TLS_SCHEME[..TLS_SCHEME.len() - 3]) {
        true
    } else if scheme.eq_ignore_ascii_case(&PLAIN_SCHEME[..PLAIN_SCHEME.len() - 3]) {
        false
    } else {
        return Err(format!(
            "unknown scheme {scheme:?} in {server:?}: use {TLS_SCHEME} (TLS), \
             {PLAIN_SCHEME} (plain TCP) or host:port"
        ));
    };
    Ok((Some(scheme_tls), rest.strip_suffix('/').unwrap_or(rest)))
}

/// The host and port of `host[:port]` or `[ipv6][:port]`.
fn split_host_port(s: &str) -> Result<(String, u16), String> {
    if s.contains(['/', '@', '?', '#']) || s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} is not host:port"));
    }
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("{s:?}: no ']' after the IPv6 address"));
        };
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{s:?} is not [address]:port"))?,
            ),
        };
        (host, port)
    } else if s.matches(':').count() > 1 {
        return Err(format!(
            "{s:?}: an IPv6 address goes in brackets, as in [::1]:{DEFAULT_PORT}"
        ));
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("{s:?}: the port must be a number from 1 to 65535")),
        },
    };
    Ok((host.to_owned(), port))
}

/// Where the network task connects: an address, over TLS or not, with the trusted
/// certificates loaded once for every reconnection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: String,
    /// The name the server's certificate must be valid for, and what to trust.
    tls: Option<(String, TlsConfig)>,
}

impl Endpoint {
    /// A plain TCP endpoint at `addr` (`host:port`).
    pub fn plain(addr: impl Into<String>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            tls: None,
        }
    }

    /// A TLS endpoint at `addr`, whose certificate must be valid for `server_name`.
    pub fn tls(addr: impl Into<String>, server_name: impl Into<String>, tls: TlsConfig) -> Self {
        Endpoint {
            addr: addr.into(),
            tls: Some((server_name.into(), tls)),
        }
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects (no login yet).
    ///
    /// # Errors
    /// As [`Client::connect`] and [`Client::connect_tls`].
    pub async fn connect(&self) -> Result<Client, ClientError> {
        match &self.tls {
            None => Client::connect(self.addr.as_str()).await,
            Some((name, tls)) => Client::connect_tls(self.addr.as_str(), name, tls).await,
        }
    }
}

/// A plain TCP endpoint (what a bare `host:port` meant before TLS).
impl From<String> for Endpoint {
    fn from(addr: String) -> Endpoint {
        Endpoint::plain(addr)
    }
}

/// The address as people read it: `host:port`, or `simpletextims://host:port` over TLS.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_tls() {
            f.write_str(TLS_SCHEME)?;
        }
        f.write_str(&self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, security: Security) -> Target {
        Target {
            host: host.to_owned(),
            port,
            security,
        }
    }

    fn tls() -> Security {
        Security::Tls { ca: None }
    }

    #[test]
    fn a_bare_address_is_plain_unless_tls_is_asked_for() {
        assert_eq!(
            Target::parse("127.0.0.1:5000", false, None),
            Ok(target("127.0.0.1", 5000, Security::Plain))
        );
        assert_eq!(
            Target::parse("chat.example.org:6000", true, None),
            Ok(target("chat.example.org", 6000, tls()))
        );
        assert_eq!(
            Target::parse("localhost:5000", false, Some(Path::new("ca.pem"))),
            Ok(target(
                "localhost",
                5000,
                Security::Tls {
                    ca: Some(PathBuf::from("ca.pem"))
                }
            ))
        );
    }

    #[test]
    fn the_scheme_says_tls_or_plain() {
        assert_eq!(
            Target::parse("simpletextims://chat.example.org:5001", false, None),
            Ok(target("chat.example.org", 5001, tls()))
        );
        assert_eq!(
            Target::parse("SimpleTextIMs://chat.example.org:5001/", true, None),
            Ok(target("chat.example.org", 5001, tls()))
        );
        assert_eq!(
            Target::parse("simpletextim://10.0.0.7:5000", false, None),
            Ok(target("10.0.0.7", 5000, Security::Plain))
        );
    }

    #[test]
    fn the_port_defaults_to_5000() {
        assert_eq!(
            Target::parse("simpletextims://chat.example.org", false, None),
            Ok(target("chat.example.org", 5000, tls()))
        );
        assert_eq!(
            Target::parse("localhost", false, None),
            Ok(target("localhost", 5000, Security::Plain))
        );
        assert_eq!(
            Target::parse("[::1]", false, None),
            Ok(target("::1", 5000, Security::Plain))
        );
    }

    #[test]
    fn an_ipv6_address_is_bracketed_in_the_address_not_in_the_name() {
        let t = Target::parse("simpletextims://[::1]:5000", false, None).unwrap();
        assert_eq!(t, target("::1", 5000, tls()));
        assert_eq!(t.addr(), "[::1]:5000");
        assert_eq!(t.to_string(), "simpletextims://[::1]:5000");
    }

    #[test]
    fn the_display_names_tls_and_keeps_plain_addresses_as_they_were() {
        let plain = Target::parse("simpletextim://127.0.0.1:5000", false, None).unwrap();
        assert_eq!(plain.to_string(), "127.0.0.1:5000");
        let tls = Target::parse("localhost:5000", true, None).unwrap();
        assert_eq!(tls.to_string(), "simpletextims://localhost:5000");
    }

    #[test]
    fn tls_options_with_a_plain_scheme_are_refused() {
        assert_eq!(
            Target::parse("simpletextim://localhost:5000", true, None),
            Err(
                "simpletextim:// is plain TCP, but --tls or --ca asks for TLS: \
                 use simpletextims://localhost:5000"
                    .to_owned()
            )
        );
        assert!(Target::parse("simpletextim://localhost", false, Some(Path::new("c"))).is_err());
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        let cases = [
            (
                "https://localhost:5000",
                "unknown scheme \"https\" in \"https://localhost:5000\": use simpletextims:// \
                 (TLS), simpletextim:// (plain TCP) or host:port",
            ),
            (
                "::1:5000",
                "\"::1:5000\": an IPv6 address goes in brackets, as in [::1]:5000",
            ),
            ("[::1:5000", "\"[::1:5000\": no ']' after the IPv6 address"),
            ("[::1]5000", "\"[::1]5000\" is not [address]:port"),
            (":5000", "\":5000\" names no host"),
            ("simpletextims://", "\"\" names no host"),
            (
                "localhost:0",
                "\"localhost:0\": the port must be a number from 1 to 65535",
            ),
            (
                "localhost:65536",
                "\"localhost:65536\": the port must be a number from 1 to 65535",
            ),
            (
                "localhost:",
                "\"localhost:\": the port must be a number from 1 to 65535",
            ),
            (
                "simpletextims://alice@localhost:5000",
                "\"alice@localhost:5000\" is not host:port",
            ),
            (
                "simpletextims://localhost:5000/chat",
                "\"localhost:5000/chat\" is not host:port",
            ),
            ("local host:5000", "\"local host:5000\" is not host:port"),
        ];
        for (input, error) in cases {
            assert_eq!(
                Target::parse(input, false, None),
                Err(error.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn a_plain_endpoint_needs_nothing_loaded() {
        let t = Target::parse("localhost:5000", false, None).unwrap();
        let e = t.endpoint().unwrap();
        assert!(!e.is_tls());
        assert_eq!(e.to_string(), "localhost:5000");
        assert_eq!(
            Endpoint::from("127.0.0.1:1".to_owned()).to_string(),
            "127.0.0.1:1"
        );
    }
}
