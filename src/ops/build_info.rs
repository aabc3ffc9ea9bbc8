//! What this build is: the long `--version` text and the `brandgate_build_info` metric
//! (version, commit, compiler), from what `build.rs` found at build time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
    rustc: &'static str,
}

/// Registers `brandgate_build_info{version, commit, rustc} 1`: a gauge, as Prometheus' own
/// `prometheus_build_info` is (the OpenMetrics `info` type is unknown to the classic text
/// format and to `promtool check metrics`).
pub fn register(registry: &mut Registry) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: VERSION,
        commit: COMMIT,
        rustc: RUSTC,
    })
    .set(1);
    registry.register("brandgate_build_info", "What this brandgate build is", info);
}
