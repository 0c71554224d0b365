//! Issue 14 (hostile peers), the lablet side: transport errors keep their cause
//! and name the setting to check, a lablet that never got past resolve leaves
//! no lock file, `serve` flags a listener open beyond loopback by the auth
//! that guards its routes and serves with its connection limits, and every
//! identifier the crate builds follows the core identifier rule.
use std::sync::Arc;
use std::time::Duration;

use crate::common::env::Env;
use crate::common::sample_package;
use cfgsync_adapter::MemoryRegistrationStore;
use cfgsync_core::{AuthConfig, ServerLimits};
use cfgsync_lablet::catalog::DeliveryStatus;
use cfgsync_lablet::{
    Error, LabletSync, LabletSyncConfig, RetryPolicy, ServeOptions, Stage, build_lablet_app,
    serve_lablets,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "LAB-1.1.1";

/// A port nothing listens on: connection refused.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A listener that accepts and never answers (GETs answered `404` when
/// `answer_gets`): the request times out. Dropped with the returned guard.
struct Silent {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn silent(answer_gets: bool) -> Silent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            if answer_gets {
                let mut head = [0u8; 4];
                if socket.peek(&mut head).await.is_ok() && &head == b"GET " {
                    let mut buf = [0u8; 8192];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            }
            held.push(socket);
        }
    });
    Silent { url, task }
}

/// One attempt per call, 1 s timeouts.
fn quick(config: LabletSyncConfig) -> LabletSyncConfig {
    let mut config = config.with_retry(RetryPolicy::default().with_max_attempts(1));
    config.http.connect_timeout_secs = 1;
    config.http.read_timeout_secs = 1;
    config
}

async fn sync_error(config: LabletSyncConfig) -> Error {
    let sync = LabletSync::from_config(config).unwrap();
    tokio::time::timeout(Duration::from_secs(60), sync.sync(NAME))
        .await
        .expect("the configured timeouts end the sync")
        .unwrap_err()
}

