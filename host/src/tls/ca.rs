//! The proxy's certificate authority: generated once, saved as `ca.crt` (what agents
//! trust) and `ca.key` (mode 0600, stays with the proxy), loaded at start-up.
//!
//! A loaded CA is checked before it is used: both files are PEM, the key is one this
//! proxy can sign with (PKCS#8: ECDSA P-256/P-384, Ed25519 or RSA), it belongs to the
//! certificate, the certificate is a CA (basicConstraints `CA:TRUE`, and keyUsage, if
//! present, allows keyCertSign), and it has not expired.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;
use super::files::{create_dir, read, write_file};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Subject common name of a generated CA.
pub const CA_COMMON_NAME: &str = "egress-proxy CA";
/// Lifetime of a generated CA: 10 years (3650 days).
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// A generated CA is valid from this long before its creation, for clients whose
/// clock is a little behind the proxy's.
const CA_BACKDATE: Duration = Duration::from_secs(60 * 60);
/// Unix mode of `ca.key`.
const KEY_FILE_MODE: u32 = 0o600;
/// Unix mode of `ca.crt`.
const CERT_FILE_MODE: u32 = 0o644;

/// A CA that can sign leaf certificates.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertificateAuthority")
            .field("sha256", &self.fingerprint())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generate a new CA: ECDSA P-256, CN [`CA_COMMON_NAME`], `CA:TRUE, pathlen:0`,
    /// keyUsage keyCertSign + cRLSign, valid for [`CA_VALIDITY`].
    pub fn generate() -> Result<Self, TlsError> {
        let now = SystemTime::now();
        Self::generate_valid(
            now.checked_sub(CA_BACKDATE).unwrap_or(now),
            now + CA_VALIDITY,
        )
    }

    /// Generate a CA valid between two instants (tests use this for an expired CA).
    pub(crate) fn generate_valid(
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, TlsError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).map_err(TlsError::generate)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            not_after: whole_seconds(not_after),
        })
    }

    /// Load `ca.crt` and `ca.key` from a directory.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Self::load_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
    }

    /// Load a CA from a certificate file and a key file (both PEM).
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        if let Some(mode) = exposed_key_mode(key_path) {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{mode:04o}"),
                "the CA private key is readable by group or others: anyone who can read it can impersonate every host to the agent; chmod 600 it (in Kubernetes a non-root proxy reads Secret files through fsGroup, which makes them group-readable: mount the CA Secret into the proxy container only)"
            );
        }
        let cert_text = read(cert_path)?;
        let key_text = read(key_path)?;
        let cert_der =
            CertificateDer::from_pem_slice(&cert_text).map_err(|e| TlsError::NotPem {
                path: cert_path.into(),
                expected: "CERTIFICATE",
                reason: e.to_string(),
            })?;
        let key = parse_key(&key_text, key_path)?;
        let not_after = check_ca(&cert_der, &key, cert_path, key_path)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::BadCert {
            path: cert_path.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: encode_pem("CERTIFICATE", &cert_der),
            key_pem: encode_pem("PRIVATE KEY", issuer.key().serialized_der()),
            cert_der,
            issuer,
            not_after,
        })
    }

    /// Write `ca.crt` and `ca.key` into `dir` (created with mode 0700 if missing) and
    /// return their paths. The key file gets mode 0600. Existing files are an error
    /// ([`TlsError::Exists`]) unless `overwrite`; then each is replaced atomically.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(PathBuf, PathBuf), TlsError> {
        create_dir(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !overwrite {
            // Check both first, so a refusal never leaves half a CA behind.
            for path in [&cert_path, &key_path] {
                if fs::symlink_metadata(path).is_ok() {
                    return Err(TlsError::Exists { path: path.clone() });
                }
            }
        }
        write_file(&key_path, self.key_pem.as_bytes(), KEY_FILE_MODE, overwrite)?;
        if let Err(err) = write_file(
            &cert_path,
            self.cert_pem.as_bytes(),
            CERT_FILE_MODE,
            overwrite,
        ) {
            if !overwrite {
                // Best effort: do not leave a key without its certificate.
                let _ = fs::remove_file(&key_path);
            }
            return Err(err);
        }
        Ok((cert_path, key_path))
    }

    /// The CA certificate as PEM: what an agent must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the certificate, lower-case hex.
    pub fn fingerprint(&self) -> String {
        crate::policy::sha256_hex(&self.cert_der)
    }

    /// When the CA certificate expires. Leaves never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The signer for leaves.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// The key file's permission bits when group or others may read or write it.
