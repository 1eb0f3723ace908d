//! Where an S3 storage's credentials may come from, and the check that refuses one without
//! them instead of letting `object_store` ask a cloud metadata address.

/// Where credentials may come from besides the spec: object_store reads these variables. When
/// none is there it would ask the cloud's instance-metadata address (169.254.169.254), which
/// from a master that is not on such an instance is a request to whatever answers there.
const CREDENTIAL_VARIABLES: [&str; 4] =
    ["AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"];

/// Refuses an S3 storage without credentials (a clear error instead of a metadata-address
/// lookup), or with half a key pair.
pub(crate) fn check_s3_credentials(
    access_key_id: Option<&str>,
    secret_access_key: Option<&str>,
    env_has: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    match (access_key_id, secret_access_key) {
        (Some(_), Some(_)) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err("give both access_key_id and secret_access_key, or neither".into()),
        (None, None) if CREDENTIAL_VARIABLES.iter().any(|v| env_has(v)) => Ok(()),
        (None, None) => {
            Err("no credentials: give access_key_id and secret_access_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             for the master and the agents (drover does not ask a cloud metadata address)"
                .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Storage, StorageSpec};

    #[test]
    fn s3_without_credentials_is_refused_not_sent_to_the_metadata_address() {
        let none = |_: &str| false;
        assert!(check_s3_credentials(None, None, &none).unwrap_err().contains("no credentials"));
        assert!(check_s3_credentials(Some("a"), None, &none).unwrap_err().contains("both"));
        assert!(check_s3_credentials(Some("a"), Some("b"), &none).is_ok());
        assert!(check_s3_credentials(None, None, &|v| v == "AWS_ACCESS_KEY_ID").is_ok());
        let spec = StorageSpec::S3 {
            bucket: "b".into(),
            prefix: None,
            endpoint_url: Some("file:///etc".into()),
            region: None,
            access_key_id: Some("a".into()),
            secret_access_key: Some("b".into()),
        };
        assert!(Storage::open(&spec).unwrap_err().to_string().contains("not an http"));
    }
}
