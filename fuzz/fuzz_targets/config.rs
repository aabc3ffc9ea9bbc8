//! The config loader: TOML text in, `Config` or every problem found out, through the daemon's
//! own door (`Config::load`). It only reads a path, so each input is written to one file of
//! this process first; the `BRANDGATE_*` environment is read as the daemon reads it.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use brandgate::config::Config;
use libfuzzer_sys::fuzz_target;

/// The file each input is written to: one per process, in `$TMPDIR`.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("brandgate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the config file");
        dir.join("brandgate.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    if std::fs::write(path, data).is_err() {
        // Its directory was removed under this process (a cleaned $TMPDIR): make it again.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, data).expect("the config file written");
    }
    match Config::load(path) {
        Ok(config) => {
            // What `check-config` and start-up do next with a config that loaded.
            let _ = config.warnings();
            let _ = config.secret_files();
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "a config refused without a problem");
            let _ = problems.to_string();
        }
    }
});
