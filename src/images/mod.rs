//! Test images, built without a registry.
//!
//! Each image is defined by `images/NAME/image.toml` (compiled in, so the
//! binary can build them from anywhere; `--dir` reads another folder). Two
//! sources exist, both offline on a Debian host:
//! - `busybox`: a rootfs made here from the host's static busybox and its
//!   applet links;
//! - `debootstrap`: a minimal Debian rootfs from the host's configured
//!   mirror with the listed packages; optionally followed by an apt step in
//!   a chroot (`apt_install`, `security`) for what debootstrap cannot do.
//!
//! Either way the rootfs gets a `genesis` user (the sandbox uid), then is
//! imported through the Docker API (`POST /images/create?fromSrc=-`). Users
//! with a registry can instead `docker build` the `Dockerfile` beside each
//! `image.toml`; genesis only needs the tag to exist.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;

use crate::errors::{GenesisError, Result};
use crate::snapshot::Owner;

mod apt;
use apt::{apt_step, unmount_stale_proc};

/// The definitions shipped in `images/`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("busybox", include_str!("../../images/busybox/image.toml")),
    ("elixir", include_str!("../../images/elixir/image.toml")),
    ("node", include_str!("../../images/node/image.toml")),
    ("python", include_str!("../../images/python/image.toml")),
    ("rust", include_str!("../../images/rust/image.toml")),
];

/// One `image.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageDef {
    pub tag: String,
    #[serde(default)]
    pub description: String,
    /// `busybox` or `debootstrap`.
    pub source: String,
    #[serde(default)]
    pub suite: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub include: Vec<String>,
    /// A Debian mirror URL; defaults to the host's apt sources.
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// `debootstrap` only: packages installed with apt-get after
    /// debootstrap. apt resolves virtual packages, debootstrap's `--include`
    /// does not (npm depends on several).
    #[serde(default)]
    pub apt_install: Vec<String>,
    /// `debootstrap` only: add `SUITE-updates` and `SUITE-security` and
    /// `apt-get full-upgrade` (a full one: a security update may need new
    /// packages, as rustc-web 1.96 needs llvm-22). The sources stay in the
    /// image.
    #[serde(default)]
    pub security: bool,
}

impl ImageDef {
    /// Whether the debootstrap rootfs needs the apt step.
    fn needs_apt(&self) -> bool {
        self.security || !self.apt_install.is_empty()
    }

    fn suite(&self) -> String {
        self.suite.clone().unwrap_or_else(|| "bookworm".into())
    }

    /// The configured mirror, else the host's, else debootstrap's default.
    fn mirror(&self) -> String {
        self.mirror
            .clone()
            .or_else(host_debian_mirror)
            .unwrap_or_else(|| DEFAULT_MIRROR.into())
    }
}

const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// Loads definitions: the built-in ones, or every `*/image.toml` under `dir`.
pub fn definitions(dir: Option<&Path>) -> Result<Vec<(String, ImageDef)>> {
    let mut defs = Vec::new();
    match dir {
        None => {
            for (name, text) in BUILTIN {
                defs.push((name.to_string(), parse_def(Path::new(name), text)?));
            }
        }
        Some(dir) => {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| GenesisError::io(format!("reading {}", dir.display()), e))?;
            for entry in entries.flatten() {
                let file = entry.path().join("image.toml");
                if let Ok(text) = std::fs::read_to_string(&file) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    defs.push((name, parse_def(&file, &text)?));
                }
            }
            defs.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }
    Ok(defs)
}

