//! What the `blk_request` fuzz target runs (placeholder).
