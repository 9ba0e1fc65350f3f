//! Network-namespace lab (placeholder).

pub mod packet;
