//! Checks an uploaded context tarball before it is stored: it must be gzip'd tar, small enough
//! once unpacked, and every entry must stay inside the directory it is unpacked into.

use std::io::Read;
use std::path::Component;

use crate::error::Error;

/// Validates `bytes` as a gzip tarball whose unpacked size is at most `max_unpacked` bytes.
pub fn validate(bytes: &[u8], max_unpacked: u64) -> Result<(), Error> {
    let decoder = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(decoder);
    let entries = archive.entries().map_err(|e| Error::bad_field("context", format!("not a gzip tarball: {e}")))?;
    let mut total: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::bad_field("context", format!("unreadable tarball: {e}")))?;
        let path = entry.path().map_err(|e| Error::bad_field("context", format!("bad entry name: {e}")))?.into_owned();
        let shown = path.display().to_string();
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
            return Err(Error::bad_field("context", format!("entry `{shown}` would unpack outside the context directory")));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
            if target.is_absolute() || target.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(Error::bad_field("context", format!("link `{shown}` points outside the context directory")));
            }
        }
        // Count what is really there rather than trusting the header's size.
        let mut sink = std::io::sink();
        let n = std::io::copy(&mut (&mut entry).take(max_unpacked + 1 - total.min(max_unpacked)), &mut sink)
            .map_err(|e| Error::bad_field("context", format!("unreadable tarball: {e}")))?;
        total += n;
        if total > max_unpacked {
            return Err(Error::too_large(format!("the context unpacks to more than {max_unpacked} bytes")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Write the name raw so that hostile names reach the validator as sent.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn accepts_plain_and_refuses_escapes_and_bombs() {
        assert!(validate(&tarball(&[("a.txt", b"hi"), ("d/b.txt", b"x")]), 100).is_ok());
        let e = validate(&tarball(&[("../evil", b"x")]), 100).unwrap_err();
        assert!(e.body.message.contains("outside"), "{:?}", e.body);
        assert!(validate(&tarball(&[("/etc/passwd", b"x")]), 100).is_err());
        let e = validate(&tarball(&[("big", &[0u8; 500])]), 100).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(validate(b"not gzip at all", 100).is_err());
    }
}