fn parse_def(file: &Path, text: &str) -> Result<ImageDef> {
    toml::from_str(text).map_err(|e| GenesisError::Config {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
}

/// Builds one image and tags it; `say` receives progress lines.
pub async fn build(
    docker: &Docker,
    home: &Path,
    def: &ImageDef,
    owner: Owner,
    say: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let work = crate::home::Home::of(home).image_work(&def.tag);
    std::fs::create_dir_all(&work)
        .map_err(|e| GenesisError::io(format!("creating {}", work.display()), e))?;
    let tarball = work.join("rootfs.tar");
    match def.source.as_str() {
        "busybox" => {
            say("packing the host's static busybox into a rootfs");
            let bytes = busybox_rootfs(Path::new("/bin/busybox"), owner)?;
            std::fs::write(&tarball, bytes)
                .map_err(|e| GenesisError::io(format!("writing {}", tarball.display()), e))?;
        }
        "debootstrap" => {
            let rootfs = work.join("rootfs");
            debootstrap(def, &rootfs, say).await?;
            if def.needs_apt() {
                apt_step(def, &rootfs, say).await?;
            }
            say("adding the sandbox user and directories");
            prepare_debian_rootfs(&rootfs, owner)?;
            say("packing the rootfs");
            let (root, out) = (rootfs.clone(), tarball.clone());
            tokio::task::spawn_blocking(move || pack_dir(&root, &out))
                .await
                .map_err(|e| GenesisError::Internal(format!("pack task: {e}")))??;
            let _ = std::fs::remove_dir_all(&rootfs);
        }
        other => {
            return Err(GenesisError::Config {
                file: PathBuf::from(&def.tag),
                message: format!(
                    "key `source`: expected \"busybox\" or \"debootstrap\", got {other:?}"
                ),
            })
        }
    }
    say(&format!("importing into Docker as {}", def.tag));
    import(docker, &tarball, def).await?;
    let _ = std::fs::remove_file(&tarball);
    let _ = std::fs::remove_dir(&work);
    say(&format!("built {}", def.tag));
    Ok(())
}

/// Whether an image tag exists in the engine.
pub async fn exists(docker: &Docker, tag: &str) -> bool {
    docker.inspect_image(tag).await.is_ok()
}

async fn import(docker: &Docker, tarball: &Path, def: &ImageDef) -> Result<()> {
    let (repo, tag) = def
        .tag
        .rsplit_once(':')
        .unwrap_or((def.tag.as_str(), "latest"));
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: def.env.iter().map(|e| format!("ENV {e}")).collect(),
        ..Default::default()
    };
    let file = tokio::fs::File::open(tarball)
        .await
        .map_err(|e| GenesisError::io(format!("opening {}", tarball.display()), e))?;
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
    let mut stream = docker.create_image(Some(options), Some(body), None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| GenesisError::sandbox(format!("importing {}", def.tag), e))?;
    }
    Ok(())
}

/// A rootfs tar holding busybox, its applet links, a passwd with the sandbox user.
pub fn busybox_rootfs(busybox: &Path, owner: Owner) -> Result<Vec<u8>> {
    let binary = std::fs::read(busybox).map_err(|e| {
        GenesisError::io(
            format!(
                "reading {} (install Debian's busybox-static)",
                busybox.display()
            ),
            e,
        )
    })?;
    if has_interpreter(&binary) {
        return Err(GenesisError::Config {
            file: busybox.to_path_buf(),
            message: "is dynamically linked; install Debian's busybox-static".into(),
        });
    }
    let applets = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| GenesisError::io("listing busybox applets", e))?;
    let mut tar = tar::Builder::new(Vec::new());
    let add_dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, uid: u64| {
        let mut h = dir_header(mode, uid);
        tar.append_data(&mut h, format!("{path}/"), std::io::empty())
    };
    let io = |e| GenesisError::io("building the busybox rootfs", e);
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "genesis",
    ] {
        add_dir(&mut tar, dir, 0o755, 0).map_err(io)?;
    }
    add_dir(&mut tar, "tmp", 0o1777, 0).map_err(io)?;
    add_dir(&mut tar, "workspace", 0o755, owner.uid).map_err(io)?;
    add_dir(&mut tar, "genesis/out", 0o755, owner.uid).map_err(io)?;
    let mut h = file_header(0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())
        .map_err(io)?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let mut h = file_header(0o777, 0);
        h.set_entry_type(tar::EntryType::Symlink);
        tar.append_link(&mut h, applet, "/bin/busybox")
            .map_err(io)?;
    }
    for (path, text) in [
        (
            "etc/passwd",
            passwd(owner, "root:x:0:0:root:/root:/bin/sh\n"),
        ),
        ("etc/group", group(owner, "root:x:0:\n")),
    ] {
        let mut h = file_header(0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes()).map_err(io)?;
    }
    tar.into_inner().map_err(io)
}

