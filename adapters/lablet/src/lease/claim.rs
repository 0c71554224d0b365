//! Key claims: the lablet a storage key belongs to, recorded once, for good,
//! by a conditional create (`PutMode::Create`) of
//! `_claims/{bucket}/{key}.json` in the store's [`SharedArea`]. The first
//! lablet to sync a key owns it; every other name that maps to the same key
//! (e.g. `LAB-1.1.1` and `lab-1-1-1` under `lablet-{slug}/package.zip`) is
//! refused before anything is downloaded or stored. A claim is never taken
//! back by the pipeline: to hand a key to another name, delete its claim
//! object.

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::LeaseError;
use crate::store::{SharedArea, StoreLocation};

/// What a claim object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    /// The lablet the key belongs to.
    lablet: String,
    /// The storage key, as a URL.
    storage_key: String,
    /// When the claim was made (RFC 3339).
    claimed_at: String,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The key belongs to the lablet (claimed now or before).
    Owned,
    /// The key belongs to another lablet, named here.
    Taken(String),
}

/// The claim object of `key`.
fn claim_path(area: &SharedArea, key: &StoreLocation) -> object_store::path::Path {
    area.path(&format!("_claims/{}/{}.json", key.bucket, key.key))
}

/// Claims `key` for `lablet`, or says which lablet owns it.
pub(crate) async fn claim(
    area: &SharedArea,
    key: &StoreLocation,
    lablet: &str,
) -> Result<Claimed, LeaseError> {
    let path = claim_path(area, key);
    let url = area.url_of(&path);
    let store = area.store();
    // two rounds: a create that loses to another name's create reads the winner
    for _ in 0..2 {
        if let Some(owner) = read(&**store, &path, &url).await? {
            return Ok(if owner.lablet == lablet {
                Claimed::Owned
            } else {
                Claimed::Taken(owner.lablet)
            });
        }
        let claim = Claim {
            lablet: lablet.to_owned(),
            storage_key: key.url.clone(),
            claimed_at: crate::catalog::now_rfc3339(),
        };
        let body = serde_json::to_vec(&claim).map_err(|source| LeaseError::Decode {
            url: url.clone(),
            source,
        })?;
        match store
            .put_opts(
                &path,
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(lablet, storage_key = %key.url, "storage key claimed");
                return Ok(Claimed::Owned);
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => {
                return Err(LeaseError::ObjectStore {
                    operation: "create",
                    url,
                    source: Box::new(e),
                });
            }
        }
    }
    Err(LeaseError::Contended { url, attempts: 2 })
}

async fn read(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    url: &str,
) -> Result<Option<Claim>, LeaseError> {
    let os_err = |operation, source| LeaseError::ObjectStore {
        operation,
        url: url.to_owned(),
        source: Box::new(source),
    };
    let bytes = match store.get(path).await {
        Ok(got) => got.bytes().await.map_err(|e| os_err("get", e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(os_err("get", e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LeaseError::Decode {
            url: url.to_owned(),
            source,
        })
}
