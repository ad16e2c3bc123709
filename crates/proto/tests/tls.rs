//! [`Client::connect_tls`] against a minimal TLS server on a loopback socket: a tokio-rustls
//! acceptor over a self-signed rcgen pair, answering with canned frames. Which roots the
//! client trusts decides whether the handshake passes, and a failed one says why.

// Helpers unwrap too: a failure anywhere in them is the test's failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{CertificateError, ServerConfig};
use simpletextim_proto::{
    ChatMessage, Client, ClientError, Command, Recipient, Reply, TlsConfig, TlsSetupError, UserId,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A self-signed certificate, its key, and the certificate as a PEM file.
struct Pair {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pem_file: PathBuf,
}

/// A fresh self-signed pair for `names`, its PEM written under the test's own directory as
/// `<file>.pem`. Its subject names `file`: two self-signed certificates with one subject
/// would look like one authority with two keys (a bad signature, not an unknown issuer).
fn pair(file: &str, names: &[&str]) -> Pair {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("SimpleTextIM test {file}"),
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem_file = scratch(&format!("{file}.pem"));
    std::fs::write(&pem_file, cert.pem()).unwrap();
    Pair {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        pem_file,
    }
}

/// A path in a directory of this test binary (cargo's per-target temporary directory),
/// unique per process.
fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn acceptor(pair: &Pair) -> TlsAcceptor {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pair.cert.clone()], pair.key.clone_key())
            .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

const LOGIN_ACK: &str = r#"{"command":"message","messages":[{"user_id":"bob","message":"hi alice","to":"alice","id":7,"ts":1764168000123}]}"#;
const ECHO: &str = r#"{"command":"message","messages":[{"user_id":"alice","message":"hello","to":"*","id":8,"ts":1764168000456}]}"#;

/// How the test server ends a connection after the client's third frame (its `exit`).
#[derive(Clone, Copy)]
enum Close {
    /// With TLS's close_notify, as a careful server does.
    Notify,
    /// Dropping the socket: no close_notify.
    Drop,
}

/// A TLS server for one connection: it answers the first frame with [`LOGIN_ACK`] and the
/// second with [`ECHO`], and closes after the third (or when the client goes). Its result is
/// every frame it received, or the handshake's error.
async fn tls_server(pair: &Pair) -> (SocketAddr, JoinHandle<Result<Vec<Bytes>, String>>) {
    tls_server_closing(pair, Close::Notify).await
}

async fn tls_server_closing(
    pair: &Pair,
    close: Close,
) -> (SocketAddr, JoinHandle<Result<Vec<Bytes>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = acceptor(pair);
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let stream = acceptor.accept(socket).await.map_err(|e| e.to_string())?;
        let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
        let mut received = Vec::new();
        let mut replies = [LOGIN_ACK, ECHO].into_iter();
        while let Some(frame) = framed.next().await {
            match frame {
                Ok(frame) => received.push(frame.freeze()),
                // The client went without close_notify (it dropped its connection).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.to_string()),
            }
            if let Some(reply) = replies.next() {
                framed.send(Bytes::from(reply)).await.unwrap();
            } else {
                match close {
                    Close::Notify => framed.into_inner().shutdown().await.unwrap(),
                    Close::Drop => drop(framed),
                }
                break;
            }
        }
        Ok(received)
    });
    (addr, task)
}

fn bob_to_alice() -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: UserId::new("bob").unwrap(),
        message: "hi alice".into(),
        to: Recipient::User(UserId::new("alice").unwrap()),
        id: 7,
        ts: 1_764_168_000_123,
    }
}

