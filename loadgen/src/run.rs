//! (being written)
/// Placeholder until the engine lands.
pub async fn run(_opts: crate::cli::RunOpts) -> Result<u8, crate::error::LoadgenError> {
    Err(crate::error::LoadgenError::unrunnable("loadgen run is being written"))
}
