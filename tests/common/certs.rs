//! Test certificates made with OpenSSL (through pingora's re-export): a CA, leaf certificates
//! with a SPIFFE URI SAN and a DNS SAN, a CA nobody trusts, and an expired certificate.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issued {
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("pem")
    }
    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().expect("pem")
    }
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    PKey::from_ec_key(EcKey::generate(&group).expect("ec key")).expect("pkey")
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut bn = BigNum::new().expect("bn");
    bn.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
    bn.to_asn1_integer().expect("serial")
}

/// A self-signed CA.
pub fn ca(name: &str) -> Issued {
    let key = key();
    let mut subject = X509NameBuilder::new().expect("name");
    subject.append_entry_by_text("CN", name).expect("cn");
    let subject = subject.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    b.set_serial_number(&serial()).expect("serial");
    b.set_subject_name(&subject).expect("subject");
    b.set_issuer_name(&subject).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
        .expect("na");
    b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
        .expect("ext");
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku"),
    )
    .expect("ext");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    Issued {
        cert: b.build(),
        key,
    }
}

/// A leaf signed by `ca` with the given SPIFFE ID and DNS name; `expired` puts its validity in
/// the past.
pub fn leaf(ca: &Issued, spiffe: Option<&str>, dns: &str, expired: bool) -> Issued {
    let key = key();
    let mut subject = X509NameBuilder::new().expect("name");
    subject.append_entry_by_text("CN", dns).expect("cn");
    let subject = subject.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    b.set_serial_number(&serial()).expect("serial");
    b.set_subject_name(&subject).expect("subject");
    b.set_issuer_name(ca.cert.subject_name()).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    let now = super::now() as i64;
    let (nb, na) = if expired {
        (now - 7200, now - 3600)
    } else {
        (now - 60, now + 86400)
    };
    b.set_not_before(&Asn1Time::from_unix(nb).expect("time"))
        .expect("nb");
    b.set_not_after(&Asn1Time::from_unix(na).expect("time"))
        .expect("na");
    let mut san = SubjectAlternativeName::new();
    san.dns(dns);
    if let Some(uri) = spiffe {
        san.uri(uri);
    }
    let ctx = b.x509v3_context(Some(&ca.cert), None);
    let san = san.build(&ctx).expect("san");
    b.append_extension(san).expect("ext");
    b.append_extension(
        ExtendedKeyUsage::new()
            .server_auth()
            .client_auth()
            .build()
            .expect("eku"),
    )
    .expect("ext");
    b.sign(&ca.key, MessageDigest::sha256()).expect("sign");
    Issued {
        cert: b.build(),
        key,
    }
}

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}