/// The rustls error inside a handshake failure.
fn rustls_reason(e: &ClientError) -> &rustls::Error {
    match e {
        ClientError::TlsHandshake(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {io:?}")),
        other => panic!("expected a handshake failure, got {other:?}"),
    }
}

#[tokio::test]
async fn logs_in_and_chats_over_tls_trusting_only_the_servers_certificate() {
    let pair = pair("only", &["localhost", "127.0.0.1"]);
    let (addr, server) = tls_server(&pair).await;
    let tls = TlsConfig::ca_file_only(&pair.pem_file).unwrap();
    let mut client = Client::connect_tls(addr, "localhost", &tls).await.unwrap();
    assert_eq!(
        client.login("alice", "secret").await.unwrap(),
        vec![bob_to_alice()]
    );
    // The halves work over TLS as over TCP.
    let (mut tx, mut rx) = client.into_split();
    tx.send_public("hello").await.unwrap();
    assert_eq!(
        rx.next_reply().await.unwrap(),
        Reply::Message {
            r#ref: None,
            messages: vec![ChatMessage {
                r#ref: None,
                user_id: UserId::new("alice").unwrap(),
                message: "hello".into(),
                to: Recipient::Everyone,
                id: 8,
                ts: 1_764_168_000_456,
            }]
        }
    );
    tx.send(&Command::Exit).await.unwrap();
    assert!(matches!(rx.next_reply().await, Err(ClientError::Closed)));
    let received = server.await.unwrap().unwrap();
    assert_eq!(
        received,
        vec![
            Bytes::from_static(br#"{"command":"login alice/secret"}"#),
            Bytes::from_static(br#"{"command":"send","message":"hello","to":"*"}"#),
            Bytes::from_static(br#"{"command":"exit"}"#),
        ]
    );
}

#[tokio::test]
async fn an_ip_address_is_verified_against_the_certificates_ip_names() {
    let pair = pair("ip", &["localhost", "127.0.0.1"]);
    let (addr, server) = tls_server(&pair).await;
    let tls = TlsConfig::ca_file_only(&pair.pem_file).unwrap();
    let mut client = Client::connect_tls(addr, "127.0.0.1", &tls).await.unwrap();
    assert_eq!(
        client.login("alice", "secret").await.unwrap(),
        vec![bob_to_alice()]
    );
    drop(client);
    assert_eq!(
        server.await.unwrap().unwrap(),
        vec![Bytes::from_static(br#"{"command":"login alice/secret"}"#)]
    );
}

#[tokio::test]
async fn the_extra_ca_file_is_what_makes_a_self_signed_certificate_trusted() {
    let pair = pair("extra", &["localhost"]);

    // The system's roots alone do not know a self-signed certificate. (A machine whose
    // store is empty refuses to build such a configuration at all.)
    match TlsConfig::system_roots() {
        Ok(system) => {
            let (addr, server) = tls_server(&pair).await;
            let e = Client::connect_tls(addr, "localhost", &system)
                .await
                .unwrap_err();
            assert_eq!(
                rustls_reason(&e),
                &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            );
            assert_eq!(
                e.to_string(),
                "TLS handshake failed: invalid peer certificate: UnknownIssuer"
            );
            assert!(server.await.unwrap().is_err(), "the server saw no failure");
        }
        Err(e) => assert!(matches!(e, TlsSetupError::NoRoots), "{e:?}"),
    }

    // With the certificate as an extra CA, the same server is trusted.
    let (addr, server) = tls_server(&pair).await;
    let tls = TlsConfig::system_roots_and_ca_file(&pair.pem_file).unwrap();
    let mut client = Client::connect_tls(addr, "localhost", &tls).await.unwrap();
    assert_eq!(
        client.login("alice", "secret").await.unwrap(),
        vec![bob_to_alice()]
    );
    drop(client);
    assert_eq!(server.await.unwrap().unwrap().len(), 1);
}

#[tokio::test]
async fn a_certificate_from_another_authority_fails_the_handshake_as_unknown_issuer() {
    let pair = pair("server", &["localhost"]);
    let other = pair_file_only("other");
    let (addr, server) = tls_server(&pair).await;
    let tls = TlsConfig::ca_file_only(&other).unwrap();
    let e = Client::connect_tls(addr, "localhost", &tls)
        .await
        .unwrap_err();
    assert_eq!(
        rustls_reason(&e),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert!(server.await.unwrap().is_err(), "the server saw no failure");
}

/// The PEM file of another self-signed certificate for `localhost`.
fn pair_file_only(file: &str) -> PathBuf {
    pair(file, &["localhost"]).pem_file
}

#[tokio::test]
async fn a_server_name_the_certificate_does_not_hold_fails_the_handshake() {
    let pair = pair("name", &["localhost", "127.0.0.1"]);
    let (addr, server) = tls_server(&pair).await;
    let tls = TlsConfig::ca_file_only(&pair.pem_file).unwrap();
    let e = Client::connect_tls(addr, "chat.example.org", &tls)
        .await
        .unwrap_err();
    assert!(
        matches!(
            rustls_reason(&e),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "TLS handshake failed: invalid peer certificate: certificate not valid for name \
         \"chat.example.org\"; certificate is only valid for DnsName(\"localhost\") or \
         IpAddress(127.0.0.1)"
    );
    assert!(server.await.unwrap().is_err(), "the server saw no failure");
}

#[tokio::test]
async fn a_server_that_does_not_speak_tls_fails_the_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // A plain SimpleTextIM server answers the client's hello as a frame it cannot read.
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, LengthDelimitedCodec::new());
        framed
            .send(Bytes::from_static(
                br#"{"command":"fail","fail":{"error_code":400,"reason":"not JSON"}}"#,
            ))
            .await
            .unwrap();
    });
    let pem = pair_file_only("plain");
    let tls = TlsConfig::ca_file_only(&pem).unwrap();
    let e = Client::connect_tls(addr, "localhost", &tls)
        .await
        .unwrap_err();
    assert!(
        matches!(rustls_reason(&e), rustls::Error::InvalidMessage(_)),
        "{e:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_name_that_is_not_a_name_is_refused_before_connecting() {
    let pem = pair_file_only("badname");
    let tls = TlsConfig::ca_file_only(&pem).unwrap();
    // Nothing listens on port 9 of loopback in a test: had the client connected, the error
    // would be `Connect`.
    let e = Client::connect_tls("127.0.0.1:9", "not a name!", &tls)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::TlsSetup(TlsSetupError::InvalidServerName { name }) if name == "not a name!"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "TLS setup: not a server name to verify: \"not a name!\""
    );
}

#[test]
fn a_missing_ca_file_is_a_setup_error_naming_it() {
    let path = scratch("missing.pem");
    let e = TlsConfig::ca_file_only(&path).unwrap_err();
    assert!(matches!(&e, TlsSetupError::ReadCaFile { path: p, .. } if *p == path));
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read the CA file {}: No such file or directory (os error 2)",
            path.display()
        )
    );
    // The same with the system's roots: the file is checked all the same.
    let e = TlsConfig::system_roots_and_ca_file(&path).unwrap_err();
    assert!(matches!(&e, TlsSetupError::ReadCaFile { path: p, .. } if *p == path));
}

#[test]
fn a_key_file_given_as_ca_file_holds_no_certificate() {
    let key = rcgen::KeyPair::generate().unwrap();
    let path = scratch("key-as-ca.pem");
    std::fs::write(&path, key.serialize_pem()).unwrap();
    let e = TlsConfig::ca_file_only(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("the CA file {} holds no PEM certificate", path.display())
    );
    let e = ClientError::from(e);
    assert_eq!(
        e.to_string(),
        format!(
            "TLS setup: the CA file {} holds no PEM certificate",
            path.display()
        )
    );
}

#[test]
fn a_broken_pem_file_is_a_setup_error() {
    let path = scratch("broken.pem");
    std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let e = TlsConfig::ca_file_only(&path).unwrap_err();
    assert!(
        matches!(&e, TlsSetupError::BadPem { path: p, .. } if *p == path),
        "{e:?}"
    );
}

#[test]
fn a_pem_certificate_that_is_not_a_certificate_is_refused() {
    let path = scratch("not-a-cert.pem");
    // Valid PEM and base64, but the DER inside is no certificate.
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = TlsConfig::ca_file_only(&path).unwrap_err();
    assert!(
        matches!(&e, TlsSetupError::BadCertificate { path: p, .. } if *p == path),
        "{e:?}"
    );
}

#[test]
fn every_certificate_of_a_ca_file_is_trusted() {
    // Two certificates in one file: both are read (a server's certificate and a private
    // authority's, say). The second one's server is trusted.
    let first = pair("bundle-a", &["localhost"]);
    let second = pair("bundle-b", &["localhost"]);
    let bundle = scratch("bundle.pem");
    let mut text = std::fs::read_to_string(&first.pem_file).unwrap();
    text.push_str(&std::fs::read_to_string(&second.pem_file).unwrap());
    std::fs::write(&bundle, text).unwrap();
    let tls = TlsConfig::ca_file_only(&bundle).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (addr, server) = tls_server(&second).await;
        let mut client = Client::connect_tls(addr, "localhost", &tls).await.unwrap();
        assert_eq!(
            client.login("alice", "secret").await.unwrap(),
            vec![bob_to_alice()]
        );
        drop(client);
        assert_eq!(server.await.unwrap().unwrap().len(), 1);
    });
}

