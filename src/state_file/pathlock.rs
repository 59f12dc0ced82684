//! A lock on the state file's *path*, beside the `flock` on its inode: an
//! abstract Unix socket named after the canonical path, which the kernel
//! frees when the process ends however it ends. A second process on the same
//! path is refused even after the file was moved or deleted (the `flock`
//! then guards a different inode). Abstract sockets are per network
//! namespace: two containers sharing a volume are kept apart by the `flock`.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Held for the life of the state file.
#[derive(Debug)]
pub(super) struct PathLock {
    _held: UnixListener,
}

impl PathLock {
    /// `Ok(None)` where the name cannot be made (no abstract sockets):
    /// the `flock` alone then guards the file.
    pub(super) fn acquire(path: &Path) -> Result<Option<Self>, std::io::Error> {
        let name = lock_name(path);
        let Ok(addr) = SocketAddr::from_abstract_name(name.as_bytes()) else {
            return Ok(None);
        };
        match UnixListener::bind_addr(&addr) {
            Ok(l) => Ok(Some(Self { _held: l })),
            Err(e) => unheld(e),
        }
    }
}

/// Only "in use" says another process holds the path; any other failure
/// to bind (a sandbox without abstract sockets) leaves the `flock` alone
/// to guard the file rather than refuse to start.
fn unheld(e: std::io::Error) -> Result<Option<PathLock>, std::io::Error> {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => Err(e),
        _ => Ok(None),
    }
}

/// The directory resolved (the file itself may be gone), then the name.
fn lock_name(path: &Path) -> String {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let full = dir.join(path.file_name().unwrap_or_default());
    let digest = Sha256::digest(full.as_os_str().as_encoded_bytes());
    format!("dastra-proxy-state:{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn only_a_name_in_use_refuses() {
        assert!(unheld(Error::from(ErrorKind::AddrInUse)).is_err());
        for kind in [ErrorKind::PermissionDenied, ErrorKind::Unsupported] {
            assert!(matches!(unheld(Error::from(kind)), Ok(None)), "{kind:?}");
        }
    }
}
