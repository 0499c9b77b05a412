//! PersistentVolumeClaim contexts: a short-lived reader Pod in the ImageBuild's namespace mounts
//! the claim read-only and streams its files to the controller, which holds no claim itself.

use std::path::Path;

use super::error::Error;
use super::reconcile::Context;
use crate::api::{ImageBuild, PvcSource};

/// Copies the files of `claim` (below its `subPath`) into the directory `into`.
pub async fn fetch_context(
    _ctx: &Context,
    _ib: &ImageBuild,
    _claim: &PvcSource,
    _into: &Path,
) -> Result<(), Error> {
    Err(Error::PvcUnsupported)
}
