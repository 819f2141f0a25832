//! Test certificates: a CA, a server certificate for 127.0.0.1 and a client certificate, both
//! signed by it, written as PEM files that an unprivileged agent can read.

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The files, and the PEM a client built in the test itself needs.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub ca_pem: String,
    /// The client certificate followed by its key.
    pub client_identity_pem: String,
}

impl TestPki {
    /// Writes the five files into `dir` (made world-readable: the agent runs as the PostgreSQL
    /// user); the client certificate's common name is `client`.
    pub fn create(dir: &Path, client: &str) -> anyhow::Result<TestPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "pgha test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let signed = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.extended_key_usages = vec![usage];
            Ok((params.signed_by(&key, &ca_cert, &ca_key)?.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = signed(vec!["127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_pem, client_key_pem) = signed(vec![client.into()], ExtendedKeyUsagePurpose::ClientAuth)?;
        let pki = TestPki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join(format!("{client}.crt")),
            client_key: dir.join(format!("{client}.key")),
            ca_pem: ca_cert.pem(),
            client_identity_pem: format!("{client_pem}{client_key_pem}"),
        };
        let files = [
            (&pki.ca, pki.ca_pem.as_str()),
            (&pki.server_cert, server_pem.as_str()),
            (&pki.server_key, server_key_pem.as_str()),
            (&pki.client_cert, client_pem.as_str()),
            (&pki.client_key, client_key_pem.as_str()),
        ];
        for (path, pem) in files {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(pki)
    }
}
