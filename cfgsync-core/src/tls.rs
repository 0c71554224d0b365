//! TLS for every HTTP client the cfgsync crates build.
//!
//! The workspace builds rustls with the `ring` provider only (aws-lc, a C
//! build, was the largest step of a first build). reqwest 0.13 has no `ring`
//! feature: built with `rustls-no-provider`, building a `reqwest::Client`
//! panics unless a process-wide default [`rustls::crypto::CryptoProvider`] is
//! installed. [`ensure_crypto_provider`] installs ring once; every cfgsync
//! constructor that builds an HTTP client (this crate's `CfgsyncClient`, the
//! object stores the runtime and adapters open) calls it first, and
//! [`http_client_builder`] is the one way the workspace starts a
//! `reqwest::ClientBuilder` (`clippy.toml` disallows `reqwest::Client::new`
//! and `reqwest::Client::builder` elsewhere).
//!
//! An application embedding these crates that installed a provider of its
//! own before building any cfgsync client keeps it: cfgsync's clients then
//! use that provider. One that installs its provider afterwards gets `Err`
//! from `CryptoProvider::install_default` (ring is already the default) and
//! should ignore it or install earlier.

use std::sync::Once;

/// Makes sure the process has a default rustls crypto provider, installing
/// ring if none is installed yet. Idempotent, cheap after the first call and
/// safe from any number of threads at once; a provider installed earlier by
/// the embedding application is kept, not replaced and not an error.
pub fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // `Err`: the embedding application installed its own provider
        // first; it stays the default, which is all this promises.
        let _already = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `reqwest::Client::builder()` after [`ensure_crypto_provider`]: the
/// builder every HTTP client of the workspace starts from, so building it
/// cannot panic for want of a TLS provider.
#[allow(clippy::disallowed_methods)] // the one sanctioned call site
pub fn http_client_builder() -> reqwest::ClientBuilder {
    ensure_crypto_provider();
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_installs_once_and_clients_build() {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(ensure_crypto_provider))
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        ensure_crypto_provider();
        http_client_builder().build().unwrap();
    }
}
