//! Client certificate authentication (auth_type = "cert", hba's `cert`): the user name is the
//! common name (CN) of the certificate the client presented in its TLS handshake, which rustls
//! has already checked against client_tls_ca_file. Owns reading the CN out of the DER and
//! the comparison's outcome in PostgreSQL's words; the TLS stream belongs to the caller.

use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::Certificate;

/// id-at-commonName (RFC 4519).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Why a client's certificate does not let it in as the user it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    /// Not TLS, or TLS without a certificate.
    #[error("connection requires a valid client certificate")]
    NoCertificate,
    /// The certificate could not be read, or its subject has no common name we can read.
    #[error("certificate authentication failed for user \"{user}\": client certificate contains no user name")]
    NoName { user: String },
    /// The certificate names another user.
    #[error("certificate authentication failed for user \"{user}\"")]
    OtherUser { user: String, name: String },
}

impl CertRefusal {
    /// What the pooler's log says beyond what the client is told.
    pub fn detail(&self) -> String {
        match self {
            CertRefusal::OtherUser { user, name } => {
                format!("provided user name ({user}) and authenticated user name ({name}) do not match")
            }
            other => other.to_string(),
        }
    }
}

/// The subject's common name of a DER certificate (the last CN, as OpenSSL's lookup finds it
/// for PostgreSQL), if it is a UTF8String, PrintableString or IA5String.
pub fn common_name(der: &[u8]) -> Option<String> {
    let cert = Certificate::from_der(der).ok()?;
    let mut name = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|atv| atv.oid == COMMON_NAME) {
            if matches!(atv.value.tag(), Tag::Utf8String | Tag::PrintableString | Tag::Ia5String) {
                name = std::str::from_utf8(atv.value.value()).ok().map(str::to_owned);
            }
        }
    }
    name
}

/// Whether the certificate the client presented (`der`, its first: the client's own) names
/// `user`.
pub fn check(der: Option<&[u8]>, user: &str) -> Result<(), CertRefusal> {
    let der = der.ok_or(CertRefusal::NoCertificate)?;
    match common_name(der) {
        None => Err(CertRefusal::NoName { user: user.to_owned() }),
        Some(name) if name == user => Ok(()),
        Some(name) => Err(CertRefusal::OtherUser { user: user.to_owned(), name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_the_user() {
        let der = cert_with(&[(rcgen::DnType::OrganizationName, "Example"), (rcgen::DnType::CommonName, "alice")]);
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        assert_eq!(check(Some(&der), "alice"), Ok(()));
        let refusal = check(Some(&der), "bob").unwrap_err();
        assert_eq!(refusal.to_string(), "certificate authentication failed for user \"bob\"");
        assert_eq!(refusal.detail(), "provided user name (bob) and authenticated user name (alice) do not match");
    }

    #[test]
    fn no_certificate_no_name_or_garbage_is_refused() {
        assert_eq!(check(None, "alice"), Err(CertRefusal::NoCertificate));
        let nameless = cert_with(&[(rcgen::DnType::OrganizationName, "Example")]);
        assert_eq!(check(Some(&nameless), "alice"), Err(CertRefusal::NoName { user: "alice".into() }));
        assert_eq!(check(Some(b"not a certificate"), "alice"), Err(CertRefusal::NoName { user: "alice".into() }));
        let mut cut = cert_with(&[(rcgen::DnType::CommonName, "alice")]);
        cut.truncate(cut.len() / 2);
        assert_eq!(common_name(&cut), None);
    }

    #[test]
    fn names_are_compared_exactly() {
        let der = cert_with(&[(rcgen::DnType::CommonName, "Alice")]);
        assert!(check(Some(&der), "alice").is_err(), "PostgreSQL compares user names case-sensitively");
        let spaced = cert_with(&[(rcgen::DnType::CommonName, "alice ")]);
        assert!(check(Some(&spaced), "alice").is_err());
    }

    proptest::proptest! {
        /// Whatever bytes a client's certificate holds, reading it returns (no panic).
        #[test]
        fn any_bytes_are_read_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = common_name(&bytes);
        }
    }
}
