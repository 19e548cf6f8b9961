//! TLS to PostgreSQL against a throwaway server with `ssl = on` and a CA and
//! server certificate made here: every `sslmode`, a wrong host name, an
//! unknown CA. The role used is refused without TLS (see `scripts/pg-throwaway`).

mod common;

use common::{Cluster, Mvr, TestDb, private_cluster};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    ca_pem: String,
    other_ca_pem: String,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A CA, a server certificate for "localhost" only, signed by it, and a CA that
/// signed nothing; the server gets its certificate and TLS is turned on.
fn serve_tls(cluster: &Cluster) -> Pki {
    let (ca_pem, issuer) = ca("mv-refresher test CA");
    let (other_ca_pem, _) = ca("somebody else's CA");
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    cluster.install_file("server.crt", &server.pem());
    cluster.install_file("server.key", &key.serialize_pem());
    let mut admin = cluster.connect("postgres");
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).unwrap();
    }
    common::wait_until("ssl to be on", || {
        let on: String = cluster
            .connect("postgres")
            .query_one("SHOW ssl", &[])
            .unwrap()
            .get(0);
        (on == "on").then_some(())
    });
    admin
        .batch_execute("CREATE ROLE ssl_login NOLOGIN; CREATE ROLE tls_user LOGIN SUPERUSER IN ROLE ssl_login;")
        .unwrap();
    Pki {
        ca_pem,
        other_ca_pem,
    }
}

fn url(db: &TestDb, host: &str, query: &str) -> String {
    format!(
        "postgres://tls_user@{host}:{}/{}?{query}",
        db.cluster.port, db.name
    )
}

#[test]
fn every_sslmode_behaves_as_libpq_does() {
    let cluster = private_cluster("tls");
    let pki = serve_tls(cluster);
    let db = TestDb::platform_on(cluster, "tls");
    let dir = cluster.dir.clone();
    let ca = dir.join("ca.pem");
    let other = dir.join("other-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&other, &pki.other_ca_pem).unwrap();
    let (ca, other) = (ca.display().to_string(), other.display().to_string());
    let refresh = |url: String| {
        Mvr::new()
            .env("DATABASE_URL", &url)
            .args(["refresh", "top_bets_today"])
            .run()
    };

    // Without TLS this role is refused: a success below proves TLS was used.
    refresh(url(&db, "127.0.0.1", "sslmode=disable"))
        .code(3)
        .stderr_has("no encryption");
    refresh(url(&db, "127.0.0.1", "sslmode=prefer")).code(0);
    refresh(url(&db, "127.0.0.1", "sslmode=require")).code(0);
    refresh(url(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .code(0);
    refresh(url(
        &db,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .code(0);

    // The certificate names localhost, not 127.0.0.1.
    refresh(url(
        &db,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .code(3)
    .stderr_has("certificate")
    .stderr_has("not valid for name");
    // Signed by a CA the client does not trust.
    refresh(url(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .code(3)
    .stderr_has("UnknownIssuer");
    refresh(url(
        &db,
        "localhost",
        &format!("sslmode=require&sslrootcert={other}"),
    ))
    .code(3)
    .stderr_has("UnknownIssuer");
    // verify-full without any root certificate is a usage error, before connecting.
    Mvr::new()
        .env(
            "DATABASE_URL",
            &url(&db, "localhost", "sslmode=verify-full"),
        )
        .env("HOME", "/nonexistent")
        .arg("refresh")
        .run()
        .code(2)
        .stderr_has("sslrootcert");
    // The variables work as well as the URL.
    Mvr::new()
        .env("DATABASE_URL", &url(&db, "localhost", ""))
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca)
        .args(["refresh", "top_bets_today"])
        .run()
        .code(0);

    let tls_connections: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE status = 'success'");
    assert_eq!(tls_connections, 5);
}