#[tokio::test]
async fn unreachable_services_name_the_cause_and_the_setting() {
    let env = Env::start().await;
    env.publish(NAME, sample_package("1.0", "")).await;

    // resolve: refused, timed out
    let down = closed_port();
    let err = sync_error(quick(env.config(None)).with_resolver_url(&down)).await;
    assert_eq!(err.stage(), Some(Stage::Resolve));
    assert_eq!(
        err.to_string(),
        format!(
            "cannot resolve content for lablet {NAME}: connection refused to \
             {down}/resolve/{NAME} (check LABLET_RESOLVER_URL)"
        )
    );
    assert!(err.is_retryable());
    let hold = silent(false).await;
    let err = sync_error(quick(env.config(None)).with_resolver_url(&hold.url)).await;
    assert_eq!(
        err.to_string(),
        format!(
            "cannot resolve content for lablet {NAME}: timed out to {}/resolve/{NAME} \
             (check LABLET_RESOLVER_URL)",
            hold.url
        )
    );
    drop(hold);

    // download: the address is the resolver's MOSAIC_BASE_URL
    let hold = silent(false).await;
    for base in [closed_port(), hold.url.clone()] {
        let resolver = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::path(format!("/resolve/{NAME}")))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"MOSAIC_BASE_URL": base})),
            )
            .mount(&resolver)
            .await;
        let err = sync_error(quick(env.config(None)).with_resolver_url(resolver.uri())).await;
        assert_eq!(err.stage(), Some(Stage::Download));
        let cause = if base == hold.url {
            "timed out"
        } else {
            "connection refused"
        };
        assert_eq!(
            err.to_string(),
            format!(
                "package not available for lablet {NAME}: {cause} to {base}/package.zip \
                 (check MOSAIC_BASE_URL from the resolver)"
            )
        );
    }
    drop(hold);

    // fan-out: the sync records stale; each target's error keeps its cause
    for lds_down in [true, false] {
        let hold = silent(false).await;
        let down = closed_port();
        let (lds, se) = if lds_down {
            (down.clone(), hold.url.clone())
        } else {
            (hold.url.clone(), down.clone())
        };
        let config = quick(env.config(None)).with_lds_url(&lds).with_se_url(&se);
        let sync = LabletSync::from_config(config).unwrap();
        let report = sync.sync(NAME).await.unwrap();
        let fanout = &report.definition.content.fanout;
        let error_of = |target: &str| {
            let t = fanout.iter().find(|t| t.target == target).unwrap();
            assert_eq!(t.status, DeliveryStatus::Queued);
            t.error.clone().unwrap()
        };
        let (refused, timed_out) = if lds_down {
            (format!("{down}/sync"), format!("{se}/sync_content"))
        } else {
            (format!("{down}/sync_content"), format!("{lds}/sync"))
        };
        let (refused_setting, timed_out_setting) = if lds_down {
            ("LABLET_LDS_URL", "LABLET_SE_URL")
        } else {
            ("LABLET_SE_URL", "LABLET_LDS_URL")
        };
        let (refused_target, timed_out_target) = if lds_down {
            ("lds", "se")
        } else {
            ("se", "lds")
        };
        assert_eq!(
            error_of(refused_target),
            format!("connection refused to {refused} (check {refused_setting})")
        );
        assert_eq!(
            error_of(timed_out_target),
            format!("timed out to {timed_out} (check {timed_out_setting})")
        );
        let queued = sync.pending_deliveries().await.unwrap();
        assert!(
            queued.iter().any(|d| d
                .last_error
                .ends_with(&format!("(check {refused_setting})"))),
            "{queued:?}"
        );
    }

    // record (CPA): refused at the read before the store, timed out at the record
    let down = closed_port();
    let err = sync_error(quick(env.config(None)).with_cpa_url(&down)).await;
    assert_eq!(err.stage(), Some(Stage::Record));
    assert_eq!(
        err.to_string(),
        format!(
            "record failed for lablet {NAME}: connection refused to \
             {down}/api/internal/lablet-definitions/{NAME} (check LABLET_CPA_URL)"
        )
    );
    let hold = silent(true).await;
    let err = sync_error(quick(env.config(None)).with_cpa_url(&hold.url)).await;
    assert_eq!(err.stage(), Some(Stage::Record));
    assert_eq!(
        err.to_string(),
        format!(
            "record failed for lablet {NAME}: timed out to \
             {}/api/internal/lablet-definitions/{NAME}/content-synced (check LABLET_CPA_URL)",
            hold.url
        )
    );

    // a template that holds the address itself is the setting to check
    let down = closed_port();
    let mut config = quick(env.config(None));
    config.resolver.resolve_url = format!("{down}/r/{{name}}");
    let err = sync_error(config).await;
    assert_eq!(
        err.to_string(),
        format!(
            "cannot resolve content for lablet {NAME}: connection refused to \
             {down}/r/{NAME} (check LABLET_RESOLVE_URL)"
        )
    );
}

fn lock_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("locks"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_lablet_that_never_got_past_resolve_leaves_no_lock_file() {
    let env = Env::start().await;
    env.publish(NAME, sample_package("1.0", "")).await;
    let sync = LabletSync::from_config(quick(env.config(None))).unwrap();
    let work = env.data.path().join("work");

    // unknown to the resolver (404), then the resolver down
    for name in ["LAB-404", "LAB-9.9.9", "no-such-lablet"] {
        let err = sync.sync(name).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Resolve), "{err}");
    }
    let down =
        LabletSync::from_config(quick(env.config(None)).with_resolver_url(closed_port())).unwrap();
    assert_eq!(
        down.sync("LAB-2").await.unwrap_err().stage(),
        Some(Stage::Resolve)
    );
    assert_eq!(lock_files(&work), Vec::<String>::new());
    // nor does it claim a storage key
    let claims = work.join("store").join("_claims");
    assert!(
        !claims.exists(),
        "a name the resolver does not know claimed a key"
    );

    // a lablet that got past resolve locks and claims its storage key
    sync.sync(NAME).await.unwrap();
    let locks = lock_files(&work);
    assert!(locks.len() == 1 && locks[0].ends_with(".lock"), "{locks:?}");
    assert!(claims.exists());
}

