//! The gateway's IC identity: an Ed25519 key in a PKCS#8 PEM file (the format dfx and
//! ic-agent's `BasicIdentity` read), created on first run and reused afterwards, so the
//! gateway keeps one principal across restarts (its clients' sessions are bound to it).

use crate::error::{GatewayError, Result};
use candid::Principal;
use ic_agent::identity::BasicIdentity;
use ic_agent::Identity;
use std::io::Write;
use std::path::Path;

/// Loads the key at `path`, or creates it (mode 0600, never overwriting) when it is missing.
pub fn load_or_create(path: &Path) -> Result<(BasicIdentity, Principal)> {
    let fail = |reason: String| GatewayError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        let key = ic_ed25519::PrivateKey::generate();
        let pem = key.serialize_pkcs8_pem(ic_ed25519::PrivateKeyFormat::Pkcs8v1);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create directory: {e}")))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(pem.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| fail(format!("cannot write: {e}")))?;
                tracing::info!(path = %path.display(), "created a new gateway identity");
            }
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(format!("cannot create: {e}"))),
        }
    }
    let identity = BasicIdentity::from_pem_file(path)
        .map_err(|e| fail(format!("not an Ed25519 PEM key: {e}")))?;
    let principal = identity.sender().map_err(fail)?;
    Ok((identity, principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_with_a_stable_principal() {
        let dir = std::env::temp_dir().join(format!("ic-ws-gw-id-{}", std::process::id()));
        let path = dir.join("sub/identity.pem");
        let _ = std::fs::remove_dir_all(&dir);
        let (_, first) = load_or_create(&path).unwrap();
        let (_, second) = load_or_create(&path).unwrap();
        assert_eq!(first, second);
        assert_ne!(first, Principal::anonymous());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Another fresh file gives another principal.
        let (_, other) = load_or_create(&dir.join("other.pem")).unwrap();
        assert_ne!(first, other);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("ic-ws-gw-bad-{}.pem", std::process::id()));
        std::fs::write(&path, "not a key").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("not an Ed25519 PEM key"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
