//! sitrep's private CA and mutual-TLS configurations.
