//! The Debian package: `cargo deb` packs the binary, the policies, the
//! systemd unit and the README; installed by dpkg into a throwaway root, the unit
//! verifies against that root (`systemd-analyze verify`, every key known)
//! and the root's `genesis doctor` runs and prints its checks.
//!
//! The package is made from the debug binary the tests already built
//! (`--profile dev --no-build`), so this takes seconds; a release package
//! is `cargo deb`. cargo-deb itself is installed from crates.io the first
//! time (`cargo install cargo-deb --version 3.8.0 --locked`, a few minutes
//! once per machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::nats::free_port;

const CARGO_DEB_VERSION: &str = "3.8.0";

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_cargo_deb() {
    let present = cargo()
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return;
    }
    let status = cargo()
        .args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ])
        .status()
        .expect("run cargo install");
    assert!(status.success(), "cargo install cargo-deb failed");
}

fn checked(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The target directory holding the genesis binary under test.
fn target_dir() -> PathBuf {
    let bin = Path::new(crate::support::genesis_bin());
    bin.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Builds the package into `out` and returns its path.
fn build_deb(out: &Path) -> PathBuf {
    ensure_cargo_deb();
    let made = cargo()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir())
        .args(["deb", "--profile", "dev", "--no-build", "--fast", "-o"])
        .arg(out)
        .output()
        .expect("run cargo deb");
    let made = checked("cargo deb", made);
    let path = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let deb = PathBuf::from(path.lines().last().unwrap_or_default());
    assert!(deb.is_file(), "cargo deb made no {}", deb.display());
    deb
}

/// Installs the package with dpkg into a throwaway root: an empty dpkg
/// database there, and `--force-depends` because that root has no base
/// system for the package's dependencies (the host's are what it runs on).
fn install_into(root: &Path, deb: &Path) {
    let db = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(db.join(dir)).unwrap();
    }
    for file in ["status", "available"] {
        std::fs::write(db.join(file), "").unwrap();
    }
    checked(
        "dpkg --root -i",
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "--force-script-chrootless", "-i"])
            .arg(deb)
            .output()
            .unwrap(),
    );
    let status = checked(
        "dpkg --root -s",
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["-s", "genesis"])
            .output()
            .unwrap(),
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("Status: install ok installed"), "{status}");
}

#[test]
fn the_deb_installs_binary_policies_and_unit_and_its_doctor_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let deb = build_deb(scratch.path());
    let root = scratch.path().join("root");
    install_into(&root, &deb);
    let fields = checked(
        "dpkg-deb -f",
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .args(["Package", "Depends"])
            .output()
            .unwrap(),
    );
    let fields = String::from_utf8_lossy(&fields.stdout);
    assert!(fields.contains("Package: genesis"), "{fields}");
    for needed in ["git", "e2fsprogs", "mount"] {
        assert!(fields.contains(needed), "Depends lacks {needed}: {fields}");
    }

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for policy in ["default.toml", "strict.toml", "llm_patterns.toml"] {
        let installed = root.join("usr/share/genesis/policies").join(policy);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(manifest.join("policies").join(policy)).unwrap(),
            "{}",
            installed.display()
        );
    }
    let unit = root.join("lib/systemd/system/genesis.service");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/genesis"),
        "{unit_text}"
    );

    // Every key is one systemd knows, and ExecStart names the root's binary.
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args([
            "--recursive-errors=no",
            "--man=no",
            "/lib/systemd/system/genesis.service",
        ])
        .output()
        .expect("run systemd-analyze (Debian's systemd package)");
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {:?}: {complaints}",
        verified.status
    );

    // The root's genesis runs its checks; no NATS listens on the port given,
    // so it exits 1 and says how to fix that.
    let home = scratch.path().join("home");
    let doctor = Command::new(root.join("usr/bin/genesis"))
        .env("GENESIS_HOME", &home)
        .env(
            "GENESIS_NATS_URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .arg("doctor")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{printed}");
    for check in ["home", "store"] {
        assert!(
            printed
                .lines()
                .any(|l| l.starts_with(&format!("✓ {check}"))),
            "no passing {check} check:\n{printed}"
        );
    }
    // These depend on the machine (engine, images, loop devices): checked, either way.
    for check in ["docker", "runtime", "disk"] {
        let checked = |mark: &str| format!("{mark} {check}");
        assert!(
            printed
                .lines()
                .any(|l| l.starts_with(&checked("✓")) || l.starts_with(&checked("✗"))),
            "no {check} check:\n{printed}"
        );
    }
    assert!(
        printed
            .lines()
            .any(|l| l.starts_with("✗ nats") && l.contains("cannot reach")),
        "{printed}"
    );
    assert!(printed.contains("fix: start a server"), "{printed}");
}
