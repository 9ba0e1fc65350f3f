//! Promotion of staged policies by editing the YAML text in place.
