//! Writing and reading the CA's files: a key file is created with its final mode
//! (never briefly world-readable), a refused overwrite leaves the old file untouched,
//! and a forced one replaces it atomically.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::TlsError;

/// Unix mode of a CA directory that [`create_dir`] creates.
const DIR_MODE: u32 = 0o700;

/// Read a file; a missing one is [`TlsError::Missing`].
pub(super) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::Missing { path: path.into() },
        _ => TlsError::Io {
            path: path.into(),
            source,
        },
    })
}

/// Create `dir` and its parents (mode 0700 where created).
pub(super) fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir).map_err(TlsError::io(dir))
}

/// Write `bytes` to `path` with `mode`. Without `overwrite` the file must not exist
/// (`create_new`, so a race cannot clobber it); with it, a temporary file in the same
/// directory is renamed over the old one.
pub(super) fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), TlsError> {
    let target = if overwrite {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".tmp{}", std::process::id()));
        path.with_file_name(name)
    } else {
        path.to_path_buf()
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&target)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists if !overwrite => {
                TlsError::Exists { path: path.into() }
            }
            _ => TlsError::Io {
                path: target.clone(),
                source,
            },
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    let installed = written.and_then(|()| {
        if overwrite {
            fs::rename(&target, path)
        } else {
            Ok(())
        }
    });
    installed.map_err(|source| {
        let _ = fs::remove_file(&target);
        TlsError::Io {
            path: path.into(),
            source,
        }
    })
}
