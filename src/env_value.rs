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

/// Sets each numeric field from its variable, when that variable is set:
/// `env_numbers!(get, "NEULBI_X" => self.x, ...)`; the first value that does not parse is
/// returned as the error, naming its variable. For `apply_env` methods returning
/// `Result<_, String>`.
macro_rules! env_numbers {
    ($get:expr, $($var:literal => $field:expr),* $(,)?) => {
        $(if let Some(v) = $get($var) {
            $field = $crate::env_value::env_num($var, &v)?;
        })*
    };
}
pub(crate) use env_numbers;
