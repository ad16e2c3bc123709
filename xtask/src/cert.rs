//! `cargo xtask cert`: a self-signed certificate and its key for a TLS test server, made with
//! rcgen (no openssl), and the commands that use them.
//!
//! The certificate is its own authority: the server presents it, and a client trusts it as
//! its CA file (`simpletextim --ca cert.pem`). It is for tests and private setups; a public
//! server wants a certificate from an authority its users' systems already trust.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;

/// The names every certificate is valid for: the loopback host in all its spellings.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Options of `cargo xtask cert`.
#[derive(Args, Debug)]
pub struct CertArgs {
    /// Directory to write cert.pem and key.pem into (created 0700 if missing)
    /// [default: target/tls of the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Another name the certificate is valid for, besides localhost, 127.0.0.1 and ::1 (a DNS
    /// name or an IP address; may be repeated).
    #[arg(long = "name", value_name = "HOST")]
    names: Vec<String>,
}

/// The files written.
#[derive(Debug)]
pub struct Pair {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, ECDSA P-256), mode 0600.
    pub key: PathBuf,
}

pub fn run(args: &CertArgs) -> anyhow::Result<()> {
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's directory has no parent")?
            .join("target/tls"),
    };
    let names = names(&args.names);
    let pair = write_pair(&dir, &names)?;
    let (cert, key) = (pair.cert.display(), pair.key.display());
    println!(
        "wrote {cert} (a self-signed certificate for {})",
        names.join(", ")
    );
    println!("  and {key} (its private key, mode 0600: keep it secret)");
    println!();
    println!("server:");
    println!("  simpletextim-server --tls-cert {cert} --tls-key {key}");
    println!("terminal client:");
    println!("  simpletextim --server simpletextims://localhost:5000 --ca {cert}");
    println!("a bot (simpletextim-proto):");
    println!(
        "  Client::connect_tls(\"localhost:5000\", \"localhost\", &TlsConfig::ca_file_only(\"{cert}\")?)"
    );
    Ok(())
}

/// The loopback names, then the extra ones not already there, in order.
fn names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = LOOPBACK_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in extra {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.clone());
        }
    }
    names
}

/// Makes a self-signed certificate for `names` and writes `cert.pem` and `key.pem` into
/// `dir`. Refuses to replace either file.
pub fn write_pair(dir: &Path, names: &[String]) -> anyhow::Result<Pair> {
    let pair = Pair {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    for path in [&pair.cert, &pair.key] {
        if path.exists() {
            bail!(
                "{} already exists: not replacing it (remove it, or choose another --out)",
                path.display()
            );
        }
    }
    if let Some(bad) = names.iter().find(|n| !is_host_name(n)) {
        bail!("--name {bad:?}: not a DNS name or an IP address");
    }
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).context("rcgen refused a name")?;
    // A subject of its own: two self-signed certificates with one subject would look like
    // one authority with two keys, and a client trusting the other one would report a bad
    // signature rather than an unknown issuer.
    let made = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("SimpleTextIM self-signed {} {made}", names[0]),
    );
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // The key first, so that a certificate is never left without its key.
    write_new(&pair.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&pair.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(pair)
}

/// Whether `name` is an IP address or a DNS name a client can verify: dot-separated labels
/// of 1–63 letters, digits and hyphens, not starting or ending with a hyphen, 253 bytes at
/// most. (rcgen takes any ASCII, and a certificate for a name no client asks for is useless.)
fn is_host_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Creates `path` with exactly `mode` (set on the open file before anything is written, so
/// the umask does not matter) and writes `content`; fails if it exists.
fn write_new(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // `mode` at creation is masked by the umask; set it exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-cert-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_are_loopback_then_the_extra_ones_once() {
        let extra = [
            "chat.example.org",
            "LOCALHOST",
            "10.0.0.7",
            "chat.example.org",
        ]
        .map(String::from);
        assert_eq!(
            names(&extra),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "chat.example.org",
                "10.0.0.7"
            ]
        );
    }

    #[test]
    fn writes_a_certificate_and_a_private_key_0600_in_a_new_0700_directory() {
        let dir = scratch("write").join("tls");
        let pair = write_pair(&dir, &names(&[])).unwrap();
        assert_eq!(pair.cert, dir.join("cert.pem"));
        assert_eq!(pair.key, dir.join("key.pem"));
        let cert = std::fs::read_to_string(&pair.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"), "{cert}");
        assert!(
            cert.trim_end().ends_with("-----END CERTIFICATE-----"),
            "{cert}"
        );
        let key = std::fs::read_to_string(&pair.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{key}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pair.key), 0o600);
        assert_eq!(mode(&pair.cert), 0o644);
        assert_eq!(mode(&dir), 0o700);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_to_replace_an_existing_pair() {
        let dir = scratch("again");
        write_pair(&dir, &names(&[])).unwrap();
        let key = std::fs::read(dir.join("key.pem")).unwrap();
        let e = write_pair(&dir, &names(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} already exists: not replacing it (remove it, or choose another --out)",
                dir.join("cert.pem").display()
            )
        );
        assert_eq!(std::fs::read(dir.join("key.pem")).unwrap(), key);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_names_are_ip_addresses_or_dns_names() {
        for good in ["localhost", "::1", "10.0.0.7", "chat.example.org", "a-b.c9"] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a_b",
            "é.org",
            &"a".repeat(64),
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn refuses_a_name_that_is_not_one() {
        let dir = scratch("badname");
        let e = write_pair(&dir, &names(&["not a name!".to_owned()])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--name \"not a name!\": not a DNS name or an IP address"
        );
        assert!(!dir.exists(), "nothing is written for a bad name");
    }
}
