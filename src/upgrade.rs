//! Binary upgrade: on SIGQUIT the running process sends its listening sockets
//! over a Unix socket to a new `trident run --upgrade` process waiting there
//! (Pingora's hand-off), then drains like SIGTERM. Whoever can connect to that
//! socket first receives the listeners, so it lives in a private directory.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The upgrade socket: `configured`, or the default in a private directory,
/// which is created (mode 0700) when missing. An error says why the directory
/// cannot be used: Trident then refuses to start.
pub fn socket_path(configured: Option<&Path>) -> Result<PathBuf, String> {
    let socket = match configured {
        Some(path) => path.to_path_buf(),
        None => default_dir()?.join("upgrade.sock"),
    };
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                format!(
                    "server.upgrade_socket: cannot create {}: {e}",
                    dir.display()
                )
            })?;
    }
    check_private(dir)?;
    Ok(socket)
}

/// `$XDG_RUNTIME_DIR/trident` (a per-user directory the system provides), or
/// `/tmp/trident-UID`.
fn default_dir() -> Result<PathBuf, String> {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(runtime).join("trident"));
    }
    Ok(std::env::temp_dir().join(format!("trident-{}", own_uid()?)))
}

/// The process's user: `/proc/self` belongs to it (no `unsafe` call to `geteuid`).
fn own_uid() -> Result<u32, String> {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("cannot tell Trident's user from /proc/self: {e}"))
}

/// Refuses a directory other users could write to or read, or that another user owns.
fn check_private(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        format!(
            "server.upgrade_socket: cannot inspect {}: {e}",
            dir.display()
        )
    })?;
    let uid = own_uid()?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || meta.uid() != uid || mode & 0o077 != 0 {
        return Err(format!(
            "server.upgrade_socket: directory {} is not private (owner uid {}, mode {mode:03o}): \
             any local user could take Trident's listening sockets from it; use a directory \
             owned by uid {uid} with mode 700",
            dir.display(),
            meta.uid(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_created_private_and_a_shared_one_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let socket = base.path().join("new/upgrade.sock");
        assert_eq!(socket_path(Some(&socket)).unwrap(), socket);
        let mode = std::fs::metadata(base.path().join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = socket_path(Some(&shared.join("upgrade.sock"))).unwrap_err();
        assert!(error.contains("is not private"), "{error}");
        assert!(socket_path(Some(Path::new("/tmp/upgrade.sock"))).is_err());
    }
}