/// Whether an ELF64 binary asks for a dynamic loader (has a PT_INTERP
/// program header); a busybox that does would not run in a bare rootfs.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, n: usize| elf.get(at..at + n);
    if read(0, 4) != Some(b"\x7fELF".as_slice()) {
        return true;
    }
    let (Some(phoff), Some(size), Some(count)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return true;
    };
    let phoff = u64::from_le_bytes(phoff.try_into().unwrap_or_default()) as usize;
    let size = u16::from_le_bytes(size.try_into().unwrap_or_default()) as usize;
    let count = u16::from_le_bytes(count.try_into().unwrap_or_default()) as usize;
    (0..count).any(|i| {
        read(phoff + i * size, 4)
            .map(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) == PT_INTERP)
            .unwrap_or(true)
    })
}

fn passwd(owner: Owner, existing: &str) -> String {
    format!(
        "{existing}genesis:x:{}:{}:genesis sandbox:/tmp:/bin/sh\n",
        owner.uid, owner.gid
    )
}

fn group(owner: Owner, existing: &str) -> String {
    format!("{existing}genesis:x:{}:\n", owner.gid)
}

fn dir_header(mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(0);
    h.set_mtime(0);
    h
}

fn file_header(mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h
}

/// The first non-security URI of the host's apt sources.
pub fn host_debian_mirror() -> Option<String> {
    host_apt_uris()
        .into_iter()
        .find(|u| !u.contains("security"))
}

/// The first security URI of the host's apt sources.
pub fn host_security_mirror() -> Option<String> {
    host_apt_uris().into_iter().find(|u| u.contains("security"))
}

/// Every `URIs:` (deb822) and `deb URL` entry of the host's apt sources, in
/// apt's order. Only the files apt reads (`*.list`, `*.sources`): hosts
/// park disabled sources beside them under other names.
fn host_apt_uris() -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut uris = Vec::new();
    for text in files.iter().filter_map(|f| std::fs::read_to_string(f).ok()) {
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("URIs:") {
                uris.extend(rest.split_whitespace().map(str::to_owned));
                continue;
            }
            let mut words = line.split_whitespace();
            if words.next() == Some("deb") {
                uris.extend(words.find(|w| w.contains("://")).map(str::to_owned));
            }
        }
    }
    uris
}

