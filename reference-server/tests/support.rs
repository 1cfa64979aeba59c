//! Test helpers (filled in by the server work).
