//! `sitrep`: the primary-side agent, the secondary-side server and the operator CLI.
fn main() {}
