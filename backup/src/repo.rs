//! The repository: an `object_store` (local directory or S3-compatible bucket) scoped to one
//! cluster, `<repo>/<scope>/`. Owns the layout (`repo.json`, `backups/<label>/...`,
//! `wal/<timeline>/<file>.zst`), create-if-absent writes, and the cluster identity check.

use crate::config::{BackupConfig, RepositoryConfig};
use crate::error::{BackupError, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// What the repository records about the cluster it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    pub system_identifier: u64,
    pub segment_size: u64,
}

/// An object found by a listing: path relative to the scope, size and last change.
#[derive(Debug, Clone)]
pub struct Listed {
    pub path: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// Result of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    AlreadyThere,
}

#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    /// Prefix of everything this cluster owns (`<s3 prefix>/<scope>`).
    root: ObjPath,
    /// Local directory of the scope when the repository is a filesystem (for fsync).
    local_root: Option<PathBuf>,
    location: String,
}

impl Repository {
    pub fn open(config: &BackupConfig) -> Result<Repository> {
        match &config.repository {
            RepositoryConfig { path: Some(path), .. } => {
                let scope_dir = path.join(&config.scope);
                std::fs::create_dir_all(&scope_dir).map_err(|e| {
                    BackupError::Refused(format!(
                        "cannot create the repository directory {}: {e}; create it and make it writable by the \
                         user running pgha (the PostgreSQL OS user for archive-push)",
                        scope_dir.display()
                    ))
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| BackupError::Refused(format!("cannot open the repository {}: {e}", path.display())))?;
                Ok(Repository {
                    store: Arc::new(store),
                    root: ObjPath::from(config.scope.as_str()),
                    local_root: Some(scope_dir.clone()),
                    location: scope_dir.display().to_string(),
                })
            }
            RepositoryConfig { s3: Some(s3), .. } => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_allow_http(s3.allow_http);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e);
                }
                let key_id = s3.access_key_id.clone().or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
                let secret = match &s3.secret_access_key_file {
                    Some(f) => Some(
                        std::fs::read_to_string(f)
                            .map_err(|e| {
                                BackupError::Refused(format!(
                                    "cannot read repository.s3.secret_access_key_file {}: {e}",
                                    f.display()
                                ))
                            })?
                            .trim()
                            .to_string(),
                    ),
                    None => std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
                };
                if let (Some(k), Some(s)) = (key_id, secret) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                let store = b.build().map_err(|e| {
                    BackupError::Refused(format!("cannot use S3 bucket {}: {e}; check [repository.s3]", s3.bucket))
                })?;
                let prefix = s3.prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
                let root = match prefix {
                    Some(p) => ObjPath::from(format!("{p}/{}", config.scope)),
                    None => ObjPath::from(config.scope.as_str()),
                };
                let location = format!("s3://{}/{}", s3.bucket, root);
                Ok(Repository { store: Arc::new(store), root, local_root: None, location })
            }
            _ => Err(BackupError::Refused("the config has no [repository]".into())),
        }
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, rel: &str) -> ObjPath {
        ObjPath::from(format!("{}/{rel}", self.root))
    }

    fn err(&self, action: &'static str, rel: &str) -> impl FnOnce(object_store::Error) -> BackupError {
        let location = self.location.clone();
        let object = rel.to_string();
        move |source| BackupError::Store { location, action, object, source: Box::new(source) }
    }

    /// Makes a just-written local object durable (no-op for object storage, which is).
    fn sync_local(&self, rel: &str) -> Result<()> {
        if let Some(root) = &self.local_root {
            let p = root.join(rel);
            let f = std::fs::File::open(&p).map_err(crate::error::io(&p))?;
            f.sync_all().map_err(crate::error::io(&p))?;
            if let Some(dir) = p.parent() {
                let d = std::fs::File::open(dir).map_err(crate::error::io(dir))?;
                d.sync_all().map_err(crate::error::io(dir))?;
            }
        }
        Ok(())
    }

    /// Writes (or overwrites) an object and makes it durable.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.store.put(&self.path(rel), PutPayload::from(data)).await.map_err(self.err("write", rel))?;
        self.sync_local(rel)
    }

    /// Writes one of many objects of a backup: the file is made durable off the async workers,
    /// but not its directory; `sync_dirs` does every directory once before the manifest is written.
    pub async fn put_unlisted(&self, rel: &str, data: Bytes) -> Result<()> {
        self.store.put(&self.path(rel), PutPayload::from(data)).await.map_err(self.err("write", rel))?;
        if let Some(root) = &self.local_root {
            let p = root.join(rel);
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(crate::error::io(&p))
            })
            .await
            .map_err(|e| BackupError::Refused(format!("sync task failed: {e}")))??;
        }
        Ok(())
    }

    /// Makes every directory under `rel_prefix` durable (local repositories; objects stores are).
    pub async fn sync_dirs(&self, rel_prefix: &str) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let top = root.join(rel_prefix);
        tokio::task::spawn_blocking(move || {
            let mut stack = vec![top];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).map_err(crate::error::io(&dir))? {
                    let entry = entry.map_err(crate::error::io(&dir))?;
                    if entry.file_type().map_err(crate::error::io(entry.path()))?.is_dir() {
                        stack.push(entry.path());
                    }
                }
                std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(crate::error::io(&dir))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| BackupError::Refused(format!("sync task failed: {e}")))?
    }

    /// Writes an object only if none exists under the name (atomic where the store supports it).
    pub async fn put_new(&self, rel: &str, data: Bytes) -> Result<Put> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(rel), PutPayload::from(data.clone()), opts).await {
            Ok(_) => {
                self.sync_local(rel)?;
                Ok(Put::Created)
            }
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Put::AlreadyThere)
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                // A store without conditional writes: check, then write (a narrow race remains).
                if self.exists(rel).await? {
                    return Ok(Put::AlreadyThere);
                }
                self.put(rel, data).await?;
                Ok(Put::Created)
            }
            Err(e) => Err(self.err("write", rel)(e)),
        }
    }

    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("read", rel)(e)),
        }
    }

    /// Reads an object; None when it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(self.err("read", rel))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", rel)(e)),
        }
    }

    /// Reads the first `len` bytes of an object (all of it if shorter).
    pub async fn get_prefix(&self, rel: &str, len: u64) -> Result<Option<Bytes>> {
        match self.store.get_range(&self.path(rel), 0..len).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(_) => self.get(rel).await.map(|o| o.map(|b| b.slice(..(len as usize).min(b.len())))),
        }
    }

    /// Every object under `rel_prefix` (recursively), paths relative to the scope.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<Listed>> {
        let prefix = self.path(rel_prefix.trim_end_matches('/'));
        let root = format!("{}/", self.root);
        let items: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(self.err("list", rel_prefix))?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let rel = full.strip_prefix(&root)?.to_string();
                // Staging files of an interrupted local write.
                if rel.contains('#') {
                    return None;
                }
                Some(Listed { path: rel, size: m.size, modified: m.last_modified })
            })
            .collect())
    }

    /// The names directly under `rel_prefix` that are "directories".
    pub async fn list_dirs(&self, rel_prefix: &str) -> Result<Vec<String>> {
        let prefix = self.path(rel_prefix.trim_end_matches('/'));
        let r = self.store.list_with_delimiter(Some(&prefix)).await.map_err(self.err("list", rel_prefix))?;
        Ok(r.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", rel)(e)),
        }
    }

    /// Deletes every object under `rel_prefix`.
    pub async fn delete_all(&self, rel_prefix: &str) -> Result<()> {
        for item in self.list(rel_prefix).await? {
            self.delete(&item.path).await?;
        }
        if let Some(root) = &self.local_root {
            let _ = std::fs::remove_dir_all(root.join(rel_prefix));
        }
        Ok(())
    }

    pub async fn info(&self) -> Result<Option<RepoInfo>> {
        let Some(bytes) = self.get(INFO).await? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| BackupError::Corrupt {
            object: INFO.into(),
            location: self.location.clone(),
            why: e.to_string(),
        })
    }

    /// Records the cluster on first use; afterwards refuses anything from another cluster.
    pub async fn claim(&self, info: &RepoInfo, what: &str) -> Result<RepoInfo> {
        let text = serde_json::to_vec_pretty(info).map_err(|e| BackupError::Refused(e.to_string()))?;
        self.put_new(INFO, Bytes::from(text)).await?;
        let stored = self.info().await?.ok_or_else(|| {
            BackupError::Refused(format!("{INFO} vanished from {} right after it was written", self.location))
        })?;
        if stored.system_identifier != info.system_identifier {
            return Err(BackupError::ForeignCluster {
                what: what.to_string(),
                found: info.system_identifier,
                expected: stored.system_identifier,
                location: self.location.clone(),
            });
        }
        Ok(stored)
    }
}

/// The repository info object.
pub const INFO: &str = "repo.json";

/// `wal/<timeline>/<name>.zst`
pub fn wal_object(timeline: u32, name: &str) -> String {
    format!("wal/{timeline:08X}/{name}.zst")
}

/// `backups/<label>/manifest.json`
pub fn manifest_object(label: &str) -> String {
    format!("backups/{label}/manifest.json")
}

/// `backups/<label>/data/<path>.<chunk>.zst`
pub fn chunk_object(label: &str, path: &str, chunk: usize) -> String {
    format!("backups/{label}/data/{path}.{chunk}.zst")
}
