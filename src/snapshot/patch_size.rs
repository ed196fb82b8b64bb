//! What a patch writes once applied, measured before anything inflates it
//! (`[limits.*] patch_mb`, contract §4).
//!
//! A git binary patch carries each file as a zlib stream in base85
//! (`literal N` or `delta N`, then one encoded line after another).
//! libgit2 inflates such a stream whole before it compares the result
//! with the declared `N`, so a 1 MB patch of compressed zeros becomes
//! gigabytes inside genesis. Here every stream is decoded and inflated
//! into a counter that stops one byte past the budget: nothing is held,
//! and a patch past the limit is refused before libgit2 sees it. Text
//! hunks count their added lines.

use std::io::Read;

use crate::errors::{GenesisError, Result};

/// Refuses a patch whose files would hold more than `limit_mb` once applied.
pub fn check_patch_size(
    patch: &str,
    limit_mb: u64,
    level: crate::contract::RiskLevel,
) -> Result<()> {
    let budget = limit_mb.saturating_mul(1024 * 1024);
    let written = bytes_written(patch, budget)?;
    if written <= budget {
        return Ok(());
    }
    Err(GenesisError::InvalidRequest(format!(
        "the patch would write more than {limit_mb} MB once applied, binary literals \
         included, over [limits.{level}] patch_mb ({limit_mb})"
    )))
}

/// Bytes the patch writes, counted up to `budget + 1` (then it stops).
fn bytes_written(patch: &str, budget: u64) -> Result<u64> {
    let mut total = 0u64;
    let mut lines = patch.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(added) = line.strip_prefix('+').filter(|_| !line.starts_with("+++ ")) {
            total = total.saturating_add(added.len() as u64 + 1);
        } else if line.starts_with("literal ") || line.starts_with("delta ") {
            let mut encoded = Vec::new();
            while let Some(data) = lines.peek().filter(|l| !l.is_empty()) {
                encoded.push(*data);
                lines.next();
            }
            let left = budget.saturating_sub(total);
            total = total.saturating_add(inflated_size(&encoded, left)?);
        }
        if total > budget {
            break;
        }
    }
    Ok(total)
}

/// Size of the zlib stream in base85 `lines`, counted up to `left + 1`.
fn inflated_size(lines: &[&str], left: u64) -> Result<u64> {
    let mut compressed = Vec::new();
    for line in lines {
        decode_line(line, &mut compressed).ok_or_else(|| {
            GenesisError::PatchFailed(format!(
                "a binary hunk's line is not git's base85: {:?}",
                line.chars().take(40).collect::<String>()
            ))
        })?;
    }
    let mut inflater = flate2::read::ZlibDecoder::new(compressed.as_slice()).take(left + 1);
    std::io::copy(&mut inflater, &mut std::io::sink())
        .map_err(|e| GenesisError::PatchFailed(format!("a binary hunk does not inflate: {e}")))
}

const BASE85: &[u8; 85] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

/// One line of git's base85: a length letter (`A`–`Z` 1–26, `a`–`z`
/// 27–52), then groups of five characters for four bytes each.
fn decode_line(line: &str, out: &mut Vec<u8>) -> Option<()> {
    let bytes = line.as_bytes();
    let len = match *bytes.first()? {
        c @ b'A'..=b'Z' => usize::from(c - b'A') + 1,
        c @ b'a'..=b'z' => usize::from(c - b'a') + 27,
        _ => return None,
    };
    let data = &bytes[1..];
    if !data.len().is_multiple_of(5) || data.len() / 5 * 4 < len {
        return None;
    }
    let mut decoded = Vec::with_capacity(data.len() / 5 * 4);
    for group in data.chunks(5) {
        let mut value: u64 = 0;
        for c in group {
            let digit = BASE85.iter().position(|b| b == c)? as u64;
            value = value * 85 + digit;
        }
        let word = u32::try_from(value).ok()?;
        decoded.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(&decoded[..len]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes bytes as git's base85 lines (at most 52 bytes a line).
    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(52) {
            let n = chunk.len();
            out.push(if n <= 26 {
                (b'A' + n as u8 - 1) as char
            } else {
                (b'a' + n as u8 - 27) as char
            });
            let mut padded = chunk.to_vec();
            padded.resize(n.div_ceil(4) * 4, 0);
            for word in padded.chunks(4) {
                let mut v = u32::from_be_bytes(word.try_into().unwrap()) as u64;
                let mut group = [0u8; 5];
                for slot in group.iter_mut().rev() {
                    *slot = BASE85[(v % 85) as usize];
                    v /= 85;
                }
                out.push_str(std::str::from_utf8(&group).unwrap());
            }
            out.push('\n');
        }
        out
    }

    fn binary_patch(inflated: usize) -> String {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![0u8; inflated]).unwrap();
        let compressed = z.finish().unwrap();
        format!(
            "diff --git a/z.bin b/z.bin\nnew file mode 100644\nindex 0000000..1111111\nGIT binary patch\nliteral {inflated}\n{}\nliteral 0\nHcmV?d00001\n\n",
            encode(&compressed)
        )
    }

    #[test]
    fn binary_literals_count_what_they_inflate_to() {
        let patch = binary_patch(3 * 1024 * 1024);
        assert!(patch.len() < 20_000, "{} bytes of patch", patch.len());
        assert_eq!(bytes_written(&patch, 10 << 20).unwrap(), 3 * 1024 * 1024);
        let err = check_patch_size(&patch, 2, crate::contract::RiskLevel::High).unwrap_err();
        assert!(
            err.to_string().contains("[limits.high] patch_mb (2)"),
            "{err}"
        );
        check_patch_size(&patch, 3, crate::contract::RiskLevel::High).unwrap();
    }

    #[test]
    fn text_hunks_count_their_added_lines() {
        let patch = "--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n-old\n+new\n+more\n";
        assert_eq!(bytes_written(patch, 100).unwrap(), 9);
    }

    #[test]
    fn a_broken_binary_line_is_a_patch_failure() {
        let patch = "GIT binary patch\nliteral 5\n~~~~~\n\n";
        assert!(matches!(
            bytes_written(patch, 100),
            Err(GenesisError::PatchFailed(_))
        ));
    }
}
