//! A TLS-terminating proxy on `127.0.0.1:0` with a committed test
//! certificate, to put `https://` in front of any plain server of a test (a
//! cfgsync server, the in-process S3 server), as a reverse proxy does in
//! production.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The test CA (PEM) that signed the proxy's certificate: trust it (and
/// nothing else) to reach the proxy. Valid until 2126; its key is not kept.
pub const TEST_CA_PEM: &str = include_str!("../tls/ca.pem");
const LEAF_PEM: &str = include_str!("../tls/leaf.pem");
const LEAF_KEY_PEM: &str = include_str!("../tls/leaf.key");

/// The path of [`TEST_CA_PEM`]'s file, for `SSL_CERT_FILE` of a child process.
#[must_use]
pub fn test_ca_file() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tls/ca.pem"))
}

/// Accepts TLS on an ephemeral loopback port with a certificate for
/// `localhost` and `127.0.0.1` (signed by [`TEST_CA_PEM`]) and relays each
/// connection's plaintext to `upstream`. Stops when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    /// `https://localhost:PORT`.
    pub url: String,
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsProxy {
    /// A proxy in front of `upstream_url` (`http://HOST:PORT`, a path ignored).
    ///
    /// # Errors
    /// When `upstream_url` is not `http://IP:PORT`, the test certificate does
    /// not load or no loopback port can be bound.
    pub async fn in_front_of(upstream_url: &str) -> io::Result<Self> {
        let authority = upstream_url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| io::Error::other(format!("not http://IP:PORT: {upstream_url}")))?;
        let upstream: SocketAddr = authority
            .parse()
            .map_err(|e| io::Error::other(format!("not http://IP:PORT: {upstream_url}: {e}")))?;
        Self::start(upstream).await
    }

    /// A proxy in front of the plain server at `upstream`.
    ///
    /// # Errors
    /// When the test certificate does not load or no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config()?));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://localhost:{}", listener.local_addr()?.port());
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
                tokio::spawn(async move {
                    // A failed handshake (a client that does not trust the
                    // CA) ends that connection only.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut plain) = TcpStream::connect(upstream).await {
                        let _closed = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Ok(Self {
            url,
            handshakes,
            task,
        })
    }

    /// TLS handshakes completed so far (a client that rejected the
    /// certificate completes none).
    #[must_use]
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy's rustls config, with ring named explicitly: the process-wide
/// default provider is left alone, so the code under test must install it.
fn server_config() -> io::Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(LEAF_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).map_err(io::Error::other)?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)
}
