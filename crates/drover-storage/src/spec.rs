//! How to reach a storage: [`StorageSpec`], which the master also hands each trial (as JSON),
//! and its description for messages, which never shows credentials.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How to reach a storage; also what the master hands a trial (as JSON) so that its SDK can
/// save and restore checkpoints itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StorageSpec {
    /// A directory on this host. `prefix` (like S3's) is a key prefix inside it: it is walked
    /// without following links like every key, whereas `path` is trusted as the operator gave
    /// it. Experiments that share a root each get their own prefix, so one experiment's trial
    /// cannot redirect another's storage by replacing its subdirectory with a link.
    Directory {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// A shared file system, mounted at `path` on the master and on every agent.
    SharedFs {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// An S3 bucket (or an S3-compatible server at `endpoint_url`). Credentials not given here
    /// come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        endpoint_url: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<String>,
    },
}

/// Without credentials: a spec ends up in configs and logs printed with `{:?}`.
impl std::fmt::Debug for StorageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageSpec({})", self.describe())
    }
}

impl StorageSpec {
    /// A directory on this host, keys at its top.
    pub fn directory(path: impl Into<PathBuf>) -> StorageSpec {
        StorageSpec::Directory { path: path.into(), prefix: None }
    }

    /// The same storage, one level down: every key gets `sub/` in front.
    pub fn child(&self, sub: &str) -> StorageSpec {
        let mut child = self.clone();
        let (StorageSpec::Directory { prefix, .. } | StorageSpec::SharedFs { prefix, .. } | StorageSpec::S3 { prefix, .. }) = &mut child;
        *prefix = Some(match prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
            Some(p) => format!("{p}/{sub}"),
            None => sub.to_string(),
        });
        child
    }

    /// A short description for messages, without credentials.
    pub fn describe(&self) -> String {
        let under = |prefix: &Option<String>| prefix.as_deref().map(|p| format!("/{}", p.trim_matches('/'))).unwrap_or_default();
        match self {
            StorageSpec::Directory { path, prefix } => format!("directory {}{}", path.display(), under(prefix)),
            StorageSpec::SharedFs { path, prefix } => format!("shared_fs {}{}", path.display(), under(prefix)),
            StorageSpec::S3 { bucket, prefix, endpoint_url, .. } => format!(
                "s3://{bucket}/{}{}",
                prefix.as_deref().unwrap_or(""),
                endpoint_url.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
            ),
        }
    }
}