async fn metrics_of(url: &str) -> String {
    cfgsync_test_support::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_flags_an_open_listener_by_the_auth_that_guards_its_routes() {
    let env = Env::start().await;
    for (auth, insecure) in [
        (AuthConfig::default(), true),
        (AuthConfig::default().with_admin_token("op-token"), false),
        (AuthConfig::default().with_node_secret("node-secret"), false),
    ] {
        let options = ServeOptions {
            auth: auth.clone(),
            ..ServeOptions::default()
        };
        let app = build_lablet_app(
            env.config(None),
            Arc::new(MemoryRegistrationStore::new()),
            &options,
        )
        .unwrap();
        let state = app.state.clone();
        let listener = cfgsync_core::bind_listener("0.0.0.0:0".parse().unwrap()).unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            serve_lablets(app, listener, &options, async {
                let _ = stopped.await;
            })
            .await
        });
        let metrics = metrics_of(&url).await;
        let line = format!("cfgsync_insecure_listener {}", u8::from(insecure));
        assert!(
            metrics.lines().any(|l| l == line),
            "{auth:?}: no {line:?} in\n{metrics}"
        );
        assert_eq!(state.insecure_listener(), insecure, "{auth:?}");
        // what the flag is about: the operator API is open exactly then
        let api = cfgsync_test_support::get(format!("{url}/api/v1/lablets"))
            .await
            .unwrap();
        assert_eq!(
            api.status().is_success(),
            insecure,
            "{auth:?}: operator API answered {}",
            api.status()
        );
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn serve_closes_idle_connections_after_its_configured_idle_timeout() {
    let env = Env::start().await;
    let options = ServeOptions {
        limits: ServerLimits::default()
            .with_idle_timeout(Duration::from_secs(1))
            .with_header_read_timeout(Duration::from_secs(1)),
        ..ServeOptions::default()
    };
    let app = build_lablet_app(
        env.config(None),
        Arc::new(MemoryRegistrationStore::new()),
        &options,
    )
    .unwrap();
    assert_eq!(app.state.limits().idle_timeout_secs, 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        serve_lablets(app, listener, &options, async {
            let _ = stopped.await;
        })
        .await
    });
    // one idle connection, one that sends half a request head
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle.write_all(b"GET /healthz HT").await.unwrap();
    for socket in [&mut idle, &mut trickle] {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
            .await
            .expect("the server closes the connection (default: after 30 s, test bound)");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed without an answer: {read:?}"
        );
    }
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn every_identifier_the_crate_builds_follows_the_core_rule() {
    for name in ["LAB-1.1.1", "lab_2", "A", &"x".repeat(128)] {
        cfgsync_lablet::validate_name(name).unwrap();
        cfgsync_core::validate_identifier(name).unwrap();
    }
    for name in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "a:b",
        "a@b",
        "ñ",
        "a b",
        &"x".repeat(129),
    ] {
        assert!(
            matches!(
                cfgsync_lablet::validate_name(name),
                Err(Error::InvalidName { .. })
            ),
            "{name:?}"
        );
    }

    // definition ids come from LABLET_ID_TEMPLATE: one outside the rule is refused
    let env = Env::start().await;
    env.publish(NAME, sample_package("1.0", "")).await;
    let mut config = quick(env.config(None));
    config.catalog.id_template = "defs/{name}".to_owned();
    let sync = LabletSync::from_config(config).unwrap();
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), None);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "invalid configuration: LABLET_ID_TEMPLATE: the definition id of lablet {NAME} \
             is not a valid identifier: "
        )) && message.contains("path separator"),
        "{message}"
    );
    assert!(
        sync.catalog()
            .get("defs/LAB-1.1.1")
            .await
            .unwrap()
            .is_none()
    );
    let mut config = quick(env.config(None));
    config.catalog.id_template = "lablet:{name}".to_owned();
    let sync = LabletSync::from_config(config).unwrap();
    assert_eq!(
        sync.sync(NAME).await.unwrap().definition.id,
        format!("lablet:{NAME}")
    );
}
