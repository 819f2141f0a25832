//! pgha backup: base backups, WAL archiving (archive-push / archive-get), point-in-time
//! recovery, verify and retention over local and S3-compatible repositories.
//!
//! Nothing is built here yet; `pgha backup`, `archive-push` and `archive-get` say so and exit
//! non-zero.
