//! Client certificate identities: any DER is read without a panic; a
//! certificate made with chosen URI and DNS SANs yields exactly those
//! (DNS names lowercased), in order, and nothing from other SAN kinds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};
use std::sync::OnceLock;
use stint_core::policy::CertificateIdentity;
use stint_server::fuzzing::certificate_identities;

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().expect("a P-256 key"))
}

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    if control & 1 == 0 {
        let _ = certificate_identities(data);
        return;
    }
    let mut params = CertificateParams::default();
    let mut expected = Vec::new();
    for field in fields.iter().take(8) {
        let Some((kind, name)) = field.split_first() else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Ok(ia5) = Ia5String::try_from(name.to_owned()) else {
            continue;
        };
        match kind % 3 {
            0 => {
                params.subject_alt_names.push(SanType::URI(ia5));
                expected.push(CertificateIdentity::Uri(name.to_owned()));
            }
            1 => {
                params.subject_alt_names.push(SanType::DnsName(ia5));
                expected.push(CertificateIdentity::Dns(name.to_ascii_lowercase()));
            }
            _ => params.subject_alt_names.push(SanType::Rfc822Name(ia5)),
        }
    }
    let Ok(certificate) = params.self_signed(key()) else {
        return;
    };
    assert_eq!(certificate_identities(certificate.der()), expected);
});
