//! Configuration errors.
//!
//! Invalid option values are programming errors, so `init()` panics with the message of a
//! [`ConfigError`], the way `burn::nn` configs do; `try_init()` returns it instead, for code that
//! builds losses from user input (a command line, a JSON file).

use core::fmt;

/// An invalid option value in a loss configuration.
///
/// The message names the loss, the parameter, the rule it breaks and the value given, e.g.
/// `DiceLoss: invalid `smooth_dr`: must be finite and >= 0, got -1`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The loss being configured, e.g. `"DiceLoss"`.
    pub loss: &'static str,
    /// The offending option, with the config's field name, e.g. `"smooth_dr"`.
    pub parameter: &'static str,
    /// The rule the value must follow, e.g. `"finite and >= 0"`.
    pub rule: String,
    /// The value that was given, formatted for people.
    pub value: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: invalid `{}`: must be {}, got {}",
            self.loss, self.parameter, self.rule, self.value
        )
    }
}

impl std::error::Error for ConfigError {}

/// Small helpers used by every config's `validate`.
pub(crate) struct Check {
    pub loss: &'static str,
}

impl Check {
    fn err(&self, parameter: &'static str, rule: &str, value: String) -> ConfigError {
        ConfigError {
            loss: self.loss,
            parameter,
            rule: rule.to_string(),
            value,
        }
    }

    /// The options of a compound loss: its two weights finite and `>= 0`, then each term's own
    /// options, an invalid one reported under the compound loss's name.
    pub fn compound(
        &self,
        lambdas: [(&'static str, f64); 2],
        terms: [Result<(), ConfigError>; 2],
    ) -> Result<(), ConfigError> {
        for (parameter, v) in lambdas {
            self.non_negative(parameter, v)?;
        }
        for term in terms {
            term.map_err(|e| ConfigError {
                loss: self.loss,
                ..e
            })?;
        }
        Ok(())
    }

    /// `v` is finite and `>= 0`.
    pub fn non_negative(&self, parameter: &'static str, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(self.err(parameter, "finite and >= 0", format!("{v}")))
        }
    }

    /// `v` lies in `[lo, hi]`.
    pub fn in_range(
        &self,
        parameter: &'static str,
        v: f64,
        lo: f64,
        hi: f64,
    ) -> Result<(), ConfigError> {
        if v.is_finite() && v >= lo && v <= hi {
            Ok(())
        } else {
            Err(self.err(parameter, &format!("in [{lo}, {hi}]"), format!("{v}")))
        }
    }

    /// Every entry of `w` is finite and `>= 0`, and there is at least one.
    pub fn weights(&self, parameter: &'static str, w: &[f32]) -> Result<(), ConfigError> {
        if w.is_empty() {
            return Err(self.err(
                parameter,
                "a non-empty list of per-class weights",
                "[]".into(),
            ));
        }
        if let Some((i, v)) = w
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(self.err(
                parameter,
                "finite and >= 0 for every class",
                format!("{v} at class {i} (of {w:?})"),
            ));
        }
        Ok(())
    }

    /// A custom rule.
    pub fn rule(
        &self,
        ok: bool,
        parameter: &'static str,
        rule: &str,
        value: String,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.err(parameter, rule, value))
        }
    }
}
