//! Blobs in a private S3 (or S3-compatible) bucket, fetched by browsers through presigned
//! GET URLs so the bucket itself never needs public access.

use super::{BlobError, BlobInfo, BlobStore, S3Settings, validate_key};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use std::time::{Duration, SystemTime};

/// One bucket through `aws-sdk-s3`.
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    presign_ttl: Duration,
}

impl S3BlobStore {
    /// A client for the configured bucket. Fails without credentials: they come from the
    /// environment, and a node silently falling back to anonymous access would be worse.
    pub fn new(settings: &S3Settings) -> Result<Self, BlobError> {
        let (Some(key_id), Some(secret)) = (
            settings.access_key_id.clone(),
            settings.secret_access_key.clone(),
        ) else {
            return Err(BlobError::Config(
                "S3 credentials missing: set NEULBI_S3_ACCESS_KEY_ID and NEULBI_S3_SECRET_ACCESS_KEY".into(),
            ));
        };
        if settings.bucket.is_empty() {
            return Err(BlobError::Config("S3 bucket not set".into()));
        }
        let timeout = Duration::from_secs(settings.timeout_secs.max(1));
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(Credentials::new(key_id, secret, None, None, "neulbi"))
            .force_path_style(settings.path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2).min(timeout))
                    .operation_timeout(timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(2));
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: settings.bucket.clone(),
            presign_ttl: Duration::from_secs(settings.presign_ttl_secs.max(1)),
        })
    }

    /// Creates the bucket if it does not exist (tests and first runs against a fresh server).
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn unavailable<E: std::error::Error>(e: E) -> BlobError {
    BlobError::Unavailable(DisplayErrorContext(e).to_string())
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        validate_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Ok(None);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let bytes = out.body.collect().await.map_err(unavailable)?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(unavailable)?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                if validate_key(key).is_err() {
                    continue;
                }
                let modified = object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or_else(SystemTime::now);
                out.push(BlobInfo {
                    key: key.to_owned(),
                    modified,
                });
            }
        }
        Ok(out)
    }

    async fn url(&self, key: &str) -> Result<String, BlobError> {
        validate_key(key)?;
        let config = PresigningConfig::expires_in(self.presign_ttl)
            .map_err(|e| BlobError::Config(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(unavailable)?;
        Ok(request.uri().to_string())
    }

    fn served_by_node(&self) -> bool {
        false
    }
}
