//! A peer-list cfgsync server: ready once N nodes registered, then each node
//! gets its config and the shared peer list.
//!
//! ```text
//! cargo run -p cfgsync-examples --example peer_list -- [NODES] [PORT]
//! ```

use cfgsync_examples::peer_list::PeerListMaterializer;
use cfgsync_runtime::serve_snapshot_cfgsync;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let parse = |arg: Option<String>, default: u64, name: &str| match arg {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} must be a number, got {text:?}")),
    };
    let nodes = parse(args.next(), 3, "NODES");
    let port = parse(args.next(), 4400, "PORT");
    let (Ok(nodes), Ok(port)) = (nodes, port) else {
        eprintln!("usage: peer_list [NODES] [PORT]");
        std::process::exit(2);
    };
    let Ok(port) = u16::try_from(port) else {
        eprintln!("peer_list: PORT must be at most 65535");
        std::process::exit(2);
    };
    println!("waiting for {nodes} node(s) on port {port} (ctrl-c stops)");
    let materializer = PeerListMaterializer::new(nodes as usize, 3000);
    if let Err(e) = serve_snapshot_cfgsync(port, materializer).await {
        eprintln!("peer_list: {e}");
        std::process::exit(1);
    }
}
