//! --docs: placeholder, filled in below.
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{Config, Results};

pub fn check(_root: &Path) -> Result<()> {
    Ok(())
}

pub fn write(_root: &Path, _config: &Config, _results: &Results) -> Result<Vec<PathBuf>> {
    Ok(Vec::new())
}
