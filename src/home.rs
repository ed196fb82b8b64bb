//! `GENESIS_HOME`: the one directory genesis writes to, and the one place
//! that knows its layout (as rustwide's `Workspace` owns every path under
//! its root). Every other module asks [`Home`] for a path and never joins
//! names onto the root itself, so the layout can be read, and changed, here.
//!
//! ```text
//! GENESIS_HOME/
//!   genesis.toml        the config, when no --config is given
//!   genesis.redb        the store
//!   sandboxes/ID/       what each experiment leaves (logs, reports, result)
//!   archives/ID.tar.gz  kept sandboxes, packed by cleanup
//!   mirrors/NAME.git    bare mirrors of the configured repos
//!   snapshots/          commit tarballs (a cache)
//!   layers/             commit trees for overlay workspaces (a cache)
//!   scratch/            each run's own file system, while it runs
//!   environments/       records and install logs of environments
//!   reports/            HTML pages
//!   images/TAG/         work directories of `genesis images build`
//!   jobs/               the scheduled jobs' state and locks
//!   tmp/                spools of exports and archives being written
//! ```

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// The root of `GENESIS_HOME`, and every path under it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Home(PathBuf);

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home(root.into())
    }

    /// The home whose root is `root` (for code handed a bare path).
    pub fn of(root: &Path) -> Home {
        Home(root.to_path_buf())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    fn at(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.0.join(name.as_ref())
    }

    pub fn config_file(&self) -> PathBuf {
        self.at("genesis.toml")
    }

    pub fn store(&self) -> PathBuf {
        self.at("genesis.redb")
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.at("sandboxes")
    }

    /// One experiment's sandbox directory.
    pub fn sandbox(&self, experiment_id: &str) -> PathBuf {
        self.sandboxes().join(experiment_id)
    }

    pub fn archives(&self) -> PathBuf {
        self.at("archives")
    }

    /// One experiment's archive: `archives/ID.tar.gz`.
    pub fn archive(&self, experiment_id: &str) -> PathBuf {
        self.archives().join(format!("{experiment_id}.tar.gz"))
    }

    /// The bare mirror of a configured repo.
    pub fn mirror(&self, repo: &str) -> PathBuf {
        self.at("mirrors").join(format!("{repo}.git"))
    }

    pub fn snapshots(&self) -> PathBuf {
        self.at("snapshots")
    }

    pub fn layers(&self) -> PathBuf {
        self.at("layers")
    }

    pub fn scratch(&self) -> PathBuf {
        self.at("scratch")
    }

    pub fn environments(&self) -> PathBuf {
        self.at("environments")
    }

    pub fn reports(&self) -> PathBuf {
        self.at("reports")
    }

    /// The work directory of `genesis images build` for an image tag.
    pub fn image_work(&self, tag: &str) -> PathBuf {
        self.at("images").join(tag.replace(['/', ':'], "_"))
    }

    pub fn jobs(&self) -> PathBuf {
        self.at("jobs")
    }

    pub fn tmp(&self) -> PathBuf {
        self.at("tmp")
    }

    /// A file `doctor` writes and removes to prove the home is writable.
    pub fn doctor_probe(&self) -> PathBuf {
        self.at(format!(".doctor-{}", std::process::id()))
    }
}

impl Deref for Home {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Home {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl From<PathBuf> for Home {
    fn from(root: PathBuf) -> Home {
        Home(root)
    }
}
