//! The error of every metric's input check.

/// What went wrong with the input of a metric.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MetricsError {
    /// A shape is not 2D/3D, does not match the data, or the two volumes differ in shape.
    Shape(String),
    /// A spacing is not finite and > 0, has the wrong length, or the two volumes differ.
    Spacing(String),
    /// A label value cannot be represented (outside `0..=65535`).
    Label(String),
    /// An option is out of its range (percentile, tolerance, worst-case value).
    Option(String),
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsError::Shape(m) => write!(f, "shape error: {m}"),
            MetricsError::Spacing(m) => write!(f, "spacing error: {m}"),
            MetricsError::Label(m) => write!(f, "label error: {m}"),
            MetricsError::Option(m) => write!(f, "invalid option: {m}"),
        }
    }
}

impl std::error::Error for MetricsError {}
