//! The core cfgsync flow in one process: a server on a loopback port serving the
//! example bundle, and nodes that register and fetch their files.

use std::sync::Arc;

use cfgsync_core::{
    BundleConfigSource, CfgsyncClient, CfgsyncServerState, NodeRegistration, serve_cfgsync_on,
};

#[tokio::main]
async fn main() {
    if let Err(message) = run().await {
        eprintln!("demo failed: {message}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/bundle.yaml");
    let source = BundleConfigSource::from_path(bundle)?;
    println!("1. loaded {bundle}: nodes {:?}", source.identifiers());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_cfgsync_on(
        listener,
        CfgsyncServerState::new(Arc::new(source)),
        async {
            let _ = stopped.await;
        },
    ));
    println!("2. cfgsync server listening on {url}");

    let client = CfgsyncClient::new(&url)?;
    for (identifier, ip) in [("node-1", "127.0.0.11"), ("node-2", "127.0.0.12")] {
        let registration = NodeRegistration::new(identifier, ip.parse()?);
        client.register_node(&registration).await?;
        let payload = client.fetch_node_config(&registration).await?;
        println!(
            "3. {identifier} registered and received {} file(s):",
            payload.files.len()
        );
        for file in &payload.files {
            let mode = file
                .mode
                .map(|m| format!(" (mode {m:o})"))
                .unwrap_or_default();
            println!("     {}{mode}: {} bytes", file.path, file.bytes()?.len());
        }
    }
    let unknown = NodeRegistration::new("node-9", "127.0.0.19".parse()?);
    match client.fetch_node_config(&unknown).await {
        Err(cfgsync_core::Error::MissingConfig { .. }) => {
            println!("4. node-9 is not in the bundle: 404 missing_config, as expected")
        }
        other => return Err(format!("node-9 should be missing, got {other:?}").into()),
    }

    let _ = stop.send(());
    server.await??;
    println!("5. server shut down cleanly");
    Ok(())
}
