//! Checks an uploaded context tarball before it is stored: it must be gzip'd tar, small enough
//! once unpacked, with at most [`MAX_CONTEXT_ENTRIES`] entries, only files, directories and
//! links that stay inside, and every entry must stay inside the directory it is unpacked into.
//! The agent checks the same again when it unpacks; refusing here means a bad context is
//! refused when the experiment is created, not once per trial on every agent.

use std::io::Read;
use std::path::Component;

use crate::error::Error;

pub use drover_api::context::MAX_CONTEXT_ENTRIES;

/// Validates `bytes` as a gzip tarball whose unpacked size is at most `max_unpacked` bytes.
pub fn validate(bytes: &[u8], max_unpacked: u64) -> Result<(), Error> {
    // Raw headers first, with constant memory: a tar reader would hold a huge long-name or PAX
    // header whole before returning anything.
    let with_headers = max_unpacked.saturating_add((MAX_CONTEXT_ENTRIES as u64 + 2) * 1024);
    drover_api::context::check_headers(flate2::read::GzDecoder::new(bytes), MAX_CONTEXT_ENTRIES, with_headers).map_err(|e| {
        if e.0.contains("unpacks to more") {
            Error::too_large(format!("the context unpacks to more than {max_unpacked} bytes"))
        } else {
            Error::bad_field("context", e.0)
        }
    })?;
    let decoder = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(decoder);
    let entries = archive.entries().map_err(|e| Error::bad_field("context", format!("not a gzip tarball: {e}")))?;
    let mut total: u64 = 0;
    for (index, entry) in entries.enumerate() {
        if index >= MAX_CONTEXT_ENTRIES {
            return Err(Error::bad_field("context", format!("the context has more than {MAX_CONTEXT_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| Error::bad_field("context", format!("unreadable tarball: {e}")))?;
        let path = entry.path().map_err(|e| Error::bad_field("context", format!("bad entry name: {e}")))?.into_owned();
        let shown = path.display().to_string();
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
            return Err(Error::bad_field("context", format!("entry `{shown}` would unpack outside the context directory")));
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        if !matches!(
            kind,
            T::Regular
                | T::Continuous
                | T::Directory
                | T::Symlink
                | T::Link
                | T::XHeader
                | T::XGlobalHeader
                | T::GNULongName
                | T::GNULongLink
        ) {
            return Err(Error::bad_field(
                "context",
                format!("entry `{shown}` is a {kind:?}; a context holds only files, directories and links"),
            ));
        }
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
        assert_eq!(e.kind, crate::error::ErrorKind::TooLarge);
        assert!(validate(b"not gzip at all", 100).is_err());
    }

    fn special(kind: tar::EntryType, name: &str) -> Vec<u8> {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &[][..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_huge_long_name_header_is_refused_without_allocating_it() {
        // A GNU long-name header claiming 8 GiB, then nothing: a tar reader would try to hold it.
        let mut h = [0u8; 512];
        h[..13].copy_from_slice(b"././@LongLink");
        h[124..136].copy_from_slice(b"77777777777\0");
        h[156] = b'L';
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &h).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0u8; 1 << 20]).unwrap();
        let e = validate(&enc.finish().unwrap(), 1 << 30).unwrap_err();
        assert!(e.body.message.contains("extension header"), "{:?}", e.body);
    }

    #[test]
    fn refuses_fifos_devices_and_too_many_entries() {
        for kind in [tar::EntryType::Fifo, tar::EntryType::Char, tar::EntryType::Block] {
            let e = validate(&special(kind, "weird"), 100).unwrap_err();
            assert!(e.body.message.contains("weird"), "{:?}", e.body);
        }
        let names: Vec<String> = (0..=MAX_CONTEXT_ENTRIES).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let e = validate(&tarball(&entries), 1 << 30).unwrap_err();
        assert!(e.body.message.contains("entries"), "{:?}", e.body);
    }
}
