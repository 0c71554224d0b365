//! Serves a bundle file with the cfgsync routes until ctrl-c.
//!
//! ```text
//! cargo run -p cfgsync-examples --example bundle_server -- [BUNDLE] [ADDR]
//! curl -s -X POST localhost:4400/node -H 'content-type: application/json' \
//!      -d '{"identifier":"node-1","ip":"127.0.0.1"}'
//! ```

use std::sync::Arc;

use cfgsync_core::{BundleConfigSource, CfgsyncServerState, serve_cfgsync};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bundle = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/bundle.yaml").to_owned());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4400".to_owned());
    if let Err(message) = run(&bundle, &addr).await {
        eprintln!("bundle_server: {message}");
        std::process::exit(1);
    }
}

async fn run(bundle: &str, addr: &str) -> Result<(), String> {
    let addr = addr
        .parse()
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?;
    let source = BundleConfigSource::from_path(bundle).map_err(|e| e.to_string())?;
    println!(
        "serving {} node(s) from {bundle} on http://{addr} (ctrl-c stops)",
        source.identifiers().len()
    );
    serve_cfgsync(addr, CfgsyncServerState::new(Arc::new(source)))
        .await
        .map_err(|e| e.to_string())
}
