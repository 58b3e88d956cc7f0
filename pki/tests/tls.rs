//! Real mutual TLS over loopback TCP (tokio + tokio-rustls) with identities made by
//! `pki::init` / `pki::issue`: who is accepted, who is refused, and why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pki::{CertOptions, Identity, peer_name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, ServerConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A secondary `siteb` (CA + host cert with SAN 127.0.0.1) and a primary `sitea` issued by it.
struct Sites {
    _root: TempDir,
    root: PathBuf,
    siteb: PathBuf,
    sitea: PathBuf,
}

fn sites() -> Sites {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().to_owned();
    let siteb = path.join("siteb");
    let sitea = path.join("sitea");
    pki::init(&siteb, "siteb", &["127.0.0.1".into()], 825).unwrap();
    pki::issue(&siteb, "sitea", &[], 825, &sitea).unwrap();
    Sites {
        _root: root,
        root: path,
        siteb,
        sitea,
    }
}

fn load(dir: &Path) -> Identity {
    Identity::load(dir).unwrap()
}

/// What one side saw: the peer's CN and the protocol version, or the error.
#[derive(Debug)]
struct Seen {
    peer: Option<String>,
    version: Option<ProtocolVersion>,
}

const MSG: &[u8] = b"cycle 42: 4096 bytes of changes";

/// Runs one connection: the server echoes what it reads; the client writes MSG and reads
/// it back. The client dials 127.0.0.1 with `dial` as the rustls ServerName.
async fn run(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    dial: &str,
) -> (Result<Seen, String>, Result<Seen, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            peer: peer_name(conn),
            version: conn.protocol_version(),
        };
        let mut buf = vec![0; MSG.len()];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(seen)
    });
    let name = ServerName::try_from(dial.to_owned()).unwrap();
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            peer: peer_name(conn),
            version: conn.protocol_version(),
        };
        // TLS 1.3: the server judges our certificate after our Finished, so a refusal
        // shows up here, on the first read.
        tls.write_all(MSG).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0; MSG.len()];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(buf, MSG, "echo");
        Ok(seen)
    };
    let timeout = Duration::from_secs(20);
    let client_res = tokio::time::timeout(timeout, client_side)
        .await
        .expect("client timed out");
    let server_res = tokio::time::timeout(timeout, server_task)
        .await
        .expect("server timed out")
        .unwrap();
    (server_res, client_res)
}

async fn connect(
    server: &Identity,
    client: &Identity,
    dial: &str,
) -> (Result<Seen, String>, Result<Seen, String>) {
    run(
        server.server_config().unwrap(),
        client.client_config().unwrap(),
        dial,
    )
    .await
}

#[tokio::test]
async fn issued_client_and_ca_host_authenticate_each_other() {
    let s = sites();
    let (server, client) = (load(&s.siteb), load(&s.sitea));
    assert_eq!(server.name(), "siteb");
    assert_eq!(client.name(), "sitea");
    for dial in ["127.0.0.1", "siteb"] {
        let (srv, cli) = connect(&server, &client, dial).await;
        let (srv, cli) = (srv.unwrap(), cli.unwrap());
        assert_eq!(
            srv.peer.as_deref(),
            Some("sitea"),
            "server sees the client's CN"
        );
        assert_eq!(
            cli.peer.as_deref(),
            Some("siteb"),
            "client sees the server's CN"
        );
        assert_eq!(srv.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(cli.version, Some(ProtocolVersion::TLSv1_3));
    }
}

#[tokio::test]
async fn roles_reverse_with_the_same_identities() {
    // Reverse replication: the old primary listens, the old secondary dials.
    let s = sites();
    let (srv, cli) = connect(&load(&s.sitea), &load(&s.siteb), "sitea").await;
    assert_eq!(srv.unwrap().peer.as_deref(), Some("siteb"));
    assert_eq!(cli.unwrap().peer.as_deref(), Some("sitea"));
}

/// A second CA with the same site name, and `sitea` issued by it.
fn rogue(s: &Sites) -> (PathBuf, PathBuf) {
    let ca = s.root.join("rogue-ca");
    let peer = s.root.join("rogue-sitea");
    pki::init(&ca, "siteb", &["127.0.0.1".into()], 825).unwrap();
    pki::issue(&ca, "sitea", &[], 825, &peer).unwrap();
    (ca, peer)
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let s = sites();
    let (_, rogue_peer) = rogue(&s);
    // The client trusts our CA too (else it would refuse us first), but its own certificate
    // comes from the other CA.
    let mut bundle = std::fs::read(rogue_peer.join("ca.pem")).unwrap();
    bundle.extend(std::fs::read(s.siteb.join("ca.pem")).unwrap());
    std::fs::write(rogue_peer.join("ca.pem"), bundle).unwrap();
    let (srv, cli) = connect(&load(&s.siteb), &load(&rogue_peer), "siteb").await;
    let err = srv.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "server: {err}");
    let err = cli.unwrap_err();
    assert!(err.contains("alert"), "client: {err}");
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let s = sites();
    let (rogue_ca, _) = rogue(&s);
    let (srv, cli) = connect(&load(&rogue_ca), &load(&s.sitea), "siteb").await;
    let err = cli.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "client: {err}");
    assert!(srv.is_err(), "server must not complete: {srv:?}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let s = sites();
    let old = s.root.join("old-sitea");
    let opts = CertOptions {
        expired: true,
        ..CertOptions::new(&[], 30)
    };
    let report = pki::issue_with(&s.siteb, "sitea", &opts, &old).unwrap();
    assert!(report.cert.expired);
    let client = load(&old);
    assert!(client.certificate().expired);
    let (srv, cli) = connect(&load(&s.siteb), &client, "siteb").await;
    let err = srv.unwrap_err();
    assert!(err.contains("expired"), "server: {err}");
    assert!(cli.is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let s = sites();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(s.siteb.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let server = load(&s.siteb).server_config().unwrap();
    let (srv, cli) = run(server, Arc::new(client), "siteb").await;
    let err = srv.unwrap_err();
    assert!(err.contains("no certificates"), "server: {err}");
    assert!(cli.is_err());
}

#[tokio::test]
async fn a_server_certificate_without_the_dialled_name_is_refused() {
    let s = sites();
    let (server, client) = (load(&s.siteb), load(&s.sitea));
    for dial in ["10.0.0.9", "sitec.example"] {
        let (srv, cli) = connect(&server, &client, dial).await;
        let err = cli.unwrap_err();
        assert!(
            err.contains("not valid for name"),
            "client dialling {dial}: {err}"
        );
        assert!(srv.is_err());
    }
}

#[tokio::test]
async fn tls_1_2_is_not_offered() {
    let s = sites();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(s.siteb.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(s.sitea.join("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(s.sitea.join("key.pem")).unwrap();
    let tls12_client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    let server = load(&s.siteb).server_config().unwrap();
    let (srv, cli) = run(server, Arc::new(tls12_client), "siteb").await;
    let err = srv.unwrap_err();
    assert!(err.contains("Tls12NotOffered"), "server: {err}");
    assert!(cli.is_err());
}
