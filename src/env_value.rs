//! Parsing one setting's value from the environment, with errors that name the variable. A
//! leaf module: every settings section (config, chat, calls, images, auth, TLS, privacy) reads
//! its numbers and lists through it without importing the configuration that gathers them.

/// Parses a numeric setting from the environment; the error names the variable and the value
/// (every settings section reads its numbers through this).
pub fn env_num<T: std::str::FromStr>(var: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{var}: {v:?} is not a number"))
}

/// Parses a comma-separated list setting; an entry that does not parse is named with `what`
/// it should have been (`IP:PORT`, `an IP address`).
pub fn env_list<T: std::str::FromStr>(var: &str, v: &str, what: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().map_err(|_| format!("{var}: {a:?} is not {what}")))
        .collect()
}
