//! The HRL change-log format.