#[tokio::test]
async fn a_plain_connect_still_speaks_plain_tcp() {
    // `Client::connect` is unchanged by TLS: a plain server gets the login in clear.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, LengthDelimitedCodec::new());
        let login = framed.next().await.unwrap().unwrap();
        framed.send(Bytes::from(LOGIN_ACK)).await.unwrap();
        login.freeze()
    });
    let mut client = Client::connect(addr).await.unwrap();
    assert_eq!(
        client.login("alice", "secret").await.unwrap(),
        vec![bob_to_alice()]
    );
    assert_eq!(
        server.await.unwrap(),
        Bytes::from_static(br#"{"command":"login alice/secret"}"#)
    );
}

/// Logs in, sends a message and `exit` over TLS; the replies after the login ack.
async fn chat_then_exit(close: Close) -> (Result<Reply, ClientError>, Vec<Bytes>) {
    let pair = pair(
        match close {
            Close::Notify => "notify",
            Close::Drop => "drop",
        },
        &["localhost"],
    );
    let (addr, server) = tls_server_closing(&pair, close).await;
    let tls = TlsConfig::ca_file_only(&pair.pem_file).unwrap();
    let mut client = Client::connect_tls(addr, "localhost", &tls).await.unwrap();
    client.login("alice", "secret").await.unwrap();
    client.send_public("hello").await.unwrap();
    assert!(matches!(
        client.next_reply().await,
        Ok(Reply::Message { .. })
    ));
    client.exit().await.unwrap();
    let end = client.next_reply().await;
    (end, server.await.unwrap().unwrap())
}

