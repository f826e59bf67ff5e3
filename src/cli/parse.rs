//! Value parsers for numeric flags: NaN, infinities and out-of-range values are usage errors at
//! parse time (exit 2 with clap's message), never a silent "different people".

fn number<T: std::str::FromStr + Copy>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim()
        .parse::<T>()
        .map_err(|e| format!("not a number: {e}"))
}

/// A finite float >= 0 (distances, thresholds of distances).
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    let v: f32 = number(s)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number >= 0, got {s}"))
    }
}

/// A finite float > 0 (pixel sizes, learning rates).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number > 0, got {s}"))
    }
}

/// A finite float >= 0 (weight decay).
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number >= 0, got {s}"))
    }
}

/// A finite float >= 0, single precision, for sizes where 0 means "no limit".
pub fn non_negative_size(s: &str) -> Result<f32, String> {
    non_negative_f32(s)
}

/// A probability in [0, 1].
pub fn unit_f32(s: &str) -> Result<f32, String> {
    let v: f32 = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1, got {s}"))
    }
}

/// A ratio strictly between 0 and 1 (the pyramid factor).
pub fn open_unit_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!("must be strictly between 0 and 1, got {s}"))
    }
}

/// A fraction in [0, 1) (a held-out share).
pub fn fraction_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be at least 0 and below 1, got {s}"))
    }
}

/// A whole number >= 1 (threads, counts).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match number::<usize>(s)? {
        0 => Err("must be at least 1".to_string()),
        v => Ok(v),
    }
}

/// A whole number >= 1, 64-bit (pixel limits).
pub fn at_least_one_u64(s: &str) -> Result<u64, String> {
    match number::<u64>(s)? {
        0 => Err("must be at least 1".to_string()),
        v => Ok(v),
    }
}

/// A device name: `cpu`, `cuda` or `cuda:N`.
pub fn device(s: &str) -> Result<facekit::device::DeviceSpec, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nan_inf_and_out_of_range() {
        for bad in ["NaN", "nan", "inf", "-inf", "-0.1", "x", ""] {
            assert!(non_negative_f32(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative_f32("0.6"), Ok(0.6));
        assert!(unit_f32("1.5").is_err() && unit_f32("NaN").is_err());
        assert!(open_unit_f64("1").is_err() && open_unit_f64("0").is_err());
        assert!(at_least_one("0").is_err() && at_least_one("-1").is_err());
        assert_eq!(at_least_one("2"), Ok(2));
        assert!(positive_f64("-5").is_err() && positive_f64("0").is_err());
    }
}
