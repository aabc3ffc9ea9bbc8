//! What this build is: the long `--version` text and the `brandgate_build_info` metric
//! (version, commit, compiler), from what `build.rs` found at build time.

use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("BUILD_INFO_COMMIT");
pub const RUSTC: &str = env!("BUILD_INFO_RUSTC");

/// `brandgate --version`, long form.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("BUILD_INFO_COMMIT"),
    "\nbuilt: ",
    env!("BUILD_INFO_DATE"),
    "\ncompiler: ",
    env!("BUILD_INFO_RUSTC"),
    "\ntarget: ",
    env!("BUILD_INFO_TARGET"),
);

/// Registers `brandgate_build_info{version, commit, rustc} 1`.
pub fn register(registry: &mut Registry) {
    let info = Info::new(vec![
        ("version", VERSION),
        ("commit", COMMIT),
        ("rustc", RUSTC),
    ]);
    registry.register("brandgate_build", "What this brandgate build is", info);
}