#[tokio::test]
async fn a_server_closing_with_close_notify_ends_the_stream() {
    let (end, received) = chat_then_exit(Close::Notify).await;
    assert!(matches!(end, Err(ClientError::Closed)), "{end:?}");
    assert_eq!(received.len(), 3);
}

#[tokio::test]
async fn a_server_closing_without_close_notify_ends_the_stream_all_the_same() {
    let (end, received) = chat_then_exit(Close::Drop).await;
    assert!(matches!(end, Err(ClientError::Closed)), "{end:?}");
    assert_eq!(received.len(), 3);
}

#[tokio::test]
async fn a_frame_cut_short_by_a_close_without_close_notify_is_an_error() {
    let pair = pair("cut", &["localhost"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = acceptor(&pair);
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut stream = acceptor.accept(socket).await.unwrap();
        // A header announcing 100 bytes, then 5 of them, then the socket is dropped.
        stream.write_all(b"\0\0\0\x64{\"com").await.unwrap();
        stream.flush().await.unwrap();
    });
    let tls = TlsConfig::ca_file_only(&pair.pem_file).unwrap();
    let mut client = Client::connect_tls(addr, "localhost", &tls).await.unwrap();
    server.await.unwrap();
    let end = client.next_reply().await;
    assert!(
        matches!(&end, Err(ClientError::Codec(_))),
        "a truncated frame must not look like a clean end: {end:?}"
    );
    assert_eq!(end.unwrap_err().to_string(), "bytes remaining on stream");
}
