//! The TOML config file: parsing, validation with file and line, and the
//! provisioning inputs it implies.
