//! CreateBucket, signed by hand (`object_store` cannot create buckets).

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpRequest, HttpRequestBody};

use super::StoreError;

/// `PUT {endpoint}/{bucket}` signed with SigV4; 2xx and 409 (already exists) are fine.
pub(crate) async fn create_bucket(
    http: &reqwest::Client,
    s3: &AmazonS3,
    endpoint: &str,
    region: &str,
    bucket: &str,
) -> Result<(), StoreError> {
    let fail = |reason: String, retryable: bool| StoreError::CreateBucket {
        bucket: bucket.to_owned(),
        reason,
        retryable,
    };
    let credential = s3
        .credentials()
        .get_credential()
        .await
        .map_err(|e| fail(format!("no credentials: {e}"), false))?;
    let url = format!("{}/{bucket}", endpoint.trim_end_matches('/'));
    let body = if region == "us-east-1" {
        String::new()
    } else {
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        )
    };
    let mut request: HttpRequest = http::Request::builder()
        .method(http::Method::PUT)
        .uri(&url)
        .body(HttpRequestBody::from(body.clone()))
        .map_err(|e| fail(format!("bad request URL {url}: {e}"), false))?;
    AwsAuthorizer::new(&credential, "s3", region)
        .try_authorize(&mut request, None)
        .map_err(|e| fail(format!("signing failed: {e}"), false))?;
    let response = http
        .put(&url)
        .headers(request.headers().clone())
        .body(body)
        .send()
        .await
        .map_err(|e| fail(e.to_string(), crate::http::transport_retryable(&e)))?;
    let status = response.status();
    if status.is_success() || status == http::StatusCode::CONFLICT {
        tracing::info!(bucket, "bucket ready");
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(fail(
        format!(
            "answered {status}: {}",
            text.chars().take(300).collect::<String>()
        ),
        crate::http::status_retryable(status.as_u16()),
    ))
}
