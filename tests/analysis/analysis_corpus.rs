//! Real-world accuracy of the LLM call-site analyzer.
//!
//! `tests/fixtures/analysis/corpus/manifest.toml` lists source files inside published archives (PyPI
//! sdists/wheels, crates.io `.crate`s) with hand-checked call-site lines. This
//! test downloads each archive once into `$GENESIS_CORPUS_CACHE` (default
//! `target/corpus-cache`), verifies the archive's and the file's sha256,
//! extracts the file, analyses it and asserts the exact lines, printing
//! per-file results and the accuracy.
//!
//! Network: registries are reached over HTTPS with the system CA bundle
//! (`$SSL_CERT_FILE`, default `/etc/ssl/certs/ca-certificates.crt`, which on
//! the build hosts holds the TLS-re-signing proxy's CA); `HTTPS_PROXY`/
//! `ALL_PROXY` are honoured. An archive that is not cached and cannot be
//! fetched fails the test (set `GENESIS_CORPUS_SKIP_OFFLINE=1` to skip
//! instead); a wrong checksum or an HTTP error status is a failure.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use genesis::analysis::{Analyzer, Shapes};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The labelled manifest: `tests/fixtures/analysis/corpus/manifest.toml`.
fn manifest_text() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/analysis/corpus/manifest.toml");
    std::fs::read_to_string(path).expect("read corpus manifest")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    file: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    package: String,
    version: String,
    registry: String,
    archive: String,
    archive_sha256: String,
    path: String,
    file_sha256: String,
    llm_call_lines: Vec<u32>,
    note: String,
}

enum Fetch {
    Ok(Vec<u8>),
    /// The network cannot be reached: skip, with the reason.
    Offline(String),
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("GENESIS_CORPUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/corpus-cache"))
}

fn agent() -> ureq::Agent {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let bundle = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_owned());
    let roots = match std::fs::read(&bundle) {
        Ok(pem) => {
            let certs: Vec<_> = parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(cert)) => Some(cert),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                RootCerts::WebPki
            } else {
                RootCerts::new_with_certs(&certs)
            }
        }
        Err(_) => RootCerts::WebPki,
    };
    ureq::Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// The archive's bytes, from the cache or the registry.
fn fetch(agent: &ureq::Agent, url: &str, sha256: &str) -> Fetch {
    let name = url.rsplit('/').next().unwrap_or("archive");
    let cached = cache_dir().join(format!("{}-{name}", &sha256[..12]));
    if let Ok(bytes) = std::fs::read(&cached) {
        if sha256_hex(&bytes) == sha256 {
            return Fetch::Ok(bytes);
        }
    }
    let bytes = match agent.get(url).call() {
        Ok(mut response) => match response
            .body_mut()
            .with_config()
            .limit(512 << 20)
            .read_to_vec()
        {
            Ok(bytes) => bytes,
            Err(e) => return Fetch::Offline(format!("{url}: reading the body failed: {e}")),
        },
        Err(ureq::Error::StatusCode(code)) => {
            panic!("{url}: HTTP {code} (archive gone or URL wrong)")
        }
        Err(e) => return Fetch::Offline(format!("{url}: {e}")),
    };
    let got = sha256_hex(&bytes);
    assert_eq!(got, sha256, "{url}: archive sha256 mismatch");
    std::fs::create_dir_all(cache_dir()).expect("create corpus cache dir");
    let partial = cached.with_extension("partial");
    std::fs::write(&partial, &bytes).expect("write corpus cache");
    std::fs::rename(&partial, &cached).expect("move corpus cache file in place");
    Fetch::Ok(bytes)
}

/// One file out of a `.tar.gz`/`.crate` or a `.zip`/`.whl`.
fn extract(archive_url: &str, bytes: &[u8], path: &str) -> Vec<u8> {
    if archive_url.ends_with(".whl") || archive_url.ends_with(".zip") {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("zip archive");
        let mut file = zip
            .by_name(path)
            .unwrap_or_else(|e| panic!("{archive_url}: no {path}: {e}"));
        let mut out = Vec::new();
        file.read_to_end(&mut out).expect("read zip entry");
        return out;
    }
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in tar.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let matches = entry.path().map(|p| p == Path::new(path)).unwrap_or(false);
        if matches {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).expect("read tar entry");
            return out;
        }
    }
    panic!("{archive_url}: no {path} in the archive");
}

#[test]
fn corpus_call_sites_match_hand_labels() {
    let manifest: Manifest = toml::from_str(&manifest_text()).expect("corpus/manifest.toml parses");
    assert!(
        manifest.file.len() >= 40,
        "the corpus needs at least 40 files"
    );
    let analyzer = Analyzer::new(Shapes::builtin()).expect("built-in shapes");
    let agent = agent();

    // Group by archive so each is downloaded and decompressed once.
    let mut by_archive: BTreeMap<(&str, &str), Vec<&Entry>> = BTreeMap::new();
    for entry in &manifest.file {
        assert!(
            matches!(entry.registry.as_str(), "pypi" | "crates"),
            "{}: registry must be pypi or crates",
            entry.path
        );
        by_archive
            .entry((entry.archive.as_str(), entry.archive_sha256.as_str()))
            .or_default()
            .push(entry);
    }

    let mut right = 0usize;
    let mut wrong = Vec::new();
    for ((url, sha), entries) in &by_archive {
        let bytes = match fetch(&agent, url, sha) {
            Fetch::Ok(bytes) => bytes,
            // The registries are reachable from every machine that runs
            // this suite; skipping is an explicit choice, never silent.
            Fetch::Offline(reason) if std::env::var_os("GENESIS_CORPUS_SKIP_OFFLINE").is_some() => {
                eprintln!(
                    "SKIPPED corpus test: network unreachable and archive not cached ({reason})"
                );
                return;
            }
            Fetch::Offline(reason) => panic!(
                "corpus archive {url} is not cached and cannot be fetched ({reason}); set \
                 GENESIS_CORPUS_CACHE to a directory holding the archives, or \
                 GENESIS_CORPUS_SKIP_OFFLINE=1 to skip"
            ),
        };
        for entry in entries {
            let file = extract(url, &bytes, &entry.path);
            assert_eq!(
                sha256_hex(&file),
                entry.file_sha256,
                "{} {}: file sha256 mismatch",
                entry.package,
                entry.path
            );
            let source = String::from_utf8_lossy(&file);
            let analysis = analyzer
                .analyze(&entry.path, &source, None)
                .unwrap_or_else(|e| panic!("{}: {e}", entry.path));
            let label = format!("{} {} {}", entry.package, entry.version, entry.path);
            if analysis.llm_call_lines == entry.llm_call_lines {
                right += 1;
                println!("ok    {label}: {:?}", entry.llm_call_lines);
            } else {
                println!(
                    "WRONG {label}: expected {:?}, analyzer {:?} ({})",
                    entry.llm_call_lines, analysis.llm_call_lines, entry.note
                );
                wrong.push(label);
            }
        }
    }
    let total = manifest.file.len();
    println!(
        "corpus accuracy: {right}/{total} files exactly right ({:.1}%)",
        100.0 * right as f64 / total as f64
    );
    assert!(
        wrong.is_empty(),
        "files with wrong call-site lines: {wrong:#?}"
    );
}
