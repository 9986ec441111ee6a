//! `log-socket certs`: a small CA with a server certificate (for the relay's ports) and a client
//! certificate (for fluentd's mTLS), as PEM files.

use std::path::{Path, PathBuf};

/// What `log-socket certs` writes.
pub const GENERATED: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
];

/// Create a CA and, signed by it, a server certificate for `dns_names` (plus `localhost` and
/// 127.0.0.1) and a client certificate (for fluentd), valid for `days`, as PEM files in `dir`.
/// Existing files are not overwritten.
pub fn generate(dir: &Path, dns_names: &[String], days: u32) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let paths: Vec<PathBuf> = GENERATED.iter().map(|f| dir.join(f)).collect();
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(format!("{} exists; choose an empty directory", existing.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| e.to_string();
    let now = time::OffsetDateTime::now_utc();
    let validity = |p: &mut CertificateParams| {
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(i64::from(days));
    };

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name.push(DnType::CommonName, "log-socket CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let mut names: Vec<String> = dns_names.to_vec();
    for extra in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let server_key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(names.clone()).map_err(err)?;
    server.distinguished_name.push(DnType::CommonName, names[0].clone());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;

    let client_key = KeyPair::generate().map_err(err)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    client.distinguished_name.push(DnType::CommonName, "fluentd");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client);
    let client_cert = client.signed_by(&client_key, &issuer).map_err(err)?;

    let contents = [
        ca_cert.pem(),
        ca_key.serialize_pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
        client_cert.pem(),
        client_key.serialize_pem(),
    ];
    for (path, pem) in paths.iter().zip(contents) {
        write_private(path, &pem)?;
    }
    Ok(paths)
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Keys must not be readable by others; certificates do not mind.
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tls::{ReloadingConfig, TlsFiles};

    #[test]
    fn generated_certificates_load_as_server_and_mtls_configs() {
        let dir = std::env::temp_dir().join(format!("log-socket-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        generate(&dir, &["log-socket.logging.svc".into()], 30).unwrap();
        let files = TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.crt")),
        };
        let config = ReloadingConfig::load(files).unwrap();
        assert!(!config.reload_if_changed().unwrap(), "nothing changed");
        let again = generate(&dir, &["x".into()], 1).unwrap_err();
        assert!(again.contains("exists"), "{again}");
        let bad = TlsFiles {
            cert: dir.join("ca.key"),
            key: dir.join("server.key"),
            client_ca: None,
        };
        assert!(ReloadingConfig::load(bad).unwrap_err().contains("ca.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
