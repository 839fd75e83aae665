//! Thin PyO3 layer over adclick-core: type conversion, GIL release, one error adapter.
use pyo3::prelude::*;

#[pymodule]
mod _native {
    #[pymodule_export]
    const VERSION: &str = env!("CARGO_PKG_VERSION");
}