pub fn exposed_key_mode(key_path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(key_path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

fn parse_key(text: &[u8], path: &Path) -> Result<KeyPair, TlsError> {
    let der = PrivateKeyDer::from_pem_slice(text).map_err(|e| TlsError::NotPem {
        path: path.into(),
        expected: "PRIVATE KEY",
        reason: e.to_string(),
    })?;
    let bad = |reason: &str| TlsError::BadKey {
        path: path.into(),
        reason: reason.into(),
    };
    match &der {
        PrivateKeyDer::Pkcs8(_) => {}
        PrivateKeyDer::Sec1(_) | PrivateKeyDer::Pkcs1(_) => {
            return Err(bad(
                "only PKCS#8 keys (`BEGIN PRIVATE KEY`) are supported; convert it with \
                 `openssl pkcs8 -topk8 -nocrypt -in KEY -out ca.key`",
            ));
        }
        _ => return Err(bad("unsupported key format")),
    }
    KeyPair::try_from(&der).map_err(|e| bad(&e.to_string()))
}

/// Check that `cert` is an unexpired CA whose public key is `key`'s. Returns notAfter.
fn check_ca(
    cert: &CertificateDer<'_>,
    key: &KeyPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<SystemTime, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::BadCert {
        path: cert_path.into(),
        reason: e.to_string(),
    })?;
    let not_ca = |reason: &str| TlsError::NotCa {
        path: cert_path.into(),
        reason: reason.into(),
    };
    match x509.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err(not_ca("its basicConstraints do not say CA:TRUE")),
        Err(e) => return Err(not_ca(&format!("bad basicConstraints: {e}"))),
    }
    match x509.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(not_ca("its keyUsage does not allow keyCertSign"));
        }
        Ok(_) => {}
        Err(e) => return Err(not_ca(&format!("bad keyUsage: {e}"))),
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::KeyMismatch {
            key: key_path.into(),
            cert: cert_path.into(),
        });
    }
    let not_after = x509.validity().not_after;
    let expires = u64::try_from(not_after.timestamp())
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if expires <= SystemTime::now() {
        return Err(TlsError::Expired {
            path: cert_path.into(),
            not_after: not_after.to_string(),
        });
    }
    Ok(expires)
}

fn encode_pem(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der), config)
}

/// `t` without its sub-second part, as an X.509 validity time records it.
fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate().unwrap();
        ca.save(dir.path(), false).unwrap();
        (dir, ca)
    }

    #[test]
    fn generated_ca_has_the_promised_shape() {
        let ca = CertificateAuthority::generate().unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(x509.subject().to_string(), format!("CN={CA_COMMON_NAME}"));
        assert_eq!(x509.subject(), x509.issuer());
        let bc = x509.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let validity = x509.validity();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(lifetime as u64, (CA_VALIDITY + CA_BACKDATE).as_secs());
        assert_eq!(
            x509.public_key()
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap(),
            x509_parser::oid_registry::OID_EC_P256
        );
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn save_then_load_round_trips() {
        let (dir, ca) = saved();
        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.not_after(), ca.not_after());
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f| {
                fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode(CA_KEY_FILE), 0o600);
        }
    }

    #[test]
    fn group_or_world_readable_keys_are_detected() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _ca) = saved();
        let key = dir.path().join(CA_KEY_FILE);
        assert_eq!(exposed_key_mode(&key), None);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(exposed_key_mode(&key), Some(0o644));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(exposed_key_mode(&key), Some(0o640));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(exposed_key_mode(&key), None);
    }

    #[test]
    fn save_refuses_to_overwrite_unless_asked() {
        let (dir, first) = saved();
        let second = CertificateAuthority::generate().unwrap();
        let err = second.save(dir.path(), false).unwrap_err();
        assert!(matches!(err, TlsError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_der(), first.cert_der(), "nothing was replaced");

        // Only the key left behind still blocks a new CA.
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        assert!(matches!(
            second.save(dir.path(), false),
            Err(TlsError::Exists { .. })
        ));
        assert!(!dir.path().join(CA_CERT_FILE).exists());

        second.save(dir.path(), true).unwrap();
        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_der(), second.cert_der());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp files"
        );
    }

    #[test]
    fn save_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("state/ca");
        let (cert, key) = CertificateAuthority::generate()
            .unwrap()
            .save(&nested, false)
            .unwrap();
        assert_eq!((cert, key), (nested.join("ca.crt"), nested.join("ca.key")));
    }

    #[test]
    fn load_errors_say_what_is_wrong() {
        let empty = tempfile::tempdir().unwrap();
        let err = CertificateAuthority::load(empty.path()).unwrap_err();
        assert!(matches!(&err, TlsError::Missing { path } if path.ends_with(CA_CERT_FILE)));
        assert!(err.to_string().contains("ca create"), "{err}");

        let (dir, _) = saved();
        let cert = dir.path().join(CA_CERT_FILE);
        let key = dir.path().join(CA_KEY_FILE);
        let (other, _) = saved();
        let other_key = other.path().join(CA_KEY_FILE);
        let err = CertificateAuthority::load_files(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        fs::write(&key, "not a key").unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NotPem {
                    expected: "PRIVATE KEY",
                    ..
                }
            ),
            "{err}"
        );
        fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = CertificateAuthority::load_files(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::BadCert { .. }), "{err}");
    }

    #[test]
    fn a_leaf_or_an_expired_ca_is_refused() {
        let (dir, ca) = saved();
        let leaf =
            super::super::mint(&ca, &super::super::LeafHost::parse("x.example").unwrap()).unwrap();
        fs::write(
            dir.path().join(CA_CERT_FILE),
            encode_pem("CERTIFICATE", &leaf.cert[0]),
        )
        .unwrap();
        // The leaf's key is not in the file; a mismatch or not-a-CA are both refusals,
        // and the CA check comes first.
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::NotCa { .. }), "{err}");

        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let expired = CertificateAuthority::generate_valid(now - 2 * day, now - day).unwrap();
        expired.save(dir.path(), true).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    }

    #[test]
    fn sec1_keys_get_a_conversion_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        fs::write(&path, encode_pem("EC PRIVATE KEY", &[0x30, 0x00])).unwrap();
        let err = parse_key(&fs::read(&path).unwrap(), &path).unwrap_err();
        assert!(err.to_string().contains("openssl pkcs8"), "{err}");
    }
}
