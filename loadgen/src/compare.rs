//! (being written)
/// Placeholder until reports land.
pub fn compare(_reports: &[std::path::PathBuf]) -> Result<String, crate::error::LoadgenError> {
    Err(crate::error::LoadgenError::unrunnable("loadgen compare is being written"))
}
