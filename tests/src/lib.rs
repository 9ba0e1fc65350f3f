//! Network-namespace lab (placeholder).
