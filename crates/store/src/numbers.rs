//! Number parsing and formatting with Redis's exact rules.

/// Parses a double as Redis's `getDoubleFromObject` does (strtod on the whole string): no leading
/// space, nothing trailing, no NaN; `inf`, `+inf`, `-inf` accepted.
pub fn parse_f64(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let v = match lower.trim_start_matches(['+', '-']) {
        "inf" | "infinity" => {
            if lower.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }
        }
        t if t.starts_with("nan") || t.starts_with("inf") => return None,
        _ => s.parse::<f64>().ok()?,
    };
    if v.is_nan() {
        return None;
    }
    Some(v)
}

/// Formats a double the way INCRBYFLOAT and HINCRBYFLOAT reply: Redis prints a long double with
/// 17 digits after the point and trims trailing zeros. With the shortest round-trip
/// representation of an f64 the digits agree for every value a client can tell apart.
pub fn format_human(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v}");
    // Rust never uses exponent notation in Display for f64; trim like Redis.
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Redis's `%.17g`-formatted score text, used where a score is part of a string (e.g. SORT).
pub fn format_score(v: f64) -> String {
    cairn_resp::reply::format_double(v)
}
