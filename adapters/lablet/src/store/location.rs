//! [`StoreLocation`]: where one lablet's package lives, and the S3 bucket-name
//! rules a per-lablet bucket must pass.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where one lablet's package lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLocation {
    /// Bucket (for `file://`, the store directory's name).
    pub bucket: String,
    /// Object key inside the bucket.
    pub key: String,
    /// Full URL (`s3://bucket/key` or `file:///dir/key`).
    pub url: String,
}

/// The lablet name as used in a bucket name: lower-cased, `.` and `_` become `-`.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// S3 bucket naming rules (the subset that matters here).
pub(crate) fn validate_bucket(bucket: &str) -> Result<(), StoreError> {
    let err = |reason| {
        Err(StoreError::InvalidBucket {
            bucket: bucket.to_owned(),
            reason,
        })
    };
    if !(3..=63).contains(&bucket.len()) {
        return err("length must be 3 to 63");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return err("only lower-case letters, digits, '-' and '.' are allowed");
    }
    let first = bucket.as_bytes()[0];
    let last = bucket.as_bytes()[bucket.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return err("must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return err("must not contain '..'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_makes_valid_bucket_names() {
        assert_eq!(slug("LAB-1.1.1"), "lab-1-1-1");
        assert!(validate_bucket(&format!("lablet-{}", slug("LAB-1.1.1"))).is_ok());
        assert!(validate_bucket("lablet-").is_err());
        assert!(validate_bucket("Upper").is_err());
    }
}