async fn debootstrap(def: &ImageDef, rootfs: &Path, say: &(dyn Fn(&str) + Sync)) -> Result<()> {
    // A build killed during the apt step leaves proc mounted; removing the
    // rootfs would then walk into the host's /proc.
    unmount_stale_proc(rootfs);
    let _ = std::fs::remove_dir_all(rootfs);
    let suite = def.suite();
    let mut cmd = tokio::process::Command::new("debootstrap");
    cmd.arg(format!(
        "--variant={}",
        def.variant.as_deref().unwrap_or("minbase")
    ));
    if !def.include.is_empty() {
        cmd.arg(format!("--include={}", def.include.join(",")));
    }
    cmd.arg(&suite).arg(rootfs).arg(def.mirror());
    say(&format!(
        "debootstrap {suite} with {} (a minute or two)",
        def.include.join(", ")
    ));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            GenesisError::io(
                "starting debootstrap (apt-get install -y debootstrap; it must run as root)",
                e,
            )
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut last = String::new();
    let mut retrieved = 0usize;
    while let Ok(Some(line)) = lines.next_line().await {
        // One line per 25 packages fetched, and each phase change.
        if line.starts_with("I: Retrieving") {
            retrieved += 1;
            if retrieved.is_multiple_of(25) {
                say(&format!("  retrieved {retrieved} packages"));
            }
        } else if line.starts_with("I: Installing") || line.starts_with("I: Base") {
            say(&format!("  {}", line.trim_start_matches("I: ")));
        }
        last = line;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| GenesisError::io("waiting for debootstrap", e))?;
    if !output.status.success() {
        return Err(GenesisError::sandbox(
            "debootstrap",
            format!(
                "exited with {}: {} {}",
                output.status,
                last,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn prepare_debian_rootfs(rootfs: &Path, owner: Owner) -> Result<()> {
    let io = |what: &str, e| GenesisError::io(format!("{what} in {}", rootfs.display()), e);
    let append = |file: &str, line: String| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(rootfs.join(file))
            .map_err(|e| io(file, e))?;
        f.write_all(line.as_bytes()).map_err(|e| io(file, e))
    };
    append("etc/passwd", passwd(owner, ""))?;
    append("etc/group", group(owner, ""))?;
    for dir in ["workspace", "genesis/out"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| io(dir, e))?;
        std::os::unix::fs::chown(&path, Some(owner.uid as u32), Some(owner.gid as u32))
            .map_err(|e| io(dir, e))?;
    }
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(rootfs.join(cache)) {
            for e in entries.flatten().filter(|e| e.path().is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Tars a directory without following symlinks, skipping device and
/// kernel file systems (the engine provides those).
fn pack_dir(root: &Path, out: &Path) -> Result<()> {
    let file = std::fs::File::create(out)
        .map_err(|e| GenesisError::io(format!("creating {}", out.display()), e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let io = |e| GenesisError::io("packing the rootfs", e);
    let entries = std::fs::read_dir(root).map_err(io)?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let path = entry.path();
        if ["dev", "proc", "sys"].iter().any(|s| name == *s) {
            let mut h = dir_header(0o755, 0);
            tar.append_data(
                &mut h,
                format!("{}/", name.to_string_lossy()),
                std::io::empty(),
            )
            .map_err(io)?;
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        if meta.is_dir() {
            tar.append_dir_all(&name, &path).map_err(io)?;
        } else {
            tar.append_path_with_name(&path, &name).map_err(io)?;
        }
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_definitions_parse() {
        let defs = definitions(None).unwrap();
        let names: Vec<_> = defs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["busybox", "elixir", "node", "python", "rust"]);
        assert_eq!(defs[3].1.tag, "genesis/python:bookworm");
        let node = &defs[2].1;
        assert_eq!(node.apt_install, ["npm"]);
        assert!(node.needs_apt());
        assert!(!defs[4].1.security, "rust stays on bookworm main");
    }

    #[test]
    fn apt_keys_parse_and_unknown_keys_fail() {
        let base = "tag = \"t\"\nsource = \"debootstrap\"\n";
        let parse = |extra: &str| parse_def(Path::new("t"), &format!("{base}{extra}"));
        assert!(!parse("").unwrap().needs_apt());
        let def = parse("security = true\n").unwrap();
        assert!(def.needs_apt() && def.apt_install.is_empty());
        assert!(parse("writable = [\"/opt/mix\"]\n").is_err());
    }

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        if let Ok(bin) = std::fs::read("/bin/sh") {
            assert!(has_interpreter(&bin), "/bin/sh is dynamic on Debian");
        }
        assert!(has_interpreter(b"not an elf"));
    }

    #[test]
    fn passwd_gets_the_sandbox_user() {
        let o = Owner {
            uid: 10001,
            gid: 10001,
        };
        assert!(passwd(o, "").contains(":10001:10001:"));
    }
}
