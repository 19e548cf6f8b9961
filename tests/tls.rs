//! TLS to PostgreSQL against a throwaway server with `ssl = on` and a CA and
//! server certificate made here: every `sslmode`, a wrong host name, an
//! unknown CA; the certificate Citus makes (X.509 version 1, valid for no
//! time at all); a handshake that fails, which `prefer` survives. The role used
//! is refused without TLS (see `scripts/pg-throwaway`).

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
    turn_tls_on(cluster, &server.pem(), &key.serialize_pem());
    Pki {
        ca_pem,
        other_ca_pem,
    }
}

/// Sets `settings` with ALTER SYSTEM, reloads, and waits until the server
/// reports every one of them.
fn reconfigure(cluster: &Cluster, settings: &[(&str, &str)]) {
    let mut admin = cluster.connect("postgres");
    for (name, value) in settings {
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap();
    }
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    common::wait_until("the new settings to apply", || {
        let mut admin = cluster.connect("postgres");
        settings
            .iter()
            .all(|(name, value)| {
                let now: String = admin
                    .query_one(&format!("SHOW {name}"), &[])
                    .unwrap()
                    .get(0);
                now == *value
            })
            .then_some(())
    });
}

/// Gives the server `cert_pem` and `key_pem`, turns TLS on and makes the role
/// `tls_user`, which is refused without TLS.
fn turn_tls_on(cluster: &Cluster, cert_pem: &str, key_pem: &str) {
    cluster.install_file("server.crt", cert_pem);
    cluster.install_file("server.key", key_pem);
    reconfigure(
        cluster,
        &[
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
            ("ssl", "on"),
        ],
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE ROLE ssl_login NOLOGIN; CREATE ROLE tls_user LOGIN SUPERUSER IN ROLE ssl_login;")
        .unwrap();
}

/// A self-signed certificate as Citus makes one when `CREATE EXTENSION citus`
/// turns TLS on: X.509 version 1 (no extensions), valid from now until now
/// (`-days 0`). rcgen cannot make version 1, so openssl does, as the issue
/// that found this did. Returns (certificate, key) in PEM.
fn citus_style_certificate(dir: &std::path::Path) -> (String, String) {
    // Run in `dir`, on the files v1.key, v1.csr and v1.crt there.
    let openssl = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    openssl("req -new -newkey rsa:2048 -nodes -subj /CN=citus-auto-ssl -keyout v1.key -out v1.csr");
    openssl("x509 -req -in v1.csr -signkey v1.key -days 0 -out v1.crt");
    let text = openssl("x509 -in v1.crt -noout -text");
    assert!(
        text.contains("Version: 1 (0x0)"),
        "not a version 1 certificate:\n{text}"
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    (read("v1.crt"), read("v1.key"))
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

#[test]
fn citus_style_certificates_are_accepted_and_prefer_survives_a_failed_handshake() {
    let cluster = private_cluster("tls_citus");
    let (cert, key) = citus_style_certificate(&cluster.dir);
    turn_tls_on(cluster, &cert, &key);
    let db = TestDb::platform_on(cluster, "tls_citus");
    let refresh = |url: String| {
        Mvr::new()
            .env("DATABASE_URL", &url)
            .args(["refresh", "top_bets_today"])
            .run()
    };

    // tls_user is refused without TLS: these succeed encrypted. The default
    // sslmode is prefer.
    refresh(url(&db, "127.0.0.1", "")).code(0);
    refresh(url(&db, "127.0.0.1", "sslmode=prefer")).code(0);
    refresh(url(&db, "127.0.0.1", "sslmode=require")).code(0);
    // verify-ca stays strict: this certificate cannot be checked.
    let root = cluster.dir.join("v1-root.pem");
    std::fs::write(&root, &cert).unwrap();
    refresh(url(
        &db,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", root.display()),
    ))
    .code(3)
    .stderr_has("certificate is X.509 version 1");
    let successes: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE status = 'success'");
    assert_eq!(successes, 3);

    // A server whose only cipher suite rustls does not offer (RSA key exchange,
    // TLS 1.2 at most): the handshake fails, and prefer connects without TLS as
    // libpq does, while require gives up.
    reconfigure(
        cluster,
        &[
            ("ssl_max_protocol_version", "TLSv1.2"),
            ("ssl_ciphers", "AES128-SHA"),
        ],
    );
    let plain_url = |mode: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode={mode}",
            cluster.port, db.name
        )
    };
    refresh(plain_url("require"))
        .code(3)
        .stderr_has("TLS handshake");
    refresh(plain_url("prefer")).code(0);
    let successes: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE status = 'success'");
    assert_eq!(successes, 4);
}
