//! The context tarball as it crosses the wire (a gzip'd POSIX/GNU tar), and the one check that
//! must run on its raw headers before any tar reader sees it.
//!
//! Tar readers hold a GNU long-name (`L`), long-link (`K`) or PAX (`x`, `g`) header's whole data
//! in memory before they return the next entry, and do not count such headers as entries. A
//! header claiming 8 GiB of name, gzip'd to a few megabytes, would make the reader allocate 8 GiB.
//! [`check_headers`] walks the raw blocks with constant memory and refuses that, and counts every
//! header, before the master validates or the agent unpacks a context.

use std::io::Read;

/// Most entries a context tarball may hold (headers of every kind counted).
pub const MAX_CONTEXT_ENTRIES: usize = 100_000;
/// Largest data of one extension header (a long name, a long link target, PAX records).
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

const BLOCK: usize = 512;

/// What is wrong with a tarball's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(pub String);

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeaderError {}

/// Walks the headers of the (already decompressed) tar stream `tar`, skipping file data, and
/// refuses more than `max_entries` headers, an extension header larger than
/// [`MAX_EXTENSION_BYTES`], or a stream longer than `max_bytes`.
pub fn check_headers(mut tar: impl Read, max_entries: usize, max_bytes: u64) -> Result<(), HeaderError> {
    let mut block = [0u8; BLOCK];
    let mut headers = 0usize;
    let mut read_total = 0u64;
    loop {
        if !read_block(&mut tar, &mut block)? {
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            // End of archive (two zero blocks; one is enough to stop reading headers).
            return Ok(());
        }
        headers += 1;
        if headers > max_entries {
            return Err(HeaderError(format!("the tarball has more than {max_entries} entries")));
        }
        let size = parse_size(&block[124..136]).ok_or_else(|| HeaderError(format!("entry {headers} has an unreadable size field")))?;
        let kind = block[156];
        if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_EXTENSION_BYTES {
            return Err(HeaderError(format!(
                "entry {headers} is an extension header of {size} bytes; at most {MAX_EXTENSION_BYTES} are accepted"
            )));
        }
        let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
        read_total = read_total.saturating_add(BLOCK as u64).saturating_add(padded);
        if read_total > max_bytes {
            return Err(HeaderError(format!("the tarball unpacks to more than {max_bytes} bytes")));
        }
        let skipped = std::io::copy(&mut (&mut tar).take(padded), &mut std::io::sink())
            .map_err(|e| HeaderError(format!("unreadable tarball: {e}")))?;
        if skipped < padded {
            return Err(HeaderError("the tarball ends in the middle of an entry".into()));
        }
    }
}

/// Reads one whole block; `false` at a clean end of stream.
fn read_block(tar: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool, HeaderError> {
    let mut filled = 0;
    while filled < BLOCK {
        match tar.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(HeaderError("the tarball ends in the middle of a header".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeaderError(format!("unreadable tarball: {e}"))),
        }
    }
    Ok(true)
}

/// A tar size field: octal digits (NUL or space terminated), or GNU base-256 when the top bit of
/// the first byte is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256: the remaining bits, big-endian. Anything that does not fit u64 is refused.
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = field.iter().take_while(|&&b| b != 0).copied().collect::<Vec<u8>>();
    let text = std::str::from_utf8(&text).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size_field: &[u8]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..124 + size_field.len()].copy_from_slice(size_field);
        h[156] = kind;
        h
    }

    fn stream(parts: &[&[u8]]) -> Vec<u8> {
        let mut out: Vec<u8> = parts.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn plain_entries_pass_and_are_counted() {
        let data = [b'x'; 600];
        let mut padded = data.to_vec();
        padded.resize(1024, 0);
        let tar = stream(&[&header("a", b'0', b"00000001130\0"), &padded, &header("d", b'5', b"00000000000\0")]);
        assert_eq!(check_headers(&tar[..], 10, 1 << 20), Ok(()));
        assert!(check_headers(&tar[..], 1, 1 << 20).unwrap_err().0.contains("more than 1 entries"));
        assert!(check_headers(&tar[..], 10, 1000).unwrap_err().0.contains("unpacks to more"));
    }

    #[test]
    fn huge_extension_headers_are_refused_before_any_allocation() {
        // A GNU long name claiming 8 GiB, octal; and one claiming 2^62 bytes in base-256.
        let octal = stream(&[&header("././@LongLink", b'L', b"77777777777\0")]);
        assert!(check_headers(&octal[..], 10, u64::MAX).unwrap_err().0.contains("extension header"));
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[4] = 0x40;
        let pax = stream(&[&header("pax", b'x', &base256)]);
        assert!(check_headers(&pax[..], 10, u64::MAX).unwrap_err().0.contains("extension header"));
        let mut too_big = [0xffu8; 12];
        too_big[0] = 0xff;
        assert!(check_headers(&stream(&[&header("f", b'0', &too_big)])[..], 10, u64::MAX).is_err());
    }

    #[test]
    fn truncated_streams_are_refused() {
        let tar = header("a", b'0', b"00000001130\0");
        assert!(check_headers(&tar[..], 10, 1 << 20).unwrap_err().0.contains("middle of an entry"));
        assert!(check_headers(&tar[..100], 10, 1 << 20).unwrap_err().0.contains("middle of a header"));
    }
}
